"""JSON files the project writes: plain values from tensors and arrays, written atomically.

The lowest layer of the package (no reproduce import): results, run folders, verifications and the
doctor write through it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """Turn tensors, NumPy scalars/arrays, tuples and paths into plain JSON values."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _key(key: Any) -> str:
    """An object key as ``json.dumps`` writes it (str, int, float, bool, None), else its TypeError."""
    if not isinstance(key, str):
        key = json.dumps(key, allow_nan=False) if key is None or isinstance(key, (bool, int, float)) else key
        if not isinstance(key, str):
            raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")
    return json.dumps(key, ensure_ascii=False)


def dumps(data: Any, level: int = 0) -> str:
    """``data`` as indented JSON with every list of plain values on one line.

    ``json.dumps(indent=2)`` puts each number of a list on a line of its own: a record's per-sentence
    statistics (thousands of numbers per run) then take tens of lines per row and megabytes per file.
    Here objects and lists of containers are indented two spaces a level; lists of scalars stay on one
    line. ``json.loads`` reads back the same value.
    """
    if isinstance(data, Mapping) and data:
        pad = "  " * (level + 1)
        body = ",\n".join(f"{pad}{_key(k)}: {dumps(v, level + 1)}" for k, v in data.items())
        return "{\n" + body + "\n" + "  " * level + "}"
    if isinstance(data, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in data):
        pad = "  " * (level + 1)
        return "[\n" + ",\n".join(pad + dumps(v, level + 1) for v in data) + "\n" + "  " * level + "]"
    return json.dumps(data, ensure_ascii=False, allow_nan=False)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(data) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
