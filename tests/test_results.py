"""Result records, claims, provenance and atomic writes (reproduce/results.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import pipeline_spec  # noqa: F401
from conftest import subprocess_env
from reproduce import config, jsonio, results, runtime


def _run():
    return results.Run(config.resolve("pipeline", "smoke"))


def test_unknown_relation_missing_source_and_duplicate_ids_are_refused():
    run = _run()
    with pytest.raises(ValueError, match="relation"):
        run.claim("x", artifact="T", section="s", text="t", ours=1, relation="=>", threshold=1, source="ours: test")
    with pytest.raises(ValueError, match="source"):
        run.claim("x", artifact="T", section="s", text="t", ours=1, relation="<=", threshold=1, source="made up")
    with pytest.raises(TypeError):
        run.claim("x", artifact="T", section="s", text="t", ours=1, relation="<=", threshold=1)  # no source
    run.claim("x", artifact="T", section="s", text="t", ours=1, relation="<=", threshold=1, source="ours: test")
    with pytest.raises(ValueError, match="twice"):
        run.claim("x", artifact="T", section="s", text="t", ours=1, relation="<=", threshold=1, source="ours: test")


def test_record_has_provenance_and_converts_tensors(output_dir):
    run = _run()
    run.record("t", torch.tensor([1.0, 2.0]))
    run.record("scalar", torch.tensor(3.5))
    run.claim("c", artifact="Table 1", section="1", text="t", ours=torch.tensor(0.5), relation="<", threshold=1.0,
              source="paper: Table 1", paper=1.0)
    path = run.save()
    assert path == output_dir / "results" / "pipeline" / "smoke.json"
    data = json.loads(path.read_text())
    assert data["measured"] == {"t": [1.0, 2.0], "scalar": 3.5}
    claim = data["claims"][0]
    assert claim["verdict"] == "holds" and claim["ours"]["value"] == 0.5 and claim["source"] == "paper: Table 1"
    assert data["schema"] == results.SCHEMA_VERSION
    prov = data["provenance"]
    for key in ("git_commit", "git_dirty", "python", "packages", "device", "threads", "seed"):
        assert key in prov, key
    assert prov["packages"]["torch"].startswith("2.13.0")
    assert data["params"]["steps"] == 50 and data["wall_time_s"] >= 0
    assert "1 hold (1 claims)" in run.summary() and "[holds]" in run.summary()


def test_a_record_names_its_host_and_measures_its_speed(monkeypatch):
    """Hosts with one model name ran the same job 1.3x apart (calibration/transformer/t3_speed.md): a record of
    the cpu or gpu profile carries a speed yardstick, measured on one thread (the caller's threads restored)."""
    threads_seen, mm = [], torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: threads_seen.append(torch.get_num_threads()) or mm(a, b))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        speed = runtime.reference_speed(seconds=0.05)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert len(threads_seen) >= 5 and set(threads_seen) == {1}
    assert speed == {"matmul_gflops_1thread": speed["matmul_gflops_1thread"], "n": runtime.MATMUL_N}
    assert speed["matmul_gflops_1thread"] > 0
    calls = []
    monkeypatch.setattr(runtime, "reference_speed", lambda: calls.append(1) or {"matmul_gflops_1thread": 1.0})
    assert "cpu_speed" not in results.provenance(config.resolve("pipeline", "smoke"))  # tests stay fast
    assert results.provenance(config.resolve("transformer", "cpu"))["cpu_speed"] == {"matmul_gflops_1thread": 1.0}
    assert results.provenance({"profile": "gpu", "seed": 0})["cpu_speed"] == {"matmul_gflops_1thread": 1.0}
    assert calls == [1, 1]


def test_the_cpu_id_is_the_first_processors():
    two = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
           "stepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 0\n")
    assert results._cpu_id(results._cpu_fields(two)) == "family 26 model 2 stepping 1"
    assert results._cpu_id(results._cpu_fields("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n")) is None  # an ARM core


def test_same_seed_same_numbers():
    def compute():
        runtime.seed_everything(123)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = torch.randn(64, 8), torch.randn(64, 1)
        for _ in range(20):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item(), [p.detach().clone() for p in model.parameters()]

    (l1, w1), (l2, w2) = compute(), compute()
    assert l1 == l2
    assert all(torch.equal(a, b) for a, b in zip(w1, w2))


_SLOW_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from reproduce import results
    def stuck_fsync(fd):  # the new text is in the temporary file, not yet renamed into place
        print("writing", flush=True)
        time.sleep(60)
    os.fsync = stuck_fsync
    results.write_json_atomic(sys.argv[1], {"new": list(range(100000))})
    """
)


@pytest.mark.parametrize("phase", ["during_write", "before_write"])
def test_sigkill_leaves_previous_results_intact(tmp_path, phase):
    target = tmp_path / "results" / "pipeline" / "cpu.json"
    results.write_json_atomic(target, {"old": 1})
    code = _SLOW_WRITER if phase == "during_write" else "import time; print('writing', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert json.loads(target.read_text()) == {"old": 1}
    leftovers = [p for p in target.parent.iterdir() if p.name != "cpu.json"]
    assert all(p.name.startswith(".cpu.json.") for p in leftovers)  # at most a hidden temp file


def test_failed_write_leaves_no_temp_file_and_keeps_old(tmp_path):
    target = tmp_path / "r.json"
    results.write_json_atomic(target, {"old": 1})
    with pytest.raises(TypeError):
        results.write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_lists_of_numbers_take_one_line_and_read_back_the_same(tmp_path):
    value = {"curve": [1.5, 2.0, 3], "per_seed": [[1, 2], [3, 4]], "rows": [{"a": []}, {}], "empty": [], "name": "é",
             "nested": {"x": [True, None, "s"]}}
    target = tmp_path / "r.json"
    results.write_json_atomic(target, value)
    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == value
    assert '"curve": [1.5, 2.0, 3],' in text and "    [1, 2],\n    [3, 4]\n" in text and '"é"' in text
    keys = {7: "a", 2.5: "b", True: "c", None: "d"}
    assert json.loads(jsonio.dumps(keys)) == json.loads(json.dumps(keys)) == {"7": "a", "2.5": "b", "true": "c", "null": "d"}
    with pytest.raises(TypeError, match="keys must be str"):
        jsonio.dumps({(1, 2): 0})
    big = {"nll": [[float(i) for i in range(1000)] for _ in range(5)]}
    results.write_json_atomic(target, big)
    assert len(target.read_text().splitlines()) == 9  # {, "nll": [, five lists, ], }


def test_nan_measurements_are_stored_as_null(output_dir):
    run = _run()
    run.record("x", float("nan"))
    data = json.loads(run.save().read_text())
    assert data["measured"]["x"] is None


def test_load_first_takes_the_first_profile_with_results(tmp_path):
    for profile in ("cpu", "smoke"):
        (tmp_path / "pipeline").mkdir(exist_ok=True)
        (tmp_path / "pipeline" / f"{profile}.json").write_text(json.dumps({"profile": profile}))
    assert results.load_first("pipeline", ("gpu", "cpu", "smoke"), tmp_path)["profile"] == "cpu"
    assert results.load_first("pipeline", ("smoke", "cpu"), tmp_path)["profile"] == "smoke"
    assert results.load_first("pipeline", ("gpu",), tmp_path) is None
    assert results.load_first("nosuchpaper", ("cpu",), tmp_path) is None


def test_verdicts_are_a_table_in_a_notebook_and_text_on_the_command_line(tmp_path):
    """print(run.summary()) left a wall of text at the end of each notebook; run.verdicts() is a table."""
    import pipeline_spec  # noqa: F401

    from reproduce import config
    from reproduce.results import Run

    run = Run(config.resolve("pipeline", "smoke", {"output_dir": str(tmp_path)}))
    run.claim("loss_decreases", artifact="Eq. (1)", section="1. Fit", text="gradient descent lowers the loss", ours=0.5,
              relation="<", threshold=1.0, source="ours: a small step size decreases the loss", paper="monotone")
    run.claim("near_closed_form", artifact="Eq. (1)", section="2. Other", text="iterate is close to the closed form",
              ours=0.5, relation="<=", threshold=0.05, source="ours: 50 steps of this step size converge well within 0.05")
    html = run.verdicts()._repr_html_()
    assert html.count("<tr") == 3 and "holds" in html and "contradicted" in html and "#cf222e" in html  # coloured
    assert "gradient descent lowers the loss" in html and "0.5 &lt; 1" in html
    section = run.verdicts("1. Fit")
    assert section._repr_html_().count("<tr") == 2 and "1. Fit" in str(section)
    text = str(run.verdicts())
    assert text.startswith("pipeline/smoke: ") and "[contradicted] (check)" in text  # the command line keeps its text
    assert len(run.verdicts(new=True).records) == 2 and not run.verdicts(new=True).records  # since the last call
    assert len(run.verdicts("Eq. (1)").records) == 2  # an artifact
