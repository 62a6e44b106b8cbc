"""``python -m reproduce doctor``: the first thing to run on a new GPU box (<= 8 minutes on one GPU).

Each check runs on its own: an exception is recorded as ``failed`` with its one-line error and the
next check runs. Every check has a status (ok / failed / skipped), its numbers and its wall time.

- ``environment``: python, torch, transformers, accelerate, datasets; CUDA, cuDNN and NCCL; the GPU's
  name and memory, and the memory its CUDA context takes (what ``plan`` assumes:
  ``plan.CUDA_CONTEXT_BYTES``); TF32 flags; CPU affinity against the cores and the cgroup's CPU
  quota; free disk of the hub cache and of the repository; ``HF_HUB_OFFLINE`` and whether
  ``HF_TOKEN`` is set (never its value).
- ``sdpa``: which scaled-dot-product-attention backends run a small causal attention, forward and
  backward (bf16 on CUDA, fp32 on the CPU), and how far each is from the math kernel.
- ``process group``: a 1-process group (NCCL on CUDA, gloo on the CPU) and one all_reduce.
- ``tiny step: <paper>``: the gpu profile's code path at tiny sizes (the gpu profile with
  :data:`TINY` overrides): the model its sections build, one optimizer step of micro-batches under
  bf16 autocast (on the CPU too). TOVA trains nothing: its step is the App. E pass of a tiny LLaMA,
  and streaming through a TOVA cache must give the same NLLs.
- ``real step: <paper>`` (CUDA, not ``--tiny``): the step the plan's largest section is made of, at
  the gpu profile's shapes: its peak memory next to the plan's prediction for that section, tokens/s
  of timed steps after a warm-up, the MFU they make in the plan's FLOP count (the recomputation of
  checkpointed blocks included; FLAVA's heads on every position, an upper bound), and the paper's
  GPU-hours with that MFU instead of ``plan.MFU``.

The result is one JSON file (default ``results/doctor/<host>-<device>.json``, written atomically)
and a table; the exit code is 0 when every check is ok or skipped, 1 otherwise.
``python -m reproduce plan <paper> --doctor FILE`` then uses the measured MFU of each paper.

Modules: :mod:`.check` (a check's record, run in isolation), :mod:`.machine` (environment, SDPA,
process group), :mod:`.steps` (each paper's step, tiny and real).

Deviation from the notebooks: the steps run under ``torch.autocast`` directly (what accelerate's
``mixed_precision="bf16"`` wraps the forward in), not through ``reproduce.train``'s loop, and on
random inputs (no dataset is read: the doctor runs before anything is downloaded).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reproduce import config

from .check import Check, Skipped, one_line, run_check
from .machine import check_environment, check_process_group, check_sdpa
from .steps import STEPS, TINY, TOVA_TINY_LLAMA, Step, check_real_step, check_tiny_step, measure_step, run_steps

SCHEMA_VERSION = 1
__all__ = ["Check", "Skipped", "STEPS", "Step", "TINY", "TOVA_TINY_LLAMA", "check_environment", "check_process_group",
           "check_real_step", "check_sdpa", "check_tiny_step", "checks", "load", "main", "measure_step",
           "measured_mfu", "one_line", "run", "run_check", "run_steps"]


# ----------------------------------------------------------------------------- all checks
def checks(device, tiny: bool) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """Every check in order, as (name, thunk); looked up at call time, so a test can replace one."""
    out = [("environment", lambda: check_environment(device)), ("sdpa", lambda: check_sdpa(device)),
           ("process group", lambda: check_process_group(device))]
    out += [(f"tiny step: {p}", lambda p=p: check_tiny_step(p, device)) for p in config.PAPERS]

    def real(paper):
        if tiny:
            raise Skipped("--tiny")
        if device.type != "cuda":
            raise Skipped("real shapes need a GPU")
        return check_real_step(paper, device)

    out += [(f"real step: {p}", lambda p=p: real(p)) for p in config.PAPERS]
    return out


def default_out(device) -> Path:
    from reproduce.paths import results_dir

    return results_dir() / "doctor" / f"{socket.gethostname()}-{device.type}.json"


def run(device: str = "auto", out: Path | None = None, tiny: bool = False, progress: Callable[[Check], None] | None = None
        ) -> tuple[dict[str, Any], Path]:
    """Run every check on ``device``; write the JSON (atomically) and return it with its path."""
    from reproduce import results, runtime

    dev = runtime.pick_device(device)
    if dev.type == "cuda" and dev.index is None:  # torch.cuda.set_device and NCCL want an index
        import torch

        dev = torch.device("cuda", torch.cuda.current_device())
    t0 = time.perf_counter()
    done = []
    for name, fn in checks(dev, tiny):
        check = run_check(name, fn)
        done.append(check)
        if progress is not None:
            progress(check)
    record = {
        "schema": "doctor", "schema_version": SCHEMA_VERSION,
        "provenance": {**results.provenance(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "device": runtime.device_name(dev), "device_type": dev.type, "tiny": tiny},
        "wall_time_s": time.perf_counter() - t0,
        "checks": [results._jsonable(asdict(c)) for c in done],
    }
    path = Path(out) if out else default_out(dev)
    results.write_json_atomic(path, record)
    return record, path


def failed(record: dict[str, Any]) -> list[str]:
    return [c["name"] for c in record["checks"] if c["status"] not in ("ok", "skipped")]


def print_table(record: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    prov = record["provenance"]
    table = Table(title=f"reproduce doctor: {prov['host']}, {prov['device']} ({record['wall_time_s']:.0f} s)")
    for col in ("check", "status", "key numbers", "seconds"):
        table.add_column(col)
    colour = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
    for c in record["checks"]:
        text = c["summary"] if c["status"] == "ok" else c["error"]
        table.add_row(c["name"], f"[{colour[c['status']]}]{c['status']}[/]", text, f"{c['seconds']:.1f}")
    (console or Console(width=200)).print(table)


# ----------------------------------------------------------------------------- reading a doctor file
def load(path: str | Path) -> dict[str, Any]:
    """A doctor JSON file, checked to be one (ValueError naming the file otherwise)."""
    import json

    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable doctor file ({one_line(error)})") from error
    if record.get("schema") != "doctor" or record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: not a doctor file of schema version {SCHEMA_VERSION} (python -m reproduce doctor writes one)")
    return record


def measured_mfu(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per paper, the MFU its real step measured (papers whose real step did not run are left out)."""
    out = {}
    for c in record["checks"]:
        name, numbers = c["name"], c.get("numbers") or {}
        if name.startswith("real step: ") and c["status"] == "ok" and numbers.get("mfu"):
            out[name.removeprefix("real step: ")] = {"mfu": numbers["mfu"], "gpu": numbers.get("gpu"),
                                                     "section": numbers.get("section")}
    return out


def main(device: str = "auto", out: Path | None = None, tiny: bool = False) -> int:
    def progress(check: Check) -> None:
        print(f"{check.name}: {check.status} ({check.seconds:.1f} s)" + (f" {check.error}" if check.error else ""),
              flush=True)

    record, path = run(device, out, tiny, progress)
    print_table(record)
    print(f"wrote {path}")
    bad = failed(record)
    if bad:
        print(f"{len(bad)} check(s) failed: {', '.join(bad)}")
    return 1 if bad else 0
