"""``reproduce.doctor``: the whole doctor on the CPU at tiny sizes, a failing check among running ones, the
real-step measurement on CPU tensors, and ``plan --doctor`` using the measured MFU."""

import json
import math
import statistics
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, subprocess_env
from reproduce import config, doctor, plan
from reproduce.__main__ import main

NAMES = ["environment", "sdpa", "process group", *(f"tiny step: {p}" for p in config.PAPERS),
         *(f"real step: {p}" for p in config.PAPERS)]


def test_doctor_tiny_on_cpu_prints_its_table_and_writes_every_check(tmp_path):
    out = tmp_path / "doctor.json"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reproduce", "doctor", "--device", "cpu", "--tiny", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert wall < 120, f"doctor --tiny took {wall:.0f} s on the CPU (budget: 2 min)"
    assert "reproduce doctor" in done.stdout and "tiny step: flava" in done.stdout and f"wrote {out}" in done.stdout
    record = json.loads(out.read_text())
    assert record["schema"] == "doctor" and record["schema_version"] == doctor.SCHEMA_VERSION
    prov = record["provenance"]
    assert prov["git_commit"] and prov["host"] and prov["date"] and prov["device_type"] == "cpu" and prov["tiny"]
    checks = {c["name"]: c for c in record["checks"]}
    assert [c["name"] for c in record["checks"]] == NAMES
    for name, c in checks.items():
        assert c["status"] == ("skipped" if name.startswith("real step") else "ok"), (name, c["error"])
        assert c["seconds"] >= 0
    env = checks["environment"]["numbers"]
    assert env["versions"]["torch"] == torch.__version__ and env["cpu"]["cpu_count"] >= 1
    assert env["disk"]["repo"]["free_bytes"] > 0 and "HF_TOKEN_set" in env["hub"]
    assert checks["sdpa"]["numbers"]["backends"]["math"]["ok"]
    assert checks["process group"]["numbers"]["backend"] == "gloo"
    for paper in config.PAPERS:
        steps = checks[f"tiny step: {paper}"]["numbers"]["steps"]
        assert steps and all(math.isfinite(s["loss"]) for s in steps)
    assert [s["name"] for s in checks["tiny step: retnet"]["numbers"]["steps"]] == config.resolve("retnet", "gpu").variants
    assert checks["tiny step: tova"]["numbers"]["steps"][0]["streaming_vs_appendix_e_max_abs_nll_diff"] <= 1e-3
    assert checks["real step: retnet"]["error"] == "--tiny"


def test_a_raising_check_is_recorded_failed_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def broken(device):
        raise RuntimeError("no kernel\nfor you")

    monkeypatch.setattr(doctor, "check_sdpa", broken)
    torch.set_num_threads(1)
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--device", "cpu", "--tiny", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "1 check(s) failed: sdpa" in printed and "RuntimeError: no kernel for you" in printed
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    assert list(checks) == NAMES
    assert checks["sdpa"]["status"] == "failed" and checks["sdpa"]["error"] == "RuntimeError: no kernel for you"
    assert all(c["status"] in ("ok", "skipped") for name, c in checks.items() if name != "sdpa")
    assert checks["tiny step: tova"]["status"] == "ok"  # the checks after the failing one ran


def test_a_check_that_finds_a_problem_fails_with_its_reason():
    check = doctor.run_check("x", lambda: {"summary": "s", "failure": "no fused kernel", "n": 1})
    assert (check.status, check.error, check.numbers) == ("failed", "no fused kernel", {"n": 1})
    skipped = doctor.run_check("y", lambda: (_ for _ in ()).throw(doctor.Skipped("no GPU")))
    assert (skipped.status, skipped.error) == ("skipped", "no GPU")


@pytest.fixture(scope="module")
def tiny_llama_config(tmp_path_factory):
    """The tiny LLaMA's config.json in a folder: the tova gpu profile's ``model`` read by its plan."""
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("tiny_llama")
    LlamaConfig(**doctor.TOVA_TINY_LLAMA).save_pretrained(root)
    return root


@pytest.mark.parametrize("paper", config.PAPERS)
def test_real_step_measurement_on_cpu_tensors(paper, tiny_llama_config):
    """The real-shape path (the plan's largest step, its section, MFU and GPU-hours) at tiny sizes on the CPU."""
    torch.set_num_threads(1)
    overrides = dict(doctor.TINY[paper]) | ({"model": str(tiny_llama_config)} if paper == "tova" else {})
    params = config.resolve(paper, "gpu", overrides)
    gpu = plan.GPUS["h100-80gb"]
    out = doctor.measure_step(paper, params, torch.device("cpu"), gpu, warmup=1, timed=2)
    verdict = plan.make(paper, params, gpu.name)
    section = next(s for s in verdict.sections if s.section == out["section"])
    assert out["predicted_peak_bytes"] == section.peak_bytes > 0 and math.isfinite(out["loss"])
    assert len(out["step_times_s"]) == 3 and out["step_s"] == statistics.median(out["step_times_s"][1:]) > 0
    assert out["mfu"] == pytest.approx(out["step_flops"] / out["step_s"] / (gpu.bf16_tflops * 1e12))
    assert out["gpu_hours_assumed_mfu"] == pytest.approx(verdict.gpu_hours)
    assert out["gpu_hours_measured_mfu"] == pytest.approx(sum(s.gpu_hours(gpu, out["mfu"]) for s in verdict.sections))
    assert out["gpu_hours_measured_mfu"] > out["gpu_hours_assumed_mfu"]  # a CPU is far below 40 % of an H100
    if paper == "retnet":  # the variant the section's peak comes from
        assert out["what"].startswith(section.notes.removeprefix("largest step: ").split(";")[0] + " LM")


@pytest.mark.parametrize("name, memory, expected", [
    ("NVIDIA H100 80GB HBM3", 85e9, "h100-80gb"), ("NVIDIA A100-SXM4-40GB", 42e9, "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", 85e9, "a100-80gb"), ("NVIDIA H200", 150e9, "h200-141gb"), ("NVIDIA L40S", 48e9, "l40s-48gb"),
    ("NVIDIA GeForce RTX 4090", 25e9, "rtx4090-24gb"), ("NVIDIA H100 PCIe", 85e9, None), ("Tesla V100-SXM2-16GB", 16e9, None),
])
def test_gpu_names_match_the_plan_table(name, memory, expected):
    gpu = plan.match_gpu(name, memory)
    assert (gpu.name if gpu else None) == expected


def _doctor_file(path, mfu):
    record = {"schema": "doctor", "schema_version": doctor.SCHEMA_VERSION, "provenance": {}, "wall_time_s": 1.0,
              "checks": [{"name": "real step: retnet", "status": "ok", "seconds": 1.0, "summary": "", "error": "",
                          "numbers": {"mfu": mfu, "gpu": "h100-80gb", "section": "4./5. Language modelling (Tables 5, 6)"}},
                         {"name": "real step: tova", "status": "skipped", "seconds": 0.0, "summary": "", "error": "--tiny",
                          "numbers": {}}]}
    path.write_text(json.dumps(record))
    return path


def test_plan_with_a_doctor_file_scales_gpu_hours_by_the_mfu_ratio(tmp_path, monkeypatch, capsys):
    sections = lambda paper, params: [plan.SectionPlan("s", "w", 10, 1e9, flops=1e21, other_hours=0.5)]  # noqa: E731
    monkeypatch.setattr(plan, "paper_plan", sections)

    def hours(*extra):
        assert main(["plan", "retnet", "--profile", "smoke", "--gpu", "h100-80gb", *extra]) == 0
        printed = capsys.readouterr().out
        line = next(line for line in printed.splitlines() if line.startswith("retnet: "))
        return float(line.split()[1]), line

    assumed, line = hours()
    assert "at MFU 0.40 (assumed)" in line
    measured, line = hours("--doctor", str(_doctor_file(tmp_path / "d.json", 0.2)))
    assert "at MFU 0.20 (measured by doctor on h100-80gb" in line
    assert (measured - 0.5) / (assumed - 0.5) == pytest.approx(plan.MFU / 0.2, rel=1e-3)
    assert measured == pytest.approx(1e21 / (0.2 * 989e12) / 3600 + 0.5, abs=0.05)
    # a paper the doctor did not measure keeps the assumed MFU, and says so
    assert main(["plan", "tova", "--profile", "smoke", "--doctor", str(tmp_path / "d.json")]) == 0
    assert "at MFU 0.40 (assumed: " in capsys.readouterr().out


def test_plan_refuses_a_file_that_is_not_a_doctor_result(tmp_path, capsys):
    bad = tmp_path / "record.json"
    bad.write_text(json.dumps({"paper": "retnet", "claims": []}))
    assert main(["plan", "retnet", "--profile", "smoke", "--doctor", str(bad)]) == 2
    assert "not a doctor file" in capsys.readouterr().err
    assert doctor.measured_mfu(doctor.load(_doctor_file(tmp_path / "d.json", 0.3))) == {
        "retnet": {"mfu": 0.3, "gpu": "h100-80gb", "section": "4./5. Language modelling (Tables 5, 6)"}}
