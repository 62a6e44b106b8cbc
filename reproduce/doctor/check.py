"""The check machinery of ``python -m reproduce doctor``: a check's record, and running one in isolation."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Skipped(Exception):
    """A check that does not apply here (its message says why)."""


@dataclass
class Check:
    name: str
    status: str  # ok | failed | skipped
    seconds: float
    numbers: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # the key numbers, one line (the table's column)
    error: str = ""  # failed: the exception in one line; skipped: why


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def run_check(name: str, fn: Callable[[], dict[str, Any]]) -> Check:
    """Run one check; whatever it raises is recorded, never raised."""
    t0 = time.perf_counter()
    try:
        numbers = fn()
    except Skipped as why:
        return Check(name, "skipped", time.perf_counter() - t0, error=str(why))
    except Exception as error:  # noqa: BLE001 - a failing check must not stop the others
        return Check(name, "failed", time.perf_counter() - t0, error=one_line(error))
    finally:
        free_memory()
    summary = numbers.pop("summary", "")
    failure = numbers.pop("failure", "")  # a check that ran but found a problem
    return Check(name, "failed" if failure else "ok", time.perf_counter() - t0, numbers, summary, failure)


def free_memory() -> None:
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e9:.1f} GB"
