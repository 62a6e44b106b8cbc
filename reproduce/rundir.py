"""The state of an unfinished run, kept under ``runs/<paper>/<profile>/`` so the same command resumes it.

A paper section wraps each expensive unit of work (a training row, a sweep point) in
:meth:`RunDir.row`: the first run computes and stores its JSON result; a rerun after a crash or a
kill reads it back instead. A training inside a row checkpoints into :meth:`RunDir.checkpoint_dir`
(:func:`reproduce.train.train` continues from the newest complete checkpoint there), so an
interrupted row continues from its last checkpoint, not from step 0.

What is kept belongs to one set of parameters: ``params.json`` holds them, and a run with other
parameters (or ``resume=False``) moves the old state aside (``<profile>.old-<time>/``) and starts
afresh. When the run ends and its record is saved (:meth:`finish`), the rows and checkpoints are
deleted: a finished run is never "resumed" into a stale answer.

Only the main process writes (:mod:`reproduce.distributed`); every process reads.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import distributed
from .paths import runs_dir
from .jsonio import jsonable, write_json_atomic
from .sources import code_version

T = TypeVar("T")
PARAMS_FILE = "params.json"
# Parameters that change where or how fast a run computes, not what it computes.
_NOT_STATE = frozenset({"threads", "output_dir", "resume", "device"})


def fingerprint(params) -> dict[str, Any]:
    """What a run's kept state depends on: the parameters and the code (every file that can move the
    paper's numbers, :func:`code_version`). Timed rows depend on the thread count too (``row(timed=True)``)."""
    from .config import get_spec

    declared = get_spec(params.paper).params
    values = {k: v for k, v in params.as_dict().items()
              if k not in _NOT_STATE and (k not in declared or declared[k].state)}
    return {"paper": params.paper, "profile": params.profile, "params": jsonable(values),
            "code": code_version(params.paper)}


class Rows(Protocol):
    """How an experiment keeps its expensive units of work (a training row, a sweep point): the one
    resume protocol. :class:`RunDir` keeps them on disk for a rerun; :class:`MemoryRows` (the
    default of every experiment called directly) computes and forgets."""

    def row(self, key: str, compute: Callable[[], T], fmt: str = "json", timed: bool = False) -> T: ...

    def has_row(self, key: str, fmt: str = "json") -> bool: ...

    def checkpoint_dir(self, key: str) -> Path | None: ...

    def key(self, *parts: Any) -> str: ...


def row_key(*parts: Any) -> str:
    """A row key from parts (``row_key("table3", "A", 0)`` -> ``"table3-A-0"``); long parts are hashed."""
    out = []
    for part in parts:
        text = re.sub(r"[^A-Za-z0-9_.=+,]", "_", str(part))
        out.append(text if len(text) <= 40 else hashlib.sha1(text.encode()).hexdigest()[:12])
    return "-".join(out)


class MemoryRows:
    """:class:`Rows` without a run folder: every row is computed when asked for, nothing is kept, and
    trainings do not checkpoint."""

    def row(self, key: str, compute: Callable[[], T], fmt: str = "json", timed: bool = False) -> T:
        return compute()

    def has_row(self, key: str, fmt: str = "json") -> bool:
        return False

    def checkpoint_dir(self, key: str) -> None:
        return None

    def key(self, *parts: Any) -> str:
        return row_key(*parts)


def _safe(key: str) -> str:
    if not key or not re.fullmatch(r"[A-Za-z0-9_.=+,-]+", key) or key.startswith("."):
        raise ValueError(f"row key {key!r}: use letters, digits and _.=+,- only (it names a file)")
    return key


class RunDir:
    """``runs/<paper>/<profile>/`` of one run: finished rows and training checkpoints (:class:`Rows`)."""

    def __init__(self, params, root: str | Path | None = None):
        self.params = params
        self.root = Path(root) if root is not None else runs_dir(params.get("output_dir") or None) / params.paper / params.profile
        self.reused: list[str] = []  # rows read back from an earlier, interrupted run
        self._fingerprint = fingerprint(params)
        if distributed.is_main():
            self._claim_folder(bool(params.get("resume", True)))
        distributed.barrier()

    def _claim_folder(self, resume: bool) -> None:
        marker = self.root / PARAMS_FILE
        if marker.is_file():
            try:
                kept = json.loads(marker.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                kept = None
            if not resume or kept != self._fingerprint:
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                aside = self.root.with_name(f"{self.root.name}.old-{stamp}")
                n = 1
                while aside.exists():
                    aside, n = self.root.with_name(f"{self.root.name}.old-{stamp}-{n}"), n + 1
                self.root.rename(aside)
                why = "resume=False" if not resume else "its parameters differ from this run's"
                print(f"runs: the state of an earlier run was moved to {aside} ({why}); starting afresh")
        write_json_atomic(marker, self._fingerprint)

    # -- rows -------------------------------------------------------------------------------------
    def row_path(self, key: str, fmt: str = "json") -> Path:
        return self.root / "rows" / f"{_safe(key)}.{'json' if fmt == 'json' else 'pkl'}"

    def has_row(self, key: str, fmt: str = "json") -> bool:
        """Whether row ``key`` is stored, as the main process sees it (the same answer on every process)."""
        return bool(distributed.broadcast(self.row_path(key, fmt).is_file()))

    def row(self, key: str, compute: Callable[[], T], fmt: str = "json", timed: bool = False) -> T:
        """``compute()``'s result, computed once per run: read back when an interrupted run stored it.

        ``fmt``: "json" (plain data; tuples come back as lists) or "pickle" (any object).
        ``timed``: the row holds timings, which belong to the thread count they ran with (a rerun
        with other threads times again). The row's checkpoints (:meth:`checkpoint_dir`) are deleted
        once the row is stored.
        """
        if fmt not in ("json", "pickle"):
            raise ValueError(f"fmt must be 'json' or 'pickle', got {fmt!r}")
        if timed:
            import torch

            key = f"{key}.threads={distributed.broadcast(torch.get_num_threads())}"  # one name on every process
        path = self.row_path(key, fmt)
        # Decided by the main process for all: a process that saw the file the main one has just written
        # would skip the barrier below that the main one waits in.
        if self.has_row(key, fmt):
            self.reused.append(key)
            if fmt == "json":
                return json.loads(path.read_text(encoding="utf-8"))
            with path.open("rb") as f:
                return pickle.load(f)
        value = compute()
        if distributed.is_main():
            if fmt == "json":
                write_json_atomic(path, value)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                with tmp.open("wb") as f:
                    pickle.dump(value, f)
                tmp.replace(path)
            shutil.rmtree(self.root / "checkpoints" / _safe(key), ignore_errors=True)
        distributed.barrier()
        return value

    def checkpoint_dir(self, key: str) -> Path:
        """Where the training of row ``key`` keeps its checkpoints (one folder, shared by every process)."""
        return self.root / "checkpoints" / _safe(key)

    def key(self, *parts: Any) -> str:
        """A row key from parts (:func:`row_key`)."""
        return row_key(*parts)

    # -- end ----------------------------------------------------------------------------------------
    def finish(self) -> None:
        """The run's record is saved: drop its rows, checkpoints and parameters (executed notebooks stay)."""
        if distributed.is_main():
            for name in ("rows", "checkpoints", "partial.json", PARAMS_FILE):
                target = self.root / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        distributed.barrier()
