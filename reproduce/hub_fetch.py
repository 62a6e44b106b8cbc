"""Download the gpu profiles' hub datasets and models once; read them again without the hub.

``python -m reproduce fetch --profile gpu [paper ...]`` resolves each paper's parameters, lists the
hub datasets (``PaperSpec.hub_datasets``) and models (``PaperSpec.hub_models``) that run reads, and
downloads each with ``huggingface_hub.snapshot_download`` into the standard Hugging Face cache
(``HF_HOME`` / ``HF_HUB_CACHE``). The download resumes where an interrupted one stopped, and a file
already in the cache is not downloaded again (the item then prints "cached"). Local folders are
skipped. Sizes come from the repository's file listing before anything is downloaded.

Which files:

- a dataset: only the files of its config and splits. The dataset card's ``configs:`` (what
  ``push_to_hub`` writes, e.g. ``wikitext-103-raw-v1/train-*``, ``de-en/test-*``) names them; without
  one, the ``datasets`` naming conventions (``data/<split>-00000-of-00003.parquet``, ``<config>/<split>-*``)
  find them; failing both, the whole repository is fetched and read as a folder.
- a model: every file but duplicate weight formats (``*.bin`` beside ``*.safetensors``) and other
  frameworks' weights (TF, Flax, ONNX, GGUF).

A fetched dataset split is recorded in ``<cache>/hub/datasets--<org>--<name>.json``
(``REPRODUCE_CACHE`` moves it): its commit and files. :func:`fetched_dataset` finds them without the
network, and ``reproduce.hub.load_dataset`` reads them in preference to the hub, so no run, rank or
resume downloads them again, with ``HF_HUB_OFFLINE=1`` too. A model needs no record:
``reproduce.hf`` loads a hub id from the Hugging Face cache while the hub is offline.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config, paths
from .hub import HubError, _builder, _read_record, _write_record, is_local
from .plan import human_bytes

# Weights a transformers model does not read when safetensors are there, and never (other frameworks).
OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "onnx/*", "*.gguf", "*.tflite", "*.mlmodel"]
DUPLICATE_WEIGHTS = ["*.bin", "*.pth", "*.pt", "*.ckpt", "original/*"]
# File suffix -> the packaged ``datasets`` builder that reads it (compression suffixes are skipped).


@dataclass(frozen=True)
class Item:
    """One hub repository a gpu run reads: a dataset (config and splits) or a model."""

    kind: str  # "dataset" | "model"
    id: str
    config: str | None = None
    splits: tuple[str, ...] = ()
    gated: bool = False
    papers: tuple[str, ...] = ()

    @property
    def repo_type(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"

    @property
    def url(self) -> str:
        from huggingface_hub import constants

        return f"{constants.ENDPOINT}/{'datasets/' if self.kind == 'dataset' else ''}{self.id}"

    @property
    def label(self) -> str:
        if self.kind == "model":
            return self.id + (" (gated)" if self.gated else "")
        return f"{self.id} " + (f"{self.config}: " if self.config else "") + f"[{', '.join(self.splits)}]"


@dataclass
class Outcome:
    """What fetching one item did: bytes of its files on the hub, and bytes downloaded this time."""

    item: Item
    files: int
    total: int
    downloaded: int
    seconds: float


def items(papers: Iterable[str], profile: str = "gpu", overrides: Mapping[str, Any] | None = None) -> tuple[list[Item], list[str]]:
    """The hub items of each paper's run with ``profile`` and ``overrides``, and the local paths skipped.

    A dataset's splits merge into one item per (id, config); an item read by several papers is listed once.
    An override goes to the papers that have that parameter (``-p model=...`` is TOVA's). Bad papers,
    profiles or values, and a parameter no paper has, raise :class:`reproduce.config.ParamError`.
    """
    papers, overrides = list(papers), dict(overrides or {})
    schemas = {paper: config.get_spec(paper).schema for paper in papers}
    for key in overrides:
        if papers and not any(key in schema for schema in schemas.values()):
            config.resolve(papers[0], profile, {key: overrides[key]})  # raises, naming close matches
    merged: dict[tuple, dict] = {}
    skipped: list[str] = []
    for paper in papers:
        params = config.resolve(paper, profile, {k: v for k, v in overrides.items() if k in schemas[paper]})
        spec = config.get_spec(paper)
        entries = [("dataset", e) for e in (spec.hub_datasets(params) if spec.hub_datasets else [])]
        entries += [("model", e) for e in (spec.hub_models(params) if spec.hub_models else [])]
        for kind, entry in entries:
            if is_local(entry["id"]):
                skipped.append(f"{paper}: {entry['param']}={entry['id']} is a local path, not fetched")
                continue
            key = (kind, entry["id"], entry.get("config") or None)
            slot = merged.setdefault(key, {"splits": [], "papers": [], "gated": False})
            if kind == "dataset" and entry["split"] not in slot["splits"]:
                slot["splits"].append(entry["split"])
            if paper not in slot["papers"]:
                slot["papers"].append(paper)
            slot["gated"] |= bool(entry.get("gated"))
    found = [Item(kind, repo, cfg, tuple(s["splits"]), s["gated"], tuple(s["papers"]))
             for (kind, repo, cfg), s in merged.items()]
    return found, skipped


# ----------------------------------------------------------------------------- which files
def _by_split(data_files: Any) -> dict[str, list[str]]:
    """A card config's ``data_files`` (a pattern, a list, or ``[{split, path}]``) as ``{split: [patterns]}``."""
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, Mapping):
        return {k: [v] if isinstance(v, str) else list(v) for k, v in data_files.items()}
    out: dict[str, list[str]] = {}
    for entry in data_files:
        if isinstance(entry, str):
            out.setdefault("train", []).append(entry)
        else:
            path = entry["path"]
            out.setdefault(entry.get("split", "train"), []).extend([path] if isinstance(path, str) else path)
    return out


def _card_patterns(card: Mapping[str, Any], item: Item, split: str) -> list[str] | None:
    """The data-file patterns the card's ``configs:`` give ``item.config`` and ``split`` (None: none given)."""
    configs = {c.get("config_name", "default"): c for c in card.get("configs") or []}
    if not configs:
        return None
    name = item.config or next((n for n, c in configs.items() if c.get("default")), None)
    name = name or ("default" if "default" in configs else next(iter(configs)) if len(configs) == 1 else None)
    if name not in configs:
        raise HubError(f"dataset {item.id!r} has no config {item.config!r}; its configs are {sorted(configs)} "
                       "(set the config parameter)", "config")
    if configs[name].get("data_files") is None:
        return None
    splits = _by_split(configs[name]["data_files"])
    if split not in splits:
        raise HubError(f"dataset {item.id!r} (config {name!r}) has no split {split!r}; its splits are {list(splits)} "
                       "(set the split parameter)", "split")
    return splits[split]


def _convention_patterns(names: list[str], item: Item, split: str) -> list[str] | None:
    """``datasets``' layouts for a repository whose card declares no configs: data/<split>-*, <config>/<split>-*."""
    from huggingface_hub.utils import filter_repo_objects

    base = f"{item.config}/" if item.config else ""
    for pattern in (f"{base}data/{split}-*", f"{base}{split}-*", f"{base}{split}/*", f"{base}data/{split}/*",
                    f"{base}{split}.*"):
        if list(filter_repo_objects(names, allow_patterns=[pattern])):
            return [pattern]
    return None


def split_files(names: list[str], card: Mapping[str, Any] | None, item: Item, split: str) -> list[str] | None:
    """The repository files of ``item``'s config and ``split``; None: read the whole repository as a folder."""
    from huggingface_hub.utils import filter_repo_objects

    patterns = _card_patterns(card or {}, item, split)
    patterns = patterns if patterns is not None else _convention_patterns(names, item, split)
    if patterns is None:
        return None
    files = sorted(filter_repo_objects(names, allow_patterns=patterns))
    if not files:
        raise HubError(f"dataset {item.id!r}: no file matches {patterns} (config {item.config!r}, split {split!r})",
                       "missing")
    return files if _builder(files) else None


def model_files(names: Iterable[str]) -> list[str]:
    """A model repository's files without duplicate weight formats and other frameworks' weights."""
    from huggingface_hub.utils import filter_repo_objects

    names = list(names)
    ignore = OTHER_FRAMEWORKS + (DUPLICATE_WEIGHTS if any(n.endswith(".safetensors") for n in names) else [])
    return sorted(filter_repo_objects(names, ignore_patterns=ignore))


# ----------------------------------------------------------------------------- fetching
def _cached(item: Item, name: str, revision: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(item.id, name, revision=revision, repo_type=item.repo_type), str)


def _card(item: Item, revision: str, names: list[str]) -> dict:
    """The YAML header of a dataset's README.md (downloaded once; {} when there is none)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.repocard import metadata_load

    if "README.md" not in names:
        return {}
    return metadata_load(hf_hub_download(item.id, "README.md", repo_type="dataset", revision=revision)) or {}


def fetch_item(item: Item, log: Callable[[str], None] = print) -> Outcome:
    """Download ``item``'s files (those already in the cache are kept); returns sizes and time.

    Raises :class:`reproduce.hub.HubError` (one line) when the item cannot be fetched.
    """
    from huggingface_hub import HfApi, snapshot_download

    t0 = time.perf_counter()
    try:
        info = HfApi().repo_info(item.id, repo_type=item.repo_type, files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        names, per_split = sorted(sizes), {}
        cached = {f for f in names if _cached(item, f, info.sha)}  # before the dataset card is read
        if item.kind == "dataset":
            card = _card(item, info.sha, names)
            per_split = {split: split_files(names, card, item, split) for split in item.splits}
            chosen = names if None in per_split.values() else sorted({f for fs in per_split.values() for f in fs}
                                                                      | ({"README.md"} & set(names)))
        else:
            chosen = model_files(names)
        missing = [f for f in chosen if f not in cached]
        total, to_get = sum(sizes[f] for f in chosen), sum(sizes[f] for f in missing)
        log(_row(item, total, len(chosen), f"{human_bytes(to_get)} to download" if missing else "cached"))
        revision = info.sha
        if missing:  # revision "main" (not the commit) so that refs/main, which offline loaders read, is written
            folder = snapshot_download(item.id, repo_type=item.repo_type, allow_patterns=[glob.escape(f) for f in chosen])
            revision = Path(folder).name
    except HubError:
        raise
    except Exception as err:  # noqa: BLE001 - every failure becomes one line naming cause and fix
        raise fetch_error(err, item) from err
    if item.kind == "dataset":
        _write_record(item, revision, per_split, names)
    seconds = time.perf_counter() - t0
    if missing:
        log(_row(item, total, len(chosen), f"downloaded {human_bytes(to_get)} in {seconds:.0f} s"))
    return Outcome(item, len(chosen), total, to_get, seconds)


def fetch_error(err: BaseException, item: Item) -> HubError:
    """The one-line :class:`HubError` of a failed listing or download."""
    name, text = type(err).__name__, " ".join(str(err).split())
    what = f"{item.kind} {item.id!r}"
    if name == "GatedRepoError" or (name != "RepositoryNotFoundError" and "gated" in text.lower()):
        return HubError(f"{what} is gated: accept its terms at {item.url} and log in (`hf auth login`, or set "
                        "HF_TOKEN), then fetch again", "gated")
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return HubError(f"{what}: no such repository on the hub ({item.url}), or it is private; check the id", "missing")
    if name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ReadTimeout",
                "ConnectionError", "TimeoutException") or "connect" in text.lower():
        return HubError(f"{what}: the Hugging Face hub cannot be reached ({text[:120]}); fetch where it answers "
                        "(the download resumes where it stopped)", "offline")
    return HubError(f"{what} cannot be fetched: {name}: {text[:200]}", "other")


def _row(item: Item, total: int, files: int, status: str) -> str:
    return f"{','.join(item.papers):<12} {item.kind:<8} {item.label:<60} {human_bytes(total):>9} {files:>6}  {status}"


def fetch_all(found: list[Item], skipped: Iterable[str] = (), log: Callable[[str], None] = print,
              err: Callable[[str], None] = print) -> int:
    """Fetch every item, one line each; returns the exit code (1 when an item failed, 0 otherwise).

    A gated or missing item is reported (one line) and the others still fetched; an unreachable hub
    stops at once, since every later item would fail the same way.
    """
    from huggingface_hub import constants

    from .runtime import hub_offline

    for line in skipped:
        log(line)
    if not found:
        log("nothing to fetch: these runs read no hub dataset or model")
        return 0
    if hub_offline(probe=False):
        err("error: fetch downloads from the Hugging Face hub, but HF_HUB_OFFLINE is set; unset it for the fetch "
            "(the runs afterwards work with it set)")
        return 1
    log(f"{'paper':<12} {'kind':<8} {'item':<60} {'size':>9} {'files':>6}  status")
    outcomes, failed = [], 0
    for item in found:
        try:
            outcomes.append(fetch_item(item, log))
        except HubError as e:
            failed += 1
            err(f"error: {','.join(item.papers)}: {e}")
            if e.kind == "offline":
                return 1
    log(f"{len(outcomes)} of {len(found)} items in {constants.HF_HUB_CACHE}: {human_bytes(sum(o.total for o in outcomes))}, "
        f"{human_bytes(sum(o.downloaded for o in outcomes))} downloaded now" + ("" if failed else
        "; runs now read them with the hub offline (HF_HUB_OFFLINE=1)"))
    return 1 if failed else 0
