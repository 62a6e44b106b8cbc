"""Every notebook runs with the smoke profile through plain papermill (results, figures), then nbval
runs the *source* notebook (its default profile is smoke) and compares its ``checked`` cell with the
committed output (``--nbval-lax``: only cells marked ``# NBVAL_CHECK_OUTPUT`` are compared). That
cell prints values that do not depend on the machine (paper tables, parameter and FLOP counts,
float64 checks), so a changed number in the code fails this test. New notebooks under notebooks/
are picked up by themselves.
"""

import ast
import json
import re
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest

from conftest import REPO_ROOT, subprocess_env
from reproduce import config, figures

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb")) + [REPO_ROOT / "tests" / "pipeline.ipynb"]
IDS = [p.stem for p in NOTEBOOKS]


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_source_is_clean(path):
    cells = _cells(path)
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"parameters cell holds assignments only, got {ast.dump(node)[:60]}"
        ast.literal_eval(node.value)  # literals only
    names = {t.id for node in tree.body for t in node.targets}
    assert "profile" in names
    spec = next((config.get_spec(p) for p in config.PAPERS if config.get_spec(p).notebook == path.name), None)
    if spec is not None:  # a paper notebook: every parameter of its spec, so that JupyterLab users see them all
        missing = sorted(set(spec.schema) - names)
        assert not missing, f"the parameters cell lacks {missing}"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "summary" in code[-1].get("metadata", {}).get("tags", []), "the last code cell is tagged 'summary'"
    assert "run.save()" in "".join(code[-1]["source"])
    checked = [c for c in code if "checked" in c.get("metadata", {}).get("tags", [])]
    assert len(checked) == 1, "exactly one cell tagged 'checked'"
    assert "".join(checked[0]["source"]).startswith("# NBVAL_CHECK_OUTPUT"), "the checked cell is compared by nbval"
    assert checked[0].get("outputs"), "the checked cell carries its committed output"
    for cell in code:
        if cell is not checked[0]:
            assert not cell.get("outputs"), f"outputs are stripped except the checked cell: {''.join(cell['source'])[:60]}"
        if path.parent.name == "notebooks":  # paper notebooks: every claim is made by reproduce.<paper>.sections
            assert not re.search(r"\bclaim\(", "".join(cell["source"])), f"a notebook cell makes a claim: {''.join(cell['source'])[:60]}"
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"/(?:work|home|tmp|root)/", text), "no absolute paths"
    assert not re.search(r"0x[0-9a-f]{8,}", text), "no memory addresses"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_with_papermill_and_validates_with_nbval(path, tmp_path):
    env = subprocess_env(REPRODUCE_OUTPUT_DIR=str(tmp_path / "out"))
    executed = tmp_path / path.name
    run = subprocess.run(
        [sys.executable, "-m", "papermill", str(path), str(executed), "-k", "python3", "-p", "profile", "smoke", "--cwd", str(path.parent)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    records = list((tmp_path / "out" / "results").glob("*/smoke.json"))
    assert records, "the notebook wrote its results record"
    paper = records[0].parent.name
    if paper in config.PAPERS:  # every figure of the paper, in both languages, from this run's results
        rendered = _render_every_figure(paper, json.loads(records[0].read_text())["measured"])
        assert rendered, f"reproduce.{paper}.FIGURES is empty"
    env = subprocess_env(REPRODUCE_OUTPUT_DIR=str(tmp_path / "nbval"))
    check = subprocess.run(  # the source notebook against its committed 'checked' output
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env", str(path)],
        capture_output=True, text=True, env=env, timeout=900, cwd=path.parent,
    )
    assert check.returncode == 0, check.stdout[-4000:]


def _render_every_figure(paper, measured):
    """Render each figure in English and Korean; fail on a missing glyph (tofu) or a blank canvas."""
    import logging
    import warnings

    class _Glyphs(logging.Handler):  # math text reports a missing glyph through logging
        def __init__(self):
            super().__init__()
            self.missing = []

        def emit(self, record):
            if "does not have a glyph" in record.getMessage():
                self.missing.append(record.getMessage())

    handler = _Glyphs()
    logging.getLogger("matplotlib").addHandler(handler)
    done = []
    for name in figures.plot_functions(paper):
        for lang in figures.LANGS:
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message=".*missing from font.*")
                fig = figures.render(paper, name, measured, lang=lang)
                fig.canvas.draw()
            pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            assert pixels.std() > 5, f"{name} ({lang}) is blank"
            plt.close(fig)
            done.append((name, lang))
            assert not handler.missing, f"{name} ({lang}): {handler.missing[0]}"
    logging.getLogger("matplotlib").removeHandler(handler)
    return done
