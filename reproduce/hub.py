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

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .data.text import HubDatasetOffline

FETCH_COMMAND = "python -m reproduce fetch --profile gpu"

KINDS = ("offline", "gated", "script", "split", "config", "missing", "column", "other")


class HubError(HubDatasetOffline):
    """A dataset of a gpu profile cannot be read; ``kind`` is one of :data:`KINDS`."""

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
    from .hub_fetch import fetched_dataset
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
