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


def test_memory_terms_are_named_and_add_up():
    o = plan.Overheads(trained_parameters=1000, autocast_parameters=1000, logits_fp32_bytes=123.0)
    assert plan.memory_terms(o) == {"CUDA context": plan.CUDA_CONTEXT_BYTES, "DDP gradient buckets": 0.0,
                                    "autocast weight copies": 2000, "fp32 logits copy": 123.0}
    assert plan.memory_terms(o, processes=2)["DDP gradient buckets"] == 4000  # a second copy of the fp32 gradients
    assert plan.memory_terms(o + o)["CUDA context"] == 2 * plan.CUDA_CONTEXT_BYTES  # two processes on one GPU
    section = plan.SectionPlan("s", "w", 10, 1e9, 0.0, overheads=o)
    section.add_memory_terms(processes=2)
    assert section.memory[plan.MODULE_TERM] == 1e9
    assert section.peak_bytes == sum(section.memory.values()) == 1e9 + plan.CUDA_CONTEXT_BYTES + 4000 + 2000 + 123
    with pytest.raises(ValueError, match="already"):
        section.add_memory_terms()
    cpu_only = plan.SectionPlan("c", "w", 0, 0.0, 0.0, overheads=o)  # a section that does not use the GPU
    cpu_only.add_memory_terms()
    assert cpu_only.peak_bytes == 0.0


def _by_section(paper, overrides=None, processes=1):
    verdict = plan.make(paper, config.resolve(paper, "smoke", overrides or {}), processes=processes)
    for s in verdict.sections:
        assert s.peak_bytes == pytest.approx(sum(s.memory.values()))
        if s.peak_bytes > 0:
            assert set(s.memory) == {plan.MODULE_TERM, "CUDA context", "DDP gradient buckets", "autocast weight copies",
                                     "fp32 logits copy"}
    return {s.section: s for s in verdict.sections}


def test_training_sections_declare_their_memory_terms():
    """bf16 autocast (precision='auto' on a GPU): copies of the trained weights; the fp32 logits cross-entropy reads;
    with 2 processes DDP's buckets; a CUDA context per process on the GPU."""
    from reproduce.flava import plan as flava_plan

    ctx = plan.CUDA_CONTEXT_BYTES
    p = config.resolve("transformer", "smoke")
    t = _by_section("transformer", processes=2)
    t2 = t["3. Table 2 recipe"]
    assert t2.memory["autocast weight copies"] == 2 * t2.parameters and t2.memory["DDP gradient buckets"] == 4 * t2.parameters
    assert t2.memory["fp32 logits copy"] == p.batch_tokens // p.grad_accum * p.vocab_size * 4
    assert t2.memory["CUDA context"] == ctx and t["4. Table 3 variations"].memory["CUDA context"] == 2 * ctx  # + its worker
    assert t["3b. decoding / BLEU"].memory["autocast weight copies"] == 0 == t["3b. decoding / BLEU"].memory["fp32 logits copy"]

    f = _by_section("flava")["2. Table 3: objective ablation"]
    sizes, fp = flava_plan.sizes_of(config.resolve("flava", "smoke")), config.resolve("flava", "smoke")
    micro = fp.micro_batch or fp.batch_size
    assert f.memory["autocast weight copies"] == 2 * f.parameters and f.memory["DDP gradient buckets"] == 0
    assert f.memory["fp32 logits copy"] == micro * max(sizes.max_text_len * sizes.vocab_size,
                                                       sizes.num_patches * sizes.codebook_size) * 4

    rp = config.resolve("retnet", "smoke")
    r = _by_section("retnet")["4./5. Language modelling (Tables 5, 6)"]
    assert r.memory["fp32 logits copy"] == (rp.lm_micro_batch or rp.lm_batch) * rp.lm_seq * rp.lm_vocab * 4
    assert 0 < r.memory["autocast weight copies"] <= 2 * r.parameters
    fp32 = _by_section("retnet", {"precision": "fp32"})
    assert fp32["4./5. Language modelling (Tables 5, 6)"].memory["autocast weight copies"] == 0
    assert fp32["3. Training cost (Table 4)"].memory["autocast weight copies"] == 0 < (
        _by_section("retnet")["3. Training cost (Table 4)"].memory["autocast weight copies"])

    for s in _by_section("tova").values():  # inference in the weights' dtype; the logits counted by the module
        assert s.memory.get("autocast weight copies", 0) == 0 == s.memory.get("fp32 logits copy", 0)
