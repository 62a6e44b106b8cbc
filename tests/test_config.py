"""Parameter schemas, profiles and validation (reproduce/config.py)."""

import re

import pytest

import pipeline_spec  # noqa: F401  registers the runner's test paper
from conftest import REPO_ROOT
from reproduce import config
from reproduce.config import Param, PaperSpec, ParamError


def test_profiles_layer_defaults_profile_and_overrides():
    smoke = config.resolve("pipeline", "smoke")
    assert smoke.steps == 50 and smoke.n == 64 and smoke.seed == 0
    cpu = config.resolve("pipeline", "cpu")
    assert cpu.steps == 200
    over = config.resolve("pipeline", "smoke", {"steps": 7, "lr": "0.5"})
    assert over.steps == 7 and over.lr == 0.5 and over.overrides == {"steps": 7, "lr": 0.5}
    assert over.as_dict()["profile"] == "smoke"


@pytest.mark.parametrize(
    "paper, profile, overrides, expected",
    [
        ("nosuchpaper", "smoke", {}, "unknown paper 'nosuchpaper'"),
        ("pipeline", "huge", {}, "unknown profile 'huge'"),
        ("pipeline", "smoke", {"steps": -1}, "parameter 'steps': -1 is not allowed; expected int in [1, 100000]"),
        ("pipeline", "smoke", {"steps": 2.5}, "parameter 'steps': 2.5 is not allowed"),
        ("pipeline", "smoke", {"steps": True}, "parameter 'steps': True is not allowed"),
        ("pipeline", "smoke", {"stpes": 3}, "did you mean 'steps'?"),
        ("pipeline", "smoke", {"device": "tpu"}, "expected str in {'auto', 'cpu', 'cuda'}"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(paper, profile, overrides, expected):
    with pytest.raises(ParamError) as err:
        config.resolve(paper, profile, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_list_parameters_coerce_and_check_every_element():
    p = Param("list[int]", [64], "budgets", min=1, min_len=1)
    assert p.coerce("budgets", "[64, 128]") == [64, 128]
    with pytest.raises(ParamError, match="at least 1"):
        p.coerce("budgets", [])
    with pytest.raises(ParamError):
        p.coerce("budgets", [64, 0])


def test_parse_overrides_reads_json_values():
    assert config.parse_overrides(["steps=3", "budgets=[64,128]", "name=abc", "flag=true"]) == {
        "steps": 3, "budgets": [64, 128], "name": "abc", "flag": True}
    with pytest.raises(ParamError, match="key=value"):
        config.parse_overrides(["steps"])


def test_notebook_params_take_non_none_globals():
    ns = {"profile": "cpu", "steps": None, "lr": 0.25, "unrelated": 1}
    params = config.notebook_params("pipeline", ns)
    assert params.profile == "cpu" and params.steps == 200 and params.lr == 0.25


def test_a_spec_refuses_invalid_profiles_and_reserved_names():
    with pytest.raises(TypeError, match="unknown parameter"):
        PaperSpec("x", "x.ipynb", "x", {"a": Param("int", 1, "a")}, {"smoke": {"b": 1}, "cpu": {}, "gpu": {}})
    with pytest.raises(ParamError):
        PaperSpec("x", "x.ipynb", "x", {"a": Param("int", 1, "a", min=0)}, {"smoke": {"a": -1}, "cpu": {}, "gpu": {}})
    with pytest.raises(TypeError, match="reserved"):
        PaperSpec("x", "x.ipynb", "x", {"seed": Param("int", 1, "a")}, {"smoke": {}, "cpu": {}, "gpu": {}})


def test_cross_parameter_checks_refuse_overrides_and_profiles_in_one_line(monkeypatch):
    def lo_below_hi(values):
        return None if values["lo"] < values["hi"] else f"parameter 'lo' ({values['lo']}) must be below 'hi' ({values['hi']})"

    params = {"lo": Param("int", 1, "lo"), "hi": Param("int", 5, "hi")}
    with pytest.raises(TypeError, match="profile 'cpu': parameter 'lo'"):
        PaperSpec("x", "x.ipynb", "x", params, {"smoke": {}, "cpu": {"lo": 9}, "gpu": {}}, checks=(lo_below_hi,))
    spec = PaperSpec("crosscheck", "x.ipynb", "x", params, {"smoke": {}, "cpu": {}, "gpu": {}}, checks=(lo_below_hi,))
    monkeypatch.setitem(config._REGISTRY.specs, "crosscheck", spec)  # registered for this test only
    assert config.resolve("crosscheck", "smoke", {"lo": 2}).lo == 2
    with pytest.raises(ParamError, match=r"^parameter 'lo' \(7\) must be below 'hi' \(5\)$"):
        config.resolve("crosscheck", "smoke", {"lo": 7})


@pytest.mark.parametrize("paper", config.available_papers())
def test_every_paper_spec_is_valid_and_its_notebook_exists(paper):
    spec = config.get_spec(paper)
    assert (config_notebooks := (pipeline_spec.Path(config.__file__).parent.parent / "notebooks" / spec.notebook)).exists(), config_notebooks
    for profile in config.PROFILES:
        config.resolve(paper, profile)


@pytest.mark.parametrize("paper", config.PAPERS)
def test_every_paper_has_the_same_shape(paper):
    """plots and sections named by the spec; modules under 500 lines; claims judged only in the notebook's
    section modules; a plain package ``__init__``."""
    import importlib

    spec = config.get_spec(paper)
    assert spec.plots == f"reproduce.{paper}.plots" and spec.sections == f"reproduce.{paper}.sections"
    plots, sections = importlib.import_module(spec.plots), importlib.import_module(spec.sections)
    assert plots.FIGURES and all(callable(f) for f in plots.FIGURES.values())
    assert isinstance(sections.PAPER, dict) and sections.PAPER, "the paper's numbers in one PAPER table"
    assert callable(sections.stable_values)
    assert not hasattr(importlib.import_module("reproduce.results"), "evaluate")  # claims go through reproduce.claims
    package = REPO_ROOT / "reproduce" / paper
    notebook = (REPO_ROOT / "notebooks" / spec.notebook).read_text(encoding="utf-8")
    imported = ",".join(re.findall(rf"from reproduce\.{paper} import ([\w, ]+)", notebook))
    shown = {"sections"} | {name.split(" as ")[0].strip() for name in imported.split(",")}
    for module in package.glob("*.py"):
        source = module.read_text(encoding="utf-8")
        assert len(source.splitlines()) <= 500, f"{module.name}: over 500 lines"
        if "run.claim(" in source:  # measurements live apart from the claims on them
            assert module.stem in shown, f"{module.name} judges claims but is no section module of the notebook"
    assert "__getattr__" not in (package / "__init__.py").read_text(encoding="utf-8")  # plain, eager


def test_overrides_accept_python_literals_as_written_in_the_parameters_cell():
    """-p t3_rows=['base'] was refused: only JSON ('["base"]') worked, and the message did not say so."""
    parsed = config.parse_overrides(["t3_rows=['base', 'A: h=1']", "budgets=(64, 128)", "try_flava_full=False",
                                     "rows=[base, A: h=4]", "seed=3", "model=smollm2"])
    assert parsed == {"t3_rows": ["base", "A: h=1"], "budgets": (64, 128), "try_flava_full": False,
                      "rows": ["base", "A: h=4"], "seed": 3, "model": "smollm2"}  # [base, ...]: the shell ate the quotes
    assert config.parse_overrides(['t3_rows=["base"]']) == {"t3_rows": ["base"]}  # JSON as before
    params = config.resolve("transformer", "smoke", config.parse_overrides(["t3_rows=['base']"]))
    assert params["t3_rows"] == ["base"]
    with pytest.raises(config.ParamError, match=r"""e\.g\. -p "t3_rows=\['base'\]"; JSON works too"""):
        config.resolve("transformer", "smoke", {"t3_rows": "base"})


def test_flava_micro_batches_are_checked_per_process_before_the_run(monkeypatch):
    """micro_batch is per process (reproduce.train.accumulation): a batch that splits on one GPU but not on
    two is refused when the parameters are resolved, not after data preparation and the untrained row."""
    values = {"batch_size": 12, "micro_batch": 4, "n_pairs": 64, "n_images": 64, "n_text": 64}
    assert config.resolve("flava", "smoke", values)["micro_batch"] == 4
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ParamError, match=r"micro_batch.*4 per process on 2 processes does not split batch_size 12; use one of \[2, 3, 6\]"):
        config.resolve("flava", "smoke", values)
