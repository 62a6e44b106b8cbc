"""Run records: measured values, the paper's values, claim checks and provenance.

Every notebook run ends with one ``results/<paper>/<profile>.json``, written atomically (a
temporary file in the same folder, fsync, ``os.replace``): a run killed during the write, or
before it, leaves the previous file intact. Tables and claim checks in the README are rendered
from these files alone (``python -m reproduce report``).

Usage in a notebook::

    run = Run(params)                                   # starts the clock, captures provenance
    run.record("forms.max_abs_diff", 3e-13)             # any JSON-serialisable value
    run.claim("forms_equal", artifact="§2 eqs. (5)-(7)", section="1. Forms agree",
              text="parallel == recurrent == chunkwise", ours=3e-13, relation="<=", threshold=1e-10,
              source="ours: float64 round-off of a depth-2 model", paper="equal in exact arithmetic")
    run.save()                                          # results/retnet/cpu.json

Claims are pre-registered tests with verdicts (holds / contradicted / inconclusive / not
testable): see :mod:`reproduce.claims`. The paper sections make every claim (``sections.py``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from . import claims as claims_mod
from . import ledger, runtime
from .claims import Claim, Estimate, Precondition, estimate_text
from .claims import short_text as _short
from .jsonio import jsonable as _jsonable
from .jsonio import write_json_atomic
from .sources import paper_paths
from .paths import REPO_ROOT, results_dir

SCHEMA_VERSION = 2  # 2: claims carry relation, threshold, source, estimate (interval) and verdict
_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "sacrebleu", "numpy", "matplotlib", "papermill")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where and with what a run happened: git commit and dirty flag, packages, machine, device."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = _cpu_fields()
    info: dict[str, Any] = {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "processes": int(os.environ.get("WORLD_SIZE", "1") or 1),  # > 1: torchrun / accelerate launch
        "cpu_model": cpu.get("model name") or platform.processor() or None,
        "cpu_id": _cpu_id(cpu),  # family / model / stepping: hosts with one model name differ
        "load": runtime.machine_load(),  # at the start; timing sections record their own (runtime.timed)
        "packages": versions,
    }
    if "torch" in sys.modules:  # never import torch just for provenance
        import torch

        info["threads"] = torch.get_num_threads()
        profile = getattr(params, "profile", None) or (params.get("profile") if isinstance(params, Mapping) else None)
        if profile in ("cpu", "gpu"):  # a record's wall time: on which host
            info["cpu_speed"] = runtime.reference_speed()
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            info["device"] = f"{n} x {torch.cuda.get_device_name(0)}"
        else:
            info["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    if params is not None and "seed" in params:
        info["seed"] = params["seed"]
    return info


def _cpu_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The ``key: value`` fields of the first processor in ``cpuinfo`` (default: /proc/cpuinfo, read once per
    provenance; {} where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        except OSError:
            return {}
    lines = cpuinfo.strip().split("\n\n", 1)[0].splitlines()
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _cpu_id(fields: Mapping[str, str]) -> str | None:
    """``"family F model M stepping S"`` from :func:`_cpu_fields` (None where it has none of the three, e.g. on ARM)."""
    parts = [f"{name} {fields[key]}" for key, name in (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))
             if key in fields]
    return " ".join(parts) or None


class Run:
    """The record of one notebook run, saved as ``results/<paper>/<profile>.json``."""

    def __init__(self, params, command: str | None = None):
        self.params = params
        self.paper: str = params.paper
        self.profile: str = params.profile
        self.measured: dict[str, Any] = {}
        self.claims: list[Claim] = []
        self._shown = 0  # claims shown by verdicts(new=True) so far
        self.command = command or _default_command(params)
        self.started = datetime.now(timezone.utc)
        self._t0 = time.perf_counter()
        # Taken when the run starts: the code that ran is the commit checked out then, not at save time.
        self.provenance = provenance(params)
        self._state = None

    @property
    def state(self):
        """The run's :class:`reproduce.rundir.RunDir` (``runs/<paper>/<profile>/``): finished rows and
        checkpoints of an interrupted run, read back when the same command runs again."""
        if self._state is None:
            from .rundir import RunDir

            self._state = RunDir(self.params)
        return self._state

    # -- values ---------------------------------------------------------------------------------
    def record(self, key: str, value: Any) -> Any:
        """Store a measured value under a dotted key (``"table5.ppl.retnet"``); returns it."""
        self.measured[key] = _jsonable(value)
        return value

    def claim(self, id: str, *, artifact: str, section: str, text: str, ours: Estimate | float | None,
              relation: str, threshold: float, source: str, tol: float = 0.0, rel: bool = False, paper: Any = None,
              note: str = "", precondition: Precondition | None = None) -> Claim:
        """Judge one pre-registered claim (:class:`reproduce.claims.Claim`) and keep it in the record."""
        if any(c.id == id for c in self.claims):
            raise ValueError(f"claim id {id!r} is used twice")
        if not isinstance(ours, Estimate):
            ours = claims_mod.exact(_jsonable(ours))
        c = Claim(id=id, artifact=artifact, section=section, text=text, ours=ours, relation=relation,
                  threshold=threshold, source=source, tol=tol, rel=rel, paper=_jsonable(paper), note=note,
                  precondition=precondition)
        entry = ledger.for_paper(self.paper).check(c.to_dict(), self.profile)  # judged only on its registered terms
        c.kind, c.status = entry.kind, entry.status
        self.claims.append(c)
        self.save_partial()  # each section's claims are on disk as soon as they are judged
        return c

    def claims_table(self) -> list[dict[str, Any]]:
        """One row per claim (for a notebook's DataFrame): estimate with interval, relation, source, verdict."""
        rows = []
        for c in (c.to_dict() for c in self.claims):
            pre = c["precondition"]
            rows.append({"id": c["id"], "artifact": c["artifact"], "claim": c["text"], "ours": estimate_text(c["ours"]),
                         "relation": claims_mod.relation_text(c), "source": c["source"], "paper": c["paper"],
                         "verdict": c["verdict"] + (f" ({pre['text']} = {_short(pre['value'])})" if pre and not pre["holds"] else ""),
                         "note": c["note"]})
        return rows

    # -- output ---------------------------------------------------------------------------------
    def to_dict(self, complete: bool = True) -> dict[str, Any]:
        ended = datetime.now(timezone.utc)
        return {
            "schema": SCHEMA_VERSION,
            "complete": complete,  # False: a run still going, or one that stopped before its last section
            "paper": self.paper,
            "profile": self.profile,
            "command": self.command,
            "params": _jsonable(self.params.as_dict()),
            "started": self.started.isoformat(timespec="seconds"),
            "ended": ended.isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - self._t0, 2),
            "provenance": self.provenance,
            "measured": self.measured,
            "claims": [c.to_dict() for c in self.claims],
        }

    def path(self) -> Path:
        return results_dir(self.params.get("output_dir")) / self.paper / f"{self.profile}.json"

    def save(self, path: str | Path | None = None) -> Path:
        """Write the finished record atomically (main process only) and return its path.

        The run's kept state (``runs/<paper>/<profile>/``: rows, checkpoints) is dropped afterwards.
        """
        from . import distributed

        target = Path(path) if path is not None else self.path()
        if self._state is not None and self._state.reused:
            self.provenance["resumed_rows"] = list(self._state.reused)
        if distributed.is_main():
            write_json_atomic(target, self.to_dict(complete=True))
            self._partial_beside().unlink(missing_ok=True)
        if self._state is not None:
            self._state.finish()
        distributed.barrier()
        return target

    def partial_path(self) -> Path:
        """Where :meth:`save_partial` writes: the results file, unless it holds a finished record
        (which a partial one never replaces); then ``runs/<paper>/<profile>/partial.json``."""
        target = self.path()
        if target.is_file():
            try:
                finished = json.loads(target.read_text(encoding="utf-8")).get("complete", True)
            except (json.JSONDecodeError, OSError, AttributeError):
                finished = False
            if finished:
                return self._partial_beside()
        return target

    def _partial_beside(self) -> Path:
        from .paths import runs_dir

        return runs_dir(self.params.get("output_dir") or None) / self.paper / self.profile / "partial.json"

    def save_partial(self) -> Path | None:
        """Write what the run has so far, marked ``"complete": false`` (main process only)."""
        from . import distributed

        if not distributed.is_main():
            return None
        target = self.partial_path()
        write_json_atomic(target, self.to_dict(complete=False))
        return target

    def verdicts(self, section: str | None = None, new: bool = False) -> Verdicts:
        """The claims judged so far, as a table a reader can scan in JupyterLab (claim, paper, ours
        [interval], verdict coloured, kind) and as :meth:`summary`'s text elsewhere: all of them (the
        notebook's last cell), those of ``section`` (a heading or an artifact), or, with ``new``, those
        judged since the last ``new`` call (a section cell: ``display(run.verdicts(new=True))``)."""
        start = self._shown if new else 0
        chosen = [c.to_dict() for c in self.claims[start:] if section is None or section in (c.section, c.artifact)]
        if new:
            self._shown = len(self.claims)
        title = f"{self.paper}/{self.profile}" + (f", {section}" if section else "")
        return Verdicts(title, chosen)

    def summary(self) -> str:
        """The claims and their verdicts, for the notebook's last cell (values depend on the machine)."""
        records = [c.to_dict() for c in self.claims]
        lines = [f"{self.paper}/{self.profile}: {claims_mod.counts_text(records)} ({len(records)} claims)"]
        for c in records:
            lines.append(f"  [{c['verdict']}] {c['artifact']}: {c['text']}: ours {estimate_text(c['ours'])} "
                         f"{claims_mod.relation_text(c)} ({c['source']})")
        return "\n".join(lines)


class Verdicts:
    """Claims with their verdicts: an HTML table in a notebook (``_repr_html_``), text elsewhere (``str``)."""

    KIND_STYLE = {"paper": "font-weight:bold", "control": "color:#555", "check": "color:#777"}
    VERDICT_COLOUR = {"holds": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#9a6700", "not testable": "#6e7781"}

    def __init__(self, title: str, records: list[dict[str, Any]]):
        self.title, self.records = title, records

    def __str__(self) -> str:
        lines = [f"{self.title}: {claims_mod.counts_text(self.records)} ({len(self.records)} claims)"]
        for c in self.records:
            lines.append(f"  [{c['verdict']}] ({c.get('kind') or '?'}) {c['artifact']}: {c['text']}: ours "
                         f"{estimate_text(c['ours'])} {claims_mod.relation_text(c)} ({c['source']})")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape

        order = {"paper": 0, "control": 1, "check": 2}
        rows = []
        for c in sorted(self.records, key=lambda c: order.get(c.get("kind") or "", 3)):
            kind = c.get("kind") or "?"
            pre = c.get("precondition")
            why = f"<br><small>{escape(str(pre['text']))} = {escape(_short(pre['value']))}</small>" if pre and not pre["holds"] else ""
            colour = self.VERDICT_COLOUR.get(c["verdict"], "#000")
            rows.append(f"<tr style=\"{self.KIND_STYLE.get(kind, '')}\"><td>{escape(kind)}</td><td>{escape(c['artifact'])}</td>"
                        f"<td style=\"text-align:left\">{escape(c['text'])}</td><td style=\"text-align:left\">"
                        f"{escape(_short(c.get('paper')) if c.get('paper') is not None else '–')}</td>"
                        f"<td>{escape(estimate_text(c['ours']))} {escape(claims_mod.relation_text(c))}</td>"
                        f"<td style=\"color:{colour};font-weight:bold\">{escape(c['verdict'])}{why}</td></tr>")
        head = "".join(f"<th>{h}</th>" for h in ("kind", "artifact", "claim", "paper", "ours [95 % interval] vs relation", "verdict"))
        return (f"<p><b>{escape(self.title)}</b>: {escape(claims_mod.counts_text(self.records))}</p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def stable_text(values: Mapping[str, Any], prefix: str = "") -> str:
    """``key: value`` lines (nested mappings flattened to dotted keys, floats to 6 significant digits)
    for a notebook's compared ``checked`` cell: only values that do not depend on the machine."""
    lines = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            lines.append(stable_text(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            lines.append(f"{name}: [{', '.join(_stable(v) for v in value)}]")
        else:
            lines.append(f"{name}: {_stable(value)}")
    return "\n".join(line for line in lines if line)


def _stable(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _default_command(params) -> str:
    extra = " ".join(f"-p {k}={json.dumps(v)}" for k, v in getattr(params, "overrides", {}).items())
    return f"python -m reproduce run {params.paper} --profile {params.profile}" + (f" {extra}" if extra else "")


def load(paper: str, profile: str, root: Path | None = None) -> dict[str, Any] | None:
    """The saved record of ``paper``/``profile``, or ``None`` if no run has produced it."""
    path = (root or results_dir()) / paper / f"{profile}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def load_first(paper: str, profiles: tuple[str, ...], root: Path | None = None) -> dict[str, Any] | None:
    """The record of the first profile in ``profiles`` that ``paper`` has results for (``None`` if none)."""
    return next((r for profile in profiles if (r := load(paper, profile, root)) is not None), None)


def stale_paths(record: Mapping[str, Any]) -> list[str]:
    """The paper's files that changed since the commit ``record`` ran at (empty: up to date).

    A commit this repository does not know makes the record stale as a whole (``["<unknown commit>"]``).
    Outside a git checkout nothing can be said, and nothing is reported.
    """
    commit = verified_at(record) or record.get("provenance", {}).get("git_commit")  # verified: current up to there
    if _git("rev-parse", "--git-dir") is None:
        return []
    if not commit or _git("cat-file", "-e", f"{commit}^{{commit}}") is None:
        return ["<unknown commit>"]
    changed = _git("diff", "--name-only", commit, "--", *paper_paths(record["paper"]))
    return sorted(filter(None, (changed or "").splitlines()))


def load_record(path: str | Path, paper: str | None = None) -> dict[str, Any]:
    """A results file, checked: readable JSON, this schema, and (if given) this paper's record.

    Raises ``ValueError`` with one line naming the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such results file")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a results file (invalid JSON: {e})") from e
    if not isinstance(record, dict) or "paper" not in record or "claims" not in record:
        raise ValueError(f"{path} is not a results record (no 'paper' or 'claims')")
    if record.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{path} has schema {record.get('schema')!r}; this version reads schema {SCHEMA_VERSION} "
                         "(re-run the profile to get a new record)")
    if paper is not None and record["paper"] != paper:
        raise ValueError(f"{path} is a record of {record['paper']!r}, not of {paper!r}")
    return record


def verdict_of(claim: Mapping[str, Any]) -> str:
    """The verdict a stored claim's own numbers give (estimate, relation, threshold, precondition)."""
    pre = claim.get("precondition")
    precondition = None if not pre else Precondition(pre["text"], pre["value"], pre["relation"], pre["threshold"], pre["source"])
    return claims_mod.judge(claim["relation"], Estimate.from_dict(claim["ours"]), claim["threshold"], claim.get("tol", 0.0),
                            claim.get("rel", False), precondition)


def compare(new: Mapping[str, Any], old: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Claim by claim: both estimates (with intervals) and verdicts; returns ``(rows, flipped ids)``.

    Verdicts are judged again from each claim's stored numbers (a record edited by hand cannot keep
    a verdict its numbers do not give). A claim present in one record only counts as flipped (its
    verdict there is ``missing``).
    """
    a = {c["id"]: c for c in new["claims"]}
    b = {c["id"]: c for c in old["claims"]}
    rows, flipped = [], []
    for id in list(a) + [k for k in b if k not in a]:
        ca, cb = a.get(id), b.get(id)
        va = verdict_of(ca) if ca else "missing"
        vb = verdict_of(cb) if cb else "missing"
        if va != vb:
            flipped.append(id)
        rows.append({"id": id, "relation": claims_mod.relation_text(ca or cb), "new": estimate_text(ca["ours"]) if ca else "–",
                     "new_verdict": va, "old": estimate_text(cb["ours"]) if cb else "–", "old_verdict": vb,
                     "agree": va == vb})
    return rows, flipped


PROVENANCE_FIELDS = ("git_commit", "git_dirty", "device", "cpu_model", "cpu_id", "threads", "processes", "load", "python", "platform")
SPEED_DIFFERS = 0.10  # two records' cpu_speed yardsticks further apart than this are a cause to look at


def cpu_speed(prov: Mapping[str, Any]) -> float | None:
    """A record provenance's single-thread speed yardstick in GFLOP/s (``runtime.reference_speed``), or None."""
    return (prov.get("cpu_speed") or {}).get("matmul_gflops_1thread")


def provenance_differences(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """What differs between two runs' provenance (commit, packages, CPU, threads, load, processes), as
    ``(field, new, old)``: the causes to look at when their numbers differ."""
    a, b = new.get("provenance", {}), old.get("provenance", {})
    out = [(k, a.get(k), b.get(k)) for k in PROVENANCE_FIELDS if a.get(k) != b.get(k)]
    sa, sb = cpu_speed(a), cpu_speed(b)  # a measurement: its run-to-run noise is no difference
    if (sa is None) != (sb is None) or (sa and sb and abs(sa / sb - 1) > SPEED_DIFFERS):
        out.append(("cpu_speed", a.get("cpu_speed"), b.get("cpu_speed")))
    pa, pb = a.get("packages", {}), b.get("packages", {})
    out += [(f"packages.{k}", pa.get(k), pb.get(k)) for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    for k in ("wall_time_s",):
        if new.get(k) != old.get(k):
            out.append((k, new.get(k), old.get(k)))
    return out


def load_all(root: Path | None = None) -> list[dict[str, Any]]:
    """Every finished record under the results folder, sorted by paper and profile."""
    root = root or results_dir()
    records = []
    for path in sorted(root.glob("*/*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it or re-run its notebook") from e
        if record.get("schema") == "doctor":  # results/doctor/: `python -m reproduce doctor`'s machine checks
            continue
        if record.get("complete", True):  # a run still going (or stopped) is not reported
            records.append(record)
    return records


def verified_path(paper: str, profile: str = "cpu") -> Path:
    return results_dir() / paper / f"{profile}.json.verified"  # not *.json: never read as a record


def verified_at(record: Mapping[str, Any]) -> str | None:
    """The latest commit at which ``record`` was verified current (None: never)."""
    path = verified_path(record["paper"], record["profile"])
    if not path.is_file():
        return None
    v = json.loads(path.read_text(encoding="utf-8"))
    same = v.get("record_commit") == record.get("provenance", {}).get("git_commit")
    return v.get("verified_at") if same else None
