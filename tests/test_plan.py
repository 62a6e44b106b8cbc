"""``reproduce.plan``: the memory model checked against a CPU measurement, and the ``plan`` command for
every paper's gpu profile (every section fits an 80 GB GPU; the README table is what it prints)."""

import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, subprocess_env
from reproduce import config, plan


def _encoder(d=64, layers=2):
    return torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True),
                                       layers, enable_nested_tensor=False)


def _mlp(d=64):
    return torch.nn.Sequential(torch.nn.Embedding(50, d), torch.nn.LayerNorm(d), torch.nn.Linear(d, 4 * d),
                               torch.nn.GELU(), torch.nn.Linear(4 * d, d), torch.nn.Dropout(0.1))


def _saved_on_cpu(model, x):
    with plan.count_saved() as saved:
        model(x).square().mean()
    return saved.bytes


def test_meta_step_saves_what_a_real_cpu_step_saves():
    """The meta-device count of saved activations equals the bytes autograd saves for the same step on CPU."""
    cost = plan.step_cost(_mlp, lambda m: m(torch.zeros(3, 10, dtype=torch.long, device="meta")).square().mean())
    model = _mlp()
    assert cost.saved_bytes == _saved_on_cpu(model, torch.randint(0, 50, (3, 10))) > 0
    assert cost.parameters == sum(p.numel() for p in model.parameters())


def test_meta_attention_is_an_upper_bound():
    """SDPA on the meta device takes the math kernel (it saves the T x T weights); a fused kernel saves less."""
    cost = plan.step_cost(_encoder, lambda m: m(torch.zeros(3, 10, 64, device="meta")).square().mean())
    assert cost.saved_bytes >= _saved_on_cpu(_encoder(), torch.randn(3, 10, 64))


def test_gpu_hours_follow_flops_and_mfu():
    section = plan.SectionPlan("s", "w", 10, 1e9, flops=plan.MFU * 312e12 * 3600, other_hours=0.5)
    assert section.gpu_hours(plan.GPUS["a100-80gb"]) == pytest.approx(1.5)
    assert plan.human_bytes(81.2e9) == "81.2 GB" and plan.human_count(1.3e9) == "1.30B"


def test_plan_refuses_an_unknown_gpu():
    out = subprocess.run([sys.executable, "-m", "reproduce", "plan", "retnet", "--gpu", "tpu-v5"], env=subprocess_env(),
                         capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 2 and "unknown GPU 'tpu-v5'" in out.stderr


@pytest.mark.slow
def test_every_gpu_profile_fits_80_gb_and_prints_the_readme_table():
    out = subprocess.run([sys.executable, "-m", "reproduce", "plan", "all", "--profile", "gpu", "--gpu", "a100-80gb",
                          "--markdown"], env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=600, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = out.stdout[out.stdout.index("| notebook | GPU |"):].strip()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == list(config.PAPERS)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README's GPU table is the one `plan all --markdown` prints (paste it again)"
    for paper in config.PAPERS:
        hours = re.search(rf"^{paper}: ([\d.]+) GPU-hours", out.stdout, re.M)
        assert hours and float(hours.group(1)) > 0
