"""Parameters and profiles of every paper, validated before any kernel starts.

Each paper declares its schema and its three profiles in one place, ``reproduce/configs/<paper>.py``
(a ``SPEC = PaperSpec(...)``). This module must stay light: it imports neither torch nor the paper
modules, so that ``python -m reproduce run retnet -p stpes=3`` is rejected in well under 2 s.

A parameter's value is resolved in this order: the schema default < the profile's value < the
user's override. Every value is then checked against its type, range and choices; a bad one raises
:class:`ParamError` whose message is one line naming the parameter, the bad value and what is
allowed (with a "did you mean" for misspelt names).
"""

from __future__ import annotations

import difflib
import importlib
import ast
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

PAPERS = ("transformer", "flava", "retnet", "tova")
PROFILES = ("smoke", "cpu", "gpu")

_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list[int]": int,
    "list[float]": float,
    "list[str]": str,
}


class ParamError(ValueError):
    """A parameter, paper or profile that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its type, default, allowed values and help text.

    ``type`` is one of ``int``, ``float``, ``str``, ``bool``, ``list[int]``, ``list[float]``,
    ``list[str]`` (bounds and choices apply to every element of a list).
    """

    type: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    min_len: int = 0
    # False: the parameter changes how a run computes (memory, speed), not what it computes: rows that
    # an interrupted run finished with another value are kept (e.g. RetNet's micro-batch)
    state: bool = True

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise TypeError(f"Param type {self.type!r} is not one of {sorted(_TYPES)}")

    @property
    def is_list(self) -> bool:
        return self.type.startswith("list[")

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        what = f"a list of {self.type[5:-1]}" if self.is_list else self.type
        if self.choices is not None:
            what += " in {" + ", ".join(map(repr, self.choices)) + "}"
        if self.min is not None and self.max is not None:
            what += f" in [{self.min:g}, {self.max:g}]"
        elif self.min is not None:
            what += f" >= {self.min:g}"
        elif self.max is not None:
            what += f" <= {self.max:g}"
        if self.is_list and self.min_len:
            what += f" with at least {self.min_len} element(s)"
        return what

    def coerce(self, name: str, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise :class:`ParamError`."""
        if isinstance(value, str) and (self.type != "str"):
            value = _parse_literal(value)
        if self.is_list:
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                raise self._error(name, value)
            if len(value) < self.min_len:
                raise self._error(name, value)
            return [self._coerce_scalar(name, v, whole=value) for v in value]
        return self._coerce_scalar(name, value, whole=value)

    def _coerce_scalar(self, name: str, v: Any, whole: Any) -> Any:
        kind = _TYPES[self.type]
        if kind is bool:
            if not isinstance(v, bool):
                raise self._error(name, whole)
        elif kind is int:
            if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
                raise self._error(name, whole)
            v = int(v)
        elif kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self._error(name, whole)
            v = float(v)
        elif not isinstance(v, str):
            raise self._error(name, whole)
        if self.choices is not None and v not in self.choices:
            raise self._error(name, whole)
        if self.min is not None and v < self.min:
            raise self._error(name, whole)
        if self.max is not None and v > self.max:
            raise self._error(name, whole)
        return v

    def _error(self, name: str, value: Any) -> ParamError:
        spelling = example_spelling(self)
        return ParamError(f"parameter '{name}': {value!r} is not allowed; expected {self.allowed()} "
                          f"(on the command line e.g. -p \"{name}={spelling}\"; JSON works too)")


def _parse_literal(text: str) -> Any:
    """Parse a command-line value as a user writes it: JSON (``3``, ``[64,128]``, ``true``, ``["base"]``)
    or a Python literal, as in the notebook's parameters cell (``['base']``, ``True``, ``(1, 2)``);
    anything else stays the raw string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):  # [base, A: h=1]: the shell ate the quotes of ['base', ...]
        inner = stripped[1:-1].strip()
        return [_parse_literal(part.strip()) for part in inner.split(",")] if inner else []
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    return text


def example_spelling(p: Param) -> str:
    """A value of ``p``'s type as ``-p`` accepts it (its default), e.g. ``"['base', 'A']"``."""
    value = p.default[:1] if p.is_list and p.default else p.default
    if value is None or (p.is_list and not value):
        value = {"int": 1, "float": 0.5, "str": "x", "bool": True}[p.type[5:-1] if p.is_list else p.type]
        value = [value] if p.is_list else value
    return repr(value)


# Parameters that every paper has.
COMMON_PARAMS: dict[str, Param] = {
    "seed": Param("int", 0, "random seed for Python, NumPy and torch", min=0),
    "device": Param("str", "auto", "where to compute: 'auto' picks CUDA when present", choices=("auto", "cpu", "cuda")),
    "threads": Param("int", 0, "CPU threads for torch (0 = all cores)", min=0, max=256),
    "output_dir": Param("str", "", "folder for results/, figures/ and runs/ ('' = the repository, or $REPRODUCE_OUTPUT_DIR)"),
    "precision": Param("str", "auto", "training/inference precision: 'auto' = bf16 autocast on a GPU (fp32 weights), "
                       "fp32 on the CPU", choices=("auto", "fp32", "bf16", "fp16")),
    "resume": Param("bool", True, "continue an interrupted run: finished rows and training checkpoints are kept "
                    "under runs/<paper>/<profile>/ until the run ends (False: start afresh)"),
}


@dataclass(frozen=True)
class PaperSpec:
    """A paper's notebook, its parameter schema and its three profiles."""

    name: str
    notebook: str
    title: str
    params: dict[str, Param]
    profiles: dict[str, dict[str, Any]]
    description: str = ""
    # The paper's key artifacts and the notebook section that reproduces each, in reading order
    # ({"Table 1": "2. Table 1 measured"}); the report lists the ones no run has produced yet.
    artifacts: dict[str, str] = field(default_factory=dict)
    # Checks across parameters, run after every value is valid on its own: each takes the resolved
    # values and returns None, or a one-line message naming the parameters and the fix.
    checks: tuple[Callable[[Mapping[str, Any]], str | None], ...] = ()
    # Where the paper's figures and sections live, named here rather than found on the package:
    # ``plots`` is a module with ``FIGURES = {name: fn}`` (the one list of the paper's figures),
    # ``sections`` the module whose functions the notebook's sections call ("" for none).
    plots: str = ""
    sections: str = ""
    # The hub datasets a run with these values reads, checked before the kernel starts (a missing or
    # offline dataset fails in seconds, not after the sections before it): each entry is
    # {"param": <parameter holding the id>, "id": ..., "config": ... or None, "split": ..., "columns": [...]}.
    hub_datasets: Callable[[Mapping[str, Any]], list[dict[str, Any]]] | None = None
    # The hub models (and their tokenizers or processors, from the same repository) a run with these
    # values loads, for ``python -m reproduce fetch --profile gpu``: each entry is
    # {"param": <parameter holding the id>, "id": ..., "gated": <needs accepted terms and a login>}.
    hub_models: Callable[[Mapping[str, Any]], list[dict[str, Any]]] | None = None
    # The claims ledger (reproduce.ledger): "" for the paper's own reproduce/<name>/claims.toml.
    ledger: str = ""

    def __post_init__(self) -> None:
        missing = set(PROFILES) - set(self.profiles)
        if missing:
            raise TypeError(f"{self.name}: profiles {sorted(missing)} are not declared")
        clash = set(self.params) & (set(COMMON_PARAMS) | {"profile"})
        if clash:
            raise TypeError(f"{self.name}: parameters {sorted(clash)} are reserved")
        schema = self.schema
        for profile, values in self.profiles.items():
            for key, value in values.items():
                if key not in schema:
                    raise TypeError(f"{self.name}: profile {profile!r} sets unknown parameter {key!r}")
                schema[key].coerce(key, value)  # the profiles themselves must be valid
        for key, p in schema.items():
            p.coerce(key, p.default)
        for profile, values in self.profiles.items():
            problem = self.check({k: values.get(k, p.default) for k, p in schema.items()})
            if problem:
                raise TypeError(f"{self.name}: profile {profile!r}: {problem}")

    def section(self, artifact: str) -> str:
        """The notebook heading that reproduces ``artifact`` (``SPEC.section("Table 1")``): every paper's
        sections and claims name their section this way, from the one list in ``artifacts``."""
        try:
            return self.artifacts[artifact]
        except KeyError:
            raise KeyError(f"{self.name}: no artifact {artifact!r}; the spec lists {list(self.artifacts)}") from None

    def check(self, values: Mapping[str, Any]) -> str | None:
        """The first message of ``checks`` on ``values``, or None when they all pass."""
        for check in self.checks:
            problem = check(values)
            if problem:
                return problem
        return None

    @property
    def schema(self) -> dict[str, Param]:
        return {**COMMON_PARAMS, **self.params}


class Params(Mapping):
    """Validated parameters of one run: a read-only mapping with attribute access."""

    def __init__(self, paper: str, profile: str, values: dict[str, Any], overrides: dict[str, Any]):
        self._values = dict(values)
        self.paper = paper
        self.profile = profile
        self.overrides = dict(overrides)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('paper', '?')} has no parameter {key!r}") from None

    def as_dict(self) -> dict[str, Any]:
        return {"paper": self.paper, "profile": self.profile, **self._values}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Params({self.paper}/{self.profile}: {body})"


@dataclass
class _Registry:
    specs: dict[str, PaperSpec] = field(default_factory=dict)

    def get(self, paper: str) -> PaperSpec:
        if paper not in PAPERS:
            raise ParamError(_unknown("paper", paper, PAPERS))
        if paper not in self.specs:
            self.specs[paper] = importlib.import_module(f"reproduce.configs.{paper}").SPEC
        return self.specs[paper]


_REGISTRY = _Registry()


def available_papers() -> list[str]:
    """Papers whose config module exists (a paper lands with its config, notebook and module)."""
    import importlib.util

    return [p for p in PAPERS if importlib.util.find_spec(f"reproduce.configs.{p}") is not None]


def _load_extra_specs() -> None:
    """Import the modules named in ``REPRODUCE_SPECS`` (comma-separated); each registers a spec.

    This is how the runner's own test notebook (``tests/pipeline_spec.py``) reaches the command
    line, and how a user can run a notebook of their own through the same machinery.
    """
    import os

    for module in filter(None, (m.strip() for m in os.environ.get("REPRODUCE_SPECS", "").split(","))):
        importlib.import_module(module)


def register(spec: PaperSpec) -> PaperSpec:
    """Make an extra spec known (the runner's own test notebook uses this); returns it."""
    _REGISTRY.specs[spec.name] = spec
    return spec


def get_spec(paper: str) -> PaperSpec:
    """The :class:`PaperSpec` of ``paper``, or a :class:`ParamError` naming the known papers."""
    if paper not in _REGISTRY.specs and paper not in PAPERS:
        _load_extra_specs()
    if paper in _REGISTRY.specs:
        return _REGISTRY.specs[paper]
    if paper in PAPERS and paper not in available_papers():
        raise ParamError(f"paper '{paper}' has no notebook yet; available: {', '.join(available_papers())}")
    return _REGISTRY.get(paper)


def _unknown(kind: str, value: str, allowed) -> str:
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{value}'{hint} (allowed: {', '.join(allowed)})"


def resolve(paper: str, profile: str = "smoke", overrides: Mapping[str, Any] | None = None) -> Params:
    """Validate and resolve the parameters of one run: defaults < profile < overrides."""
    spec = get_spec(paper)
    if profile not in PROFILES:
        raise ParamError(_unknown("profile", profile, PROFILES))
    schema = spec.schema
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in schema:
            raise ParamError(_unknown(f"parameter for {paper}", key, list(schema)))
    values: dict[str, Any] = {}
    for key, p in schema.items():
        raw = overrides.get(key, spec.profiles[profile].get(key, p.default))
        values[key] = p.coerce(key, raw)
    problem = spec.check(values)
    if problem:
        raise ParamError(problem)
    return Params(paper, profile, values, {k: values[k] for k in overrides})


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``["steps=3", "budgets=[64,128]"]`` from the command line into a dict (values as JSON)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParamError(f"override {pair!r} is not of the form key=value")
        out[key.strip()] = _parse_literal(value.strip())
    return out


def notebook_params(paper: str, namespace: Mapping[str, Any]) -> Params:
    """Resolve the parameters of a notebook run from its namespace (the notebook's ``globals()``).

    The ``parameters`` cell sets ``profile`` and every parameter to ``None`` ("the profile's
    value"); papermill (or a person in JupyterLab) replaces any of them with a literal. Names that
    are ``None`` take the profile's value. The same validation as the command line applies.
    """
    spec = get_spec(paper)
    profile = namespace.get("profile", "smoke")
    overrides = {k: namespace[k] for k in spec.schema if namespace.get(k) is not None}
    return resolve(paper, profile, overrides)
