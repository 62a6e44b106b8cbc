"""The command line (python -m reproduce) and the papermill runner, on the runner's test notebook."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, subprocess_env

SPECS = {"REPRODUCE_SPECS": "pipeline_spec"}


def cli(*args, env=None, timeout=300, python_flags=()):
    return subprocess.run([sys.executable, *python_flags, "-m", "reproduce", *args], capture_output=True, text=True,
                          env=subprocess_env(**SPECS, **(env or {})), cwd=REPO_ROOT, timeout=timeout)


def _split_importtime(stderr: str) -> tuple[list[str], set[str]]:
    """stderr of ``python -X importtime``: (the other lines, the top-level names of every module imported)."""
    lines, imported = [], set()
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name != "imported package":  # the header line
                imported.add(name.split(".")[0])
        elif line.strip():
            lines.append(line)
    return lines, imported


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "nosuchpaper"], "unknown paper 'nosuchpaper'"),
        (["run", "pipeline", "--profile", "huge"], "unknown profile 'huge'"),
        (["run", "pipeline", "-p", "steps=-1"], "parameter 'steps': -1 is not allowed; expected int in [1, 100000]"),
        (["run", "pipeline", "-p", "stpes=3"], "did you mean 'steps'?"),
        (["run", "pipeline", "-p", "steps"], "not of the form key=value"),
    ],
)
def test_bad_input_exits_2_fast_with_one_line_and_writes_nothing(tmp_path, args, expected):
    """Fast = the input is refused before anything heavy: torch and papermill are never imported (no kernel starts)."""
    out = tmp_path / "out"
    proc = cli(*args, "--output-dir", str(out), python_flags=("-X", "importtime"))
    assert proc.returncode == 2, proc.stderr
    lines, imported = _split_importtime(proc.stderr)
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "reproduce" in imported  # the import log is read right, so the next line is not vacuous
    assert not imported & {"torch", "papermill", "nbclient", "jupyter_client", "transformers"}, sorted(imported)
    assert not out.exists()


def test_validation_does_not_import_torch():
    code = ("import sys; from reproduce.__main__ import main; "
            "rc = main(['run', 'pipeline', '-p', 'stpes=3']); assert rc == 2; "
            "assert 'torch' not in sys.modules and 'papermill' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(**SPECS))
    assert proc.stdout.strip() == "ok", proc.stderr


def test_list_shows_every_parameter_with_default_range_and_help():
    proc = cli("list", "pipeline")
    assert proc.returncode == 0, proc.stderr
    for text in ("steps", "int", "default 200", "smoke=50", "in [1, 100000]", "gradient-descent steps", "seed", "device"):
        assert text in proc.stdout, text


@pytest.mark.slow
def test_run_executes_notebook_and_writes_results_without_touching_source(tmp_path):
    source = REPO_ROOT / "tests" / "pipeline.ipynb"
    before = source.read_bytes()
    out = tmp_path / "out"
    proc = cli("run", "pipeline", "--profile", "smoke", "-p", "steps=30", "--output-dir", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "results" / "pipeline" / "smoke.json").read_text())
    assert record["params"]["steps"] == 30 and len(record["measured"]["fit.losses"]) == 30
    assert "-p steps=30" in record["command"]
    assert record["params"]["output_dir"] == str(out.resolve())  # the folder travels as a parameter, not an env var
    assert all(c["verdict"] == "holds" for c in record["claims"])
    executed = list((out / "runs" / "pipeline").glob("smoke-*.ipynb"))
    assert len(executed) == 1
    assert (out / "runs" / "figures" / "pipeline" / "pipeline_loss.png").exists()  # smoke figures stay out of figures/
    assert source.read_bytes() == before
    assert "pipeline" in proc.stdout and "ok" in proc.stdout  # the summary table


@pytest.mark.slow
def test_failing_cell_is_reported_with_source_error_and_path(tmp_path):
    out = tmp_path / "out"
    proc = cli("run", "pipeline", "-p", "fail=true", "--output-dir", str(out), "--no-progress")
    assert proc.returncode == 1
    assert "RuntimeError: deliberate failure asked for by fail=True" in proc.stderr
    assert "if params.fail:" in proc.stderr  # the failing cell's source
    assert "executed notebook:" in proc.stderr and str(out / "runs" / "pipeline") in proc.stderr
    assert not (out / "results" / "pipeline" / "smoke.json").exists()


@pytest.mark.slow
def test_sigkill_during_execution_keeps_earlier_results(tmp_path):
    out = tmp_path / "out"
    earlier = out / "results" / "pipeline" / "smoke.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"earlier": true}')
    proc = subprocess.Popen([sys.executable, "-m", "reproduce", "run", "pipeline", "-p", "steps=100000",
                             "--output-dir", str(out), "--no-progress"], env=subprocess_env(**SPECS), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while not list((out / "runs").glob("pipeline/*.ipynb")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the kernel is starting or executing cells
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert json.loads(earlier.read_text()) == {"earlier": True}


def test_plain_papermill_works_on_a_paper_notebook_too():
    """`papermill notebooks/X.ipynb out.ipynb -p profile smoke` needs no CLI: covered per notebook in test_notebooks."""
    import papermill

    params = papermill.inspect_notebook(str(REPO_ROOT / "tests" / "pipeline.ipynb"))
    assert params["profile"]["default"] == '"smoke"'


def _record(tmp_path, name, verdict_value):
    """A schema-current record of the pipeline paper with one noisy and one exact claim."""
    import pipeline_spec  # noqa: F401
    from reproduce import claims, config, results

    run = results.Run(config.resolve("pipeline", "smoke"))
    run.claim("gap", artifact="T", section="s", text="A beats B", ours=claims.Estimate(verdict_value, verdict_value - 0.5,
              verdict_value + 0.5, "test", 3), relation=">", threshold=0.0, source="ours: test")
    run.claim("exact", artifact="T", section="s", text="forms equal", ours=1e-12, relation="<=", threshold=1e-10,
              source="ours: float64")
    return run.save(tmp_path / name)


def test_compare_a_record_with_itself_exits_0(tmp_path):
    path = _record(tmp_path, "a.json", 2.0)
    proc = cli("compare", "pipeline", str(path), "--against", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 2 verdicts agree" in proc.stdout


def test_compare_names_a_flipped_verdict_and_exits_1(tmp_path):
    ref = _record(tmp_path, "ref.json", 2.0)  # holds
    data = json.loads(ref.read_text())
    gap = next(c for c in data["claims"] if c["id"] == "gap")
    gap["ours"].update(value=0.1, low=-0.4, high=0.6)  # the same claim, now inconclusive (its stored verdict
    new = tmp_path / "new.json"  # still says "holds": compare judges the numbers)
    new.write_text(json.dumps(data))
    proc = cli("compare", "pipeline", str(new), "--against", str(ref))
    assert proc.returncode == 1
    assert "1 verdict(s) differ: gap" in proc.stdout
    assert "holds" in proc.stdout and "inconclusive" in proc.stdout and "[-0.4, 0.6]" in proc.stdout


@pytest.mark.parametrize("problem", ["missing", "other_paper", "old_schema", "not_json"])
def test_compare_bad_input_exits_2_with_one_line(tmp_path, problem):
    ref = _record(tmp_path, "ref.json", 2.0)
    bad = tmp_path / "bad.json"
    data = json.loads(ref.read_text())
    if problem == "other_paper":
        data["paper"] = "retnet"
    if problem == "old_schema":
        data["schema"] = 1
    if problem != "missing":
        bad.write_text("{not json" if problem == "not_json" else json.dumps(data))
    proc = cli("compare", "pipeline", str(bad), "--against", str(ref))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    expected = {"missing": "no such results file", "other_paper": "not of 'pipeline'", "old_schema": "schema 1",
                "not_json": "invalid JSON"}[problem]
    assert expected in lines[0]
