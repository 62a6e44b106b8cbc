"""Datasets of the gpu profiles, from the Hugging Face hub or a local folder, with one-line errors.

Every hub id a notebook reads is a parameter (dataset id, config, split), so the same code reads
the hub on a GPU box and a local stand-in in tests: a folder of parquet files laid out like the
hub's (``data/<split>-00000-of-00001.parquet``) or saved with ``Dataset.save_to_disk``.

:func:`load_dataset` turns each way a hub dataset fails into one :class:`HubError` whose message
is one line naming the id, the cause and the fix, within seconds:

- ``offline``: ``HF_HUB_OFFLINE=1``, or huggingface.co does not answer within ~1.5 s;
- ``gated``: the dataset needs its terms accepted and a login (``hf auth login``);
- ``script``: the dataset ships a loading script, which ``datasets`` >= 4 no longer runs;
- ``split`` / ``config``: no such split or config (the available ones are named);
- ``missing``: no such dataset on the hub or on disk;
- ``column``: a column the notebook reads is not in the dataset (:func:`require_columns`).

A dataset split fetched once with ``python -m reproduce fetch --profile gpu`` (:mod:`reproduce.hub_fetch`)
is read from the Hugging Face cache, in preference to the hub and with the hub offline: no run, rank
or resume downloads it again.

``datasets`` comes with the extras ``gpu`` and ``test`` and is imported only here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths


FETCH_COMMAND = "python -m reproduce fetch --profile gpu"

# the ``datasets`` builder of a fetched split, by its files' extension
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text"}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")

KINDS = ("offline", "gated", "script", "split", "config", "missing", "column", "other")


class HubError(OSError):
    """The one error of the Hugging Face hub in this package: a dataset or model of a gpu profile cannot
    be read or fetched (``reproduce.hf`` raises it too); ``kind`` is one of :data:`KINDS`."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def is_local(dataset_id: str) -> bool:
    """A local folder or file (read without the hub), not a hub id."""
    return Path(dataset_id).expanduser().exists() or dataset_id.startswith(("/", "./", "../", "~"))


def _what(dataset_id: str, config: str | None, split: str) -> str:
    return f"dataset {dataset_id!r}" + (f" (config {config!r})" if config else "") + f", split {split!r}"


def load_dataset(dataset_id: str, config: str | None = None, split: str = "train", *, streaming: bool = True,
                 param: str = "", alternative: str = "") -> Any:
    """``datasets.load_dataset(dataset_id, config, split=split, streaming=streaming)``, failing in one line.

    ``param``: the notebook parameter that holds ``dataset_id`` (named in the fix); ``alternative``:
    what works without the hub (e.g. "use profile=cpu, which reads the packaged novels").
    """
    from .runtime import hub_offline

    what = _what(dataset_id, config, split)
    set_it = f"-p {param}=<hub id or local folder>" if param else "another dataset id or a local folder"
    fetched = None if is_local(dataset_id) else fetched_dataset(dataset_id, config, split)
    if fetched is None and not is_local(dataset_id) and hub_offline():
        raise HubError(f"{what} needs the Hugging Face hub, which is offline (HF_HUB_OFFLINE=1 or no answer from "
                       f"huggingface.co) and it was not fetched ({FETCH_COMMAND}, where the hub answers); "
                       f"{alternative or 'run where the hub answers'}, or set {set_it} (a folder of parquet files)",
                       "offline")
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"{what} needs the `datasets` library: pip install -e \".[gpu]\" (or pip install datasets)") from err
    try:
        if fetched is not None and not fetched.as_folder:  # the split's files, read by the builder of their format
            return datasets.load_dataset(fetched.builder, data_files={split: [str(f) for f in fetched.files]},
                                         split=split, streaming=streaming)
        source, name = _config_folder(str(fetched.folder) if fetched is not None else dataset_id, config)
        return datasets.load_dataset(source, name, split=split, streaming=streaming)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line naming cause and fix
        raise classify(err, dataset_id, config, split, set_it, alternative) from err


def _config_folder(source: str, config: str | None) -> tuple[str, str | None]:
    """A local folder in the hub's layout of one folder per config (``de-en/train-*.parquet``) and no dataset
    card naming the configs: read the config's folder (``datasets`` alone would find no config there)."""
    folder = Path(source).expanduser()
    if not (config and (folder / config).is_dir()):
        return source, config
    if (folder / "README.md").is_file():
        from huggingface_hub.repocard import metadata_load

        if (metadata_load(folder / "README.md") or {}).get("configs"):
            return source, config
    return str(folder / config), None


def classify(err: BaseException, dataset_id: str, config: str | None, split: str, set_it: str,
             alternative: str = "") -> HubError:
    """The :class:`HubError` of a failure raised by ``datasets.load_dataset``."""
    what = _what(dataset_id, config, split)
    text = " ".join(str(err).split())
    name = type(err).__name__
    if "gated" in text.lower() or name == "GatedRepoError":
        return HubError(f"{what} is gated: accept its terms at https://huggingface.co/datasets/{dataset_id} and log "
                        f"in (`hf auth login`, or set HF_TOKEN), or set {set_it}", "gated")
    if "scripts are no longer supported" in text or re.search(r"\bloading script\b", text):
        return HubError(f"{what} ships a loading script, which datasets >= 4 no longer runs; use a parquet copy of "
                        f"it on the hub ({set_it})", "script")
    if m := re.search(r"Bad split: (\S+?)\.? Available splits: (\[.*?\])", text):
        return HubError(f"{what}: the dataset has no split {m.group(1)!r}; its splits are {m.group(2)} "
                        f"(set the split parameter)", "split")
    if m := re.search(r'Unknown split "(.+?)"\. Should be one of (\[.*?\])', text):
        return HubError(f"{what}: the dataset has no split {m.group(1)!r}; its splits are {m.group(2)} "
                        f"(set the split parameter)", "split")
    if m := re.search(r"BuilderConfig '?(.+?)'? not found\.? Available: (\[.*?\])", text):
        return HubError(f"{what}: the dataset has no config {m.group(1)!r}; its configs are {m.group(2)} "
                        f"(set the config parameter)", "config")
    if name in ("DatasetNotFoundError", "FileNotFoundError", "DataFilesNotFoundError", "RepositoryNotFoundError",
                "EmptyDatasetError") or "doesn't exist on the Hub" in text or "Couldn't find" in text:
        return HubError(f"{what}: no such dataset on the hub or on disk ({text[:160]}); set {set_it}", "missing")
    if name == "ConnectionError" or "OfflineModeIsEnabled" in text or "Couldn't reach" in text:
        return HubError(f"{what} needs the Hugging Face hub, which cannot be reached ({text[:120]}); "
                        f"{alternative or 'run where the hub answers'}, or set {set_it}", "offline")
    return HubError(f"{what} cannot be read: {name}: {text[:200]}", "other")


def require_columns(row: Mapping[str, Any], columns: Iterable[str], dataset_id: str, param: str = "") -> None:
    """Fail in one line when the first row lacks a column the notebook reads."""
    missing = [c for c in columns if c not in row]
    if missing:
        hint = f" (set {param})" if param else ""
        raise HubError(f"dataset {dataset_id!r} has no column(s) {missing}; its columns are {sorted(row)}{hint}", "column")


def preflight(sources: Iterable[Mapping[str, Any]]) -> list[str]:
    """Open each source's stream and read its first row; one message per source that cannot be read.

    Run by ``python -m reproduce run`` before the notebook starts, so that an offline hub, a gated or
    script-based dataset, a wrong split or a missing column fails in seconds with its one-line message.
    """
    problems = []
    for source in sources:
        try:
            data = load_dataset(source["id"], source.get("config"), source.get("split", "train"), streaming=True,
                                param=source.get("param", ""), alternative=source.get("alternative", ""))
            first = next(iter(data), None)
            if first is None:
                raise HubError(f"{_what(source['id'], source.get('config'), source.get('split', 'train'))} is empty", "missing")
            require_columns(first, source.get("columns", ()), source["id"], source.get("param", ""))
        except HubError as e:
            problems.append(str(e))
        except Exception as e:  # noqa: BLE001 - reading the first row failed in another way
            problems.append(str(classify(e, source["id"], source.get("config"), source.get("split", "train"),
                                         f"-p {source.get('param', '')}=...")))
    return problems


def _builder(files: list[str]) -> str | None:
    """The ``datasets`` builder that reads ``files`` (one format), or None."""
    found = set()
    for name in files:
        stem = name.removesuffix(next((c for c in COMPRESSION if name.endswith(c)), ""))
        found.add(BUILDERS.get(Path(stem).suffix))
    return found.pop() if len(found) == 1 else None


# ----------------------------------------------------------------------------- records of fetched datasets
def _record_path(repo_id: str) -> Path:
    return paths.cache_dir() / "hub" / f"datasets--{repo_id.replace('/', '--')}.json"


def _read_record(repo_id: str) -> dict:
    try:
        return json.loads(_record_path(repo_id).read_text())
    except (OSError, ValueError):
        return {}


def _write_record(item, revision: str, per_split: Mapping[str, list[str] | None], names: list[str]) -> None:
    record = _read_record(item.id)
    slot = record.setdefault(item.config or "", {})
    for split, files in per_split.items():
        slot[split] = {"revision": revision, "files": files if files is not None else names, "folder": files is None}
    path = _record_path(item.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


@dataclass(frozen=True)
class FetchedCopy:
    """A dataset split in the Hugging Face cache: its files, or its snapshot folder to read whole."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    as_folder: bool = False

    @property
    def builder(self) -> str | None:
        return _builder([f.name for f in self.files])


def fetched_dataset(repo_id: str, config: str | None, split: str) -> FetchedCopy | None:
    """The fetched copy of one split when every file of it is in the cache, else None; never uses the network."""
    from huggingface_hub import try_to_load_from_cache

    entry = _read_record(repo_id).get(config or "", {}).get(split)
    if not entry or not entry.get("files"):
        return None
    found = [try_to_load_from_cache(repo_id, f, revision=entry["revision"], repo_type="dataset") for f in entry["files"]]
    if not all(isinstance(p, str) for p in found):
        return None
    folder = Path(found[0][: -len(entry["files"][0])])  # <cache>/datasets--org--name/snapshots/<commit>/
    return FetchedCopy(folder, [Path(p) for p in found], bool(entry.get("folder")))
