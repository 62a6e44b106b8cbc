"""Is a committed record still current? ``python -m reproduce verify <paper>``.

A record (``results/<paper>/cpu.json``) was made by the code at one commit. Later commits may
refactor that code without moving a number, or may move one. Reading diffs cannot tell which;
running both can: the smoke profile is deterministic on CPU (same seed, same numbers), so this
command runs it in two temporary git worktrees, at the record's commit and at HEAD (committed code
only), and compares every stable number of the two smoke records: measured values and claim
estimates, leaving out what depends on the machine's speed (timings, throughput, resident memory).

Identical: the record is current, and ``results/<paper>/verified.json`` says at which commit it
was verified (``results/<paper>/<profile>.json.verified``); the stale check (:func:`reproduce.results.stale_paths`) then counts changes from
there. Different: the numbers that moved are listed, and the record must be rerun.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT
from .results import verified_path, write_json_atomic

# Leaves whose value depends on the machine's speed or allocator, not on the code's arithmetic.
VOLATILE = re.compile(r"(^|[._\[])(time|times|wall|seconds|ms|step_ms|step_s|s_per|latency|throughput|tokens_per_s|"
                      r"per_s|rate|speed|rss|peak|peak_mib|mib|elapsed|timing|timed|load|memory_slope|"
                      r"memory_at_longest|memory_growth|speedup_by_length|strongest_baseline)($|[._\[])|_ms($|[._\[])|_s($|[.\[])|ms_per|per_token_ms|tokens_per_s|peak_",
                      re.IGNORECASE)
TIMED_METHODS = ("timed", "decode rounds")  # claim estimates over timings
MEASURED_MEMORY = re.compile(r"_memory(_|$)|memory_vs_")  # claims on measured peak memory (allocator-dependent at smoke sizes)


def numbers(record: Mapping[str, Any]) -> dict[str, float | str | bool | None]:
    """The stable leaves of a smoke record: ``measured.<key>...`` and ``claims.<id>.{value,low,high,verdict}``."""
    out: dict[str, Any] = {}
    for key, value in _leaves(record.get("measured", {}), "measured"):
        if not VOLATILE.search(key):
            out[key] = value
    for c in record.get("claims", []):
        ours = c.get("ours", {})
        if any(word in str(ours.get("method", "")) for word in TIMED_METHODS) or VOLATILE.search(c["id"]) or \
                MEASURED_MEMORY.search(c["id"]):
            continue
        for field in ("value", "low", "high"):
            out[f"claims.{c['id']}.{field}"] = ours.get(field)
        out[f"claims.{c['id']}.verdict"] = c.get("verdict")
    return out


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every stable number that differs between two smoke records (keys in one only count too)."""
    a, b = numbers(old), numbers(new)
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
        same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12))
        if not same:
            out.append(f"{key}: {x!r} -> {y!r}")
    return out


def _git(*args: str, cwd: Path = REPO_ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def smoke_record(paper: str, commit: str, workdir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run ``paper``'s smoke profile with the code of ``commit`` (a detached worktree) and return its record."""
    tree = workdir / f"tree-{commit[:10]}"
    out = workdir / f"out-{commit[:10]}"
    _git("worktree", "add", "--detach", "--force", str(tree), commit)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env.pop("MPLBACKEND", None)
        cmd = [sys.executable, "-m", "reproduce", "run", paper, "--profile", "smoke", "--output-dir", str(out), "--no-progress"]
        for o in overrides or []:
            cmd += ["-p", o]
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the smoke run at {commit[:10]} failed:\n{done.stderr[-2000:]}")
        return json.loads((out / "results" / paper / "smoke.json").read_text(encoding="utf-8"))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, capture_output=True)


def verify(paper: str, profile: str = "cpu", against: str = "HEAD", write: bool = True) -> dict[str, Any]:
    """Compare the smoke profile at the record's commit with ``against``; returns the verification."""
    from . import results

    record = results.load(paper, profile)
    if record is None:
        raise ValueError(f"no results/{paper}/{profile}.json to verify")
    commit = record["provenance"].get("git_commit")
    if not commit:
        raise ValueError(f"results/{paper}/{profile}.json names no commit")
    head = _git("rev-parse", against)
    with tempfile.TemporaryDirectory(prefix=f"verify-{paper}-") as tmp:
        old = smoke_record(paper, commit, Path(tmp))
        new = old if head == commit else smoke_record(paper, head, Path(tmp))
    diff = differences(old, new)
    result = {"paper": paper, "profile": profile, "record_commit": commit, "verified_at": head if not diff else None,
              "compared_at": head, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "stable_numbers": len(numbers(old)), "differences": diff}
    if write and not diff and against == "HEAD":  # only HEAD's code moves the baseline of the stale check
        write_json_atomic(verified_path(paper, profile), result)
    return result
