"""RetNet: the three forms agree exactly, the LM decodes with its state, configs refuse nonsense.

Equivalence tests run in float64 with a negligible norm eps (the §2.2 normalisers are exact in
every form, so agreement is to rounding: ~1e-14).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reproduce import retnet as rn

EXACT = 1e-10  # float64: the forms agree to ~1e-14; anything above 1e-10 is a bug, not rounding


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _qkv(b=2, h=3, t=10, k=4, v=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = lambda d: (b, h, t, d)  # noqa: E731
    return (torch.randn(*shape(k), generator=g, dtype=torch.float64),
            torch.randn(*shape(k), generator=g, dtype=torch.float64),
            torch.randn(*shape(v), generator=g, dtype=torch.float64))


def _tiny_config(**overrides) -> rn.RetNetConfig:
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_heads=4, chunk_size=3, norm_eps=1e-12)
    return rn.RetNetConfig(**{**base, **overrides})


# --- retention: parallel == recurrent == chunkwise -------------------------------------------------
@pytest.mark.parametrize("schedule", ["paper", "eq8", "single", "none"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 4, 10])  # 1, 3, 4 (10 % 4 != 0) and chunk = length
def test_three_forms_agree(schedule, normalize, chunk):
    q, k, v = _qkv()
    gamma = rn.decay_rates(q.shape[1], schedule)
    empty = rn.RetentionState.zeros(q.shape[0], gamma, q.shape[-1], v.shape[-1], like=q)
    parallel = rn.retention_parallel(q, k, v, gamma, normalize)
    recurrent, s_rec = rn.retention_recurrent(q, k, v, gamma, empty, 0, normalize)
    chunkwise, s_chunk = rn.retention_chunkwise(q, k, v, gamma, chunk, empty, 0, normalize)
    assert (parallel - recurrent).abs().max() < EXACT
    assert (parallel - chunkwise).abs().max() < EXACT
    assert (s_rec.kv - s_chunk.kv).abs().max() < EXACT
    assert (s_rec.key_sum - s_chunk.key_sum).abs().max() < EXACT


def test_chunkwise_continues_from_a_state():
    """Split a sequence anywhere: chunkwise(first part) then chunkwise(rest, state) == parallel(all)."""
    q, k, v = _qkv(t=13)
    gamma = rn.decay_rates(3)
    empty = rn.RetentionState.zeros(2, gamma, 4, 8, like=q)
    whole = rn.retention_parallel(q, k, v, gamma)
    first, state = rn.retention_chunkwise(q[:, :, :5], k[:, :, :5], v[:, :, :5], gamma, 2, empty, 0)
    rest, _ = rn.retention_chunkwise(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], gamma, 3, state, 5)
    assert (torch.cat([first, rest], dim=2) - whole).abs().max() < EXACT


def test_gamma_one_without_normalisation_is_causal_linear_attention():
    q, k, v = _qkv(t=7)
    gamma = rn.decay_rates(3, "none")
    naive = torch.zeros_like(v)
    for n in range(q.shape[2]):  # o_n = sum_{m <= n} (q_n . k_m) v_m
        for m in range(n + 1):
            naive[:, :, n] += (q[:, :, n] * k[:, :, m]).sum(-1, keepdim=True) * v[:, :, m]
    assert (rn.retention_parallel(q, k, v, gamma, normalize=False) - naive).abs().max() < EXACT


def test_decay_schedules_match_the_paper():
    paper = rn.decay_rates(8, "paper")
    assert paper[0].item() == pytest.approx(1 - 1 / 32) and paper[-1].item() == pytest.approx(1 - 1 / 512)
    assert rn.decay_rates(4, "eq8").tolist() == pytest.approx([1 - 2**-5, 1 - 2**-6, 1 - 2**-7, 1 - 2**-8])
    mask = rn.decay_mask(torch.tensor([0.5], dtype=torch.float64), 3)[0]
    assert mask.tolist() == [[1, 0, 0], [0.5, 1, 0], [0.25, 0.5, 1]]


def test_rotation_makes_scores_relative():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64)
    score = lambda n, m: (rn.rotate(q, torch.tensor([n])) * rn.rotate(k, torch.tensor([m]))).sum()  # noqa: E731
    assert score(7, 3).item() == pytest.approx(score(104, 100).item(), abs=1e-12)
    assert score(7, 3).item() != pytest.approx(score(7, 5).item(), abs=1e-6)


def test_recurrent_state_bytes_do_not_depend_on_length():
    model = rn.RetNetForCausalLM(_tiny_config()).eval()
    sizes = []
    for length in (4, 64):
        with torch.no_grad():
            cache = model(torch.randint(0, 99, (2, length)), use_cache=True).cache
        sizes.append(cache.nbytes)
        assert cache.get_seq_length() == length
    c = model.config
    assert sizes[0] == sizes[1] == c.num_hidden_layers * 2 * c.num_heads * c.key_dim * (c.value_dim + 1) * 4


# --- the LM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant",
    [{}, {"use_gate": False}, {"head_norm": "none"}, {"decay": "none"}, {"decay": "single"}, {"num_heads": 8},
     {"head_norm": "rmsnorm"}],
    ids=["full", "no-gate", "no-groupnorm", "gamma-1", "one-gamma", "small-heads", "rmsnorm"],
)
def test_lm_parallel_equals_token_by_token_decode(variant):
    torch.manual_seed(0)
    model = rn.RetNetForCausalLM(_tiny_config(**variant)).double().eval()
    ids = torch.randint(0, 99, (2, 11))
    with torch.no_grad():
        parallel = model(ids, mode="parallel").logits
        chunkwise = model(ids, mode="chunkwise").logits
        cache, steps = None, []
        for t in range(ids.shape[1]):  # one recurrent step per token, state carried in the cache
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True, mode="recurrent")
            cache = out.cache
            steps.append(out.logits)
    assert (parallel - torch.cat(steps, dim=1)).abs().max() < EXACT
    assert (parallel - chunkwise).abs().max() < EXACT


def test_generate_equals_greedy_recomputation_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = rn.RetNetForCausalLM(_tiny_config()).double().eval()
    prompt = torch.randint(0, 99, (2, 5))
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    greedy = prompt
    with torch.no_grad():
        for _ in range(8):  # re-run the parallel form on the whole prefix every step
            nxt = model(greedy, mode="parallel").logits[:, -1].argmax(-1, keepdim=True)
            greedy = torch.cat([greedy, nxt], dim=1)
    assert torch.equal(generated, greedy)

    model.save_pretrained(tmp_path)
    loaded = rn.RetNetForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    drop = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731  (where it was loaded from)
    assert drop(loaded.config.to_dict()) == drop(model.config.to_dict())
    with torch.no_grad():
        # same weights bit for bit; the logits may differ by one rounding (tensor layout after loading)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
        assert (loaded(prompt, mode="parallel").logits - model(prompt, mode="parallel").logits).abs().max() < EXACT


def test_training_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    model = rn.RetNetForCausalLM(_tiny_config())
    ids = torch.randint(0, 99, (2, 9))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 99), ids[:, 1:].reshape(-1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_paper_1_3b_shape_on_meta_device():
    """Table 2: 1.3B = hidden 2048, 24 layers; §3.1: d_k = 256 (8 heads); 12 d^2 per block."""
    config = rn.RetNetConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.key_dim) == (2048, 24, 256)
    with torch.device("meta"):
        model = rn.RetNetForCausalLM(config)
    blocks = sum(p.numel() for p in model.model.layers.parameters() if p.dim() == 2)
    assert blocks == 24 * 12 * 2048**2
    assert rn.count_parameters(model) == pytest.approx(1.3e9, rel=0.03)


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, message",
    [
        ({"decay": "linear"}, "decay"),
        ({"head_norm": "layernorm"}, "head_norm"),
        ({"hidden_size": 30, "num_heads": 4}, "multiple"),
        ({"num_heads": 0}, "num_heads"),
        ({"forward_mode": "recurrent"}, "forward_mode"),
        ({"hidden_siz": 3}, "hidden_siz"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"hidden_size": 12, "num_heads": 4}, "even key dim"),
    ],
)
def test_config_refuses_nonsense(bad, message):
    with pytest.raises(Exception, match=message):
        _tiny_config(**bad)


def test_lm_refuses_bad_calls():
    model = rn.RetNetForCausalLM(_tiny_config()).eval()
    ids = torch.randint(0, 99, (1, 4))
    with pytest.raises(ValueError, match="mode"):
        model(ids, mode="sideways")
    with pytest.raises(ValueError, match="parallel form keeps no state"):
        model(ids, mode="parallel", use_cache=True)
    with pytest.raises(ValueError, match="padding"):
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(ValueError, match="decay schedule"):
        rn.decay_rates(4, "fast")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="chunk_size"):
        rn.retention_chunkwise(q, k, v, rn.decay_rates(3), 0, rn.RetentionState.zeros(2, rn.decay_rates(3), 4, 8, q), 0)


# --- experiments ----------------------------------------------------------------------------------
def test_every_lm_row_has_twelve_d_squared_per_block_except_pure_ablations():
    from reproduce.retnet import experiments as ex

    shape = ex.LMShape(vocab_size=64, hidden_size=48, num_layers=2, num_heads=4)
    block_params = {}
    for variant in ex.VARIANTS:
        model = ex.build_model(shape, variant, seed=0)
        layers = model.model.layers
        block_params[variant] = sum(p.numel() for p in layers.parameters() if p.dim() == 2)
    per_block = 12 * 48**2 * 2
    for variant in ("retnet", "linear_attention", "no_groupnorm", "no_decay", "single_decay", "small_heads"):
        assert block_params[variant] == per_block, variant
    assert block_params["no_gate"] == per_block - 2 * 2 * 48**2  # the gate's 2 d^2 per block, removed
    assert abs(block_params["transformer"] - per_block) <= 2 * 3 * 48  # SwiGLU I = round(8d/3)


def test_decode_cost_memory_is_flat_for_retnet_and_linear_for_kv_cache():
    from reproduce.retnet import experiments as ex

    shape = ex.LMShape(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2)
    rows = ex.decode_cost(shape, [8, 32], batch=2, steps=1, warmup=0)
    summary = ex.decode_summary(rows)
    assert summary["retnet_memory_growth"] == 1.0
    assert summary["transformer_memory_growth"] == 4.0


def test_experiment_inputs_are_checked():
    from reproduce.retnet import experiments as ex

    shape = ex.LMShape(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="unknown variant"):
        ex.train_language_models(None, shape, ["retnet", "mamba"], [0])
    with pytest.raises(ValueError, match="fraction"):
        ex.load_corpus(300, "novels", fraction=0)
    with pytest.raises(ValueError, match="unknown text source"):
        ex.load_corpus(300, "c4")
    with pytest.raises(ValueError, match="fewer than one window"):
        ex.perplexity(rn.RetNetForCausalLM(_tiny_config()), np.arange(10), length=16, windows=4)


def test_block_fields_come_from_the_config_and_build_the_same_block():
    from types import SimpleNamespace

    from reproduce.retnet import experiments as ex
    from reproduce.retnet.retention import MSR_FIELDS, RetNetBlock

    fields = ex.block_fields(32, 2, 16)
    assert set(fields) == set(MSR_FIELDS)
    config = rn.RetNetConfig(hidden_size=32, num_heads=2, chunk_size=16)
    torch.manual_seed(0)
    a = RetNetBlock(SimpleNamespace(**fields))
    torch.manual_seed(0)
    b = RetNetBlock(config)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_variants_are_declared_once():
    from reproduce.configs.retnet import SPEC, VARIANTS
    from reproduce.retnet import experiments as ex
    from reproduce.retnet import sections

    assert tuple(ex.VARIANTS) == tuple(VARIANTS) == tuple(SPEC.params["variants"].choices)
    assert set(ex.TABLE5) | set(ex.ABLATIONS) == set(VARIANTS) and not set(ex.TABLE5) & set(ex.ABLATIONS)
    assert set(sections.PAPER["ppl_200m"]) == set(VARIANTS)


# --- claim logic of every section, on synthetic measurements ----------------------------------------
class _Params(dict):
    __getattr__ = dict.__getitem__


def _run():
    from reproduce import results

    return results.Run(_Params(paper="retnet", profile="smoke", seed=0, overrides={}))


def _verdicts(run) -> dict:
    return {c.id: c.verdict for c in run.claims}


def _lm_runs(ppl: dict[str, list[float]]) -> list[dict]:
    return [{"variant": v, "seed": s, "valid_ppl": x, "params": 1000} for v, xs in ppl.items() for s, x in enumerate(xs)]


def test_forms_claim_holds_below_rounding_and_is_contradicted_above():
    from reproduce.retnet import sections

    rows = [{"compared": "parallel vs recurrent", "chunk": None, "max_abs_diff": 3e-15},
            {"compared": "parallel vs chunkwise", "chunk": 4, "max_abs_diff": 1e-14}]
    run = _run()
    sections.claim_forms(run, rows)
    assert _verdicts(run) == {"forms_equal": "holds"}
    assert run.claims[0].source.startswith("ours:") and not run.claims[0].ours.noisy
    run = _run()
    sections.claim_forms(run, rows + [{"compared": "parallel vs chunkwise", "chunk": 9, "max_abs_diff": 2e-3}])
    assert _verdicts(run) == {"forms_equal": "contradicted"}
    assert sections.stable_values(run)["claims"] == {"forms_equal": "<= 1e-10"}


def _decode_rows(retnet_short, retnet_long, transformer_long, state=(1024, 1024), kv=(4096, 16384)):
    rows = []
    for model, length, steps, nbytes in (("retnet", 16, retnet_short, state[0]), ("transformer", 16, retnet_short, kv[0]),
                                         ("retnet", 64, retnet_long, state[1]), ("transformer", 64, transformer_long, kv[1])):
        rows.append({"model": model, "length": length, "batch": 2, "latency_ms": float(np.median(steps)),
                     "step_ms": list(steps), "memory_bytes": nbytes})
    return rows


def test_inference_cost_claims_hold_are_contradicted_or_inconclusive():
    from reproduce.retnet import sections

    flat = [1.00, 1.02, 0.98, 1.01, 0.99, 1.00, 1.03, 0.97]
    run = _run()  # flat RetNet, Transformer 10x slower at the longest length, bytes flat / linear
    sections.claim_inference_cost(run, _decode_rows(flat, flat, [10 * x for x in flat]))
    assert _verdicts(run) == {"fig6_retnet_latency_flat": "holds", "fig6_speedup": "holds",
                              "fig6_state_flat": "holds", "fig6_kv_linear": "holds"}
    assert run.claims[0].ours.noisy and run.claims[0].ours.n == len(flat)  # paired bootstrap over rounds
    assert not run.claims[2].ours.noisy and not run.claims[3].ours.noisy  # byte ratios are exact

    run = _run()  # RetNet latency doubles, the Transformer is no faster than RetNet; state grows, KV does not
    sections.claim_inference_cost(run, _decode_rows(flat, [2 * x for x in flat], [2 * x for x in flat],
                                                    state=(1024, 2048), kv=(4096, 4096)))
    assert set(_verdicts(run).values()) == {"contradicted"}

    run = _run()  # one noisy round at 1.1x, one at 1.3x: the interval straddles 1.2
    sections.claim_inference_cost(run, _decode_rows([1.0, 1.0], [1.1, 1.3], [10.0, 10.0]))
    assert _verdicts(run)["fig6_retnet_latency_flat"] == "inconclusive"


def _training_rows(chunkwise_mib, attention_mib, parallel_mib, chunkwise_tps, attention_tps):
    rows = []
    for length in (32, 64):
        for kind, mib, tps in (("parallel", parallel_mib, 100.0), ("chunkwise", chunkwise_mib, chunkwise_tps),
                               ("attention", attention_mib, attention_tps)):
            rows.append({"kind": kind, "length": length, "tokens_per_s": tps, "peak_mib": mib, "hwm_reset": True})
    return rows


def test_training_cost_claims_memory_exact_throughput_over_timed_steps():
    from reproduce.retnet import sections

    run = _run()
    sections.claim_training_cost(run, _training_rows(10.0, 20.0, 40.0, 200.0, 100.0))
    assert set(_verdicts(run).values()) == {"holds"}
    assert all(not c.ours.noisy and "single" in c.note for c in run.claims)  # rows without step times
    rows = _training_rows(10.0, 20.0, 40.0, 200.0, 100.0)
    for r in rows:  # attention steps take ~2x the chunkwise ones: the ratio's interval sits above 1
        r["step_s"] = {"attention": [0.20, 0.21, 0.19, 0.20], "chunkwise": [0.10, 0.11, 0.10, 0.09]}.get(r["kind"], [0.1] * 4)
    run = _run()
    sections.claim_training_cost(run, rows)
    tput = next(c for c in run.claims if c.id == "table4_throughput_vs_attention")
    assert tput.ours.noisy and tput.ours.low > 1.0 and tput.verdict == "holds"
    assert tput.ours.value == pytest.approx(0.2 / 0.1)
    for r in rows:  # overlapping step times: inconclusive
        if r["kind"] == "chunkwise":
            r["step_s"] = [0.10, 0.30, 0.12, 0.25]
    run = _run()
    sections.claim_training_cost(run, rows)
    assert next(c for c in run.claims if c.id == "table4_throughput_vs_attention").verdict == "inconclusive"
    run = _run()
    sections.claim_training_cost(run, _training_rows(30.0, 20.0, 20.0, 50.0, 100.0))
    assert set(_verdicts(run).values()) == {"contradicted"}
    assert {c.source.split(":")[0] for c in run.claims} == {"paper"}


def test_language_modelling_claims_are_paired_by_seed():
    from reproduce.retnet import sections

    run = _run()  # RetNet below linear attention and above the Transformer on every seed
    sections.claim_language_modelling(run, _lm_runs({"transformer": [90, 100, 110], "retnet": [100, 111, 121],
                                                     "linear_attention": [120, 133, 146]}), "tiny")
    assert _verdicts(run) == {"table5_retnet_beats_linear": "holds", "table5_transformer_below_2b": "holds"}
    assert run.claims[0].ours.method.startswith("paired t over 3 seeds")

    run = _run()  # the opposite on every seed
    sections.claim_language_modelling(run, _lm_runs({"transformer": [120, 133, 146], "retnet": [100, 111, 121],
                                                     "linear_attention": [90, 100, 110]}), "tiny")
    assert set(_verdicts(run).values()) == {"contradicted"}

    run = _run()  # seed 0 one way, seed 1 the other: the seed means would say "better"; pairing says "cannot tell"
    sections.claim_language_modelling(run, _lm_runs({"retnet": [100, 150], "linear_attention": [110, 140]}), "tiny")
    assert _verdicts(run) == {"table5_retnet_beats_linear": "inconclusive"}

    run = _run()  # one seed: no interval
    sections.claim_language_modelling(run, _lm_runs({"retnet": [100], "linear_attention": [200]}), "tiny")
    assert _verdicts(run) == {"table5_retnet_beats_linear": "inconclusive"}


def test_ablation_claims_hold_are_contradicted_or_inconclusive():
    from reproduce.retnet import sections

    runs = _lm_runs({"retnet": [100, 110, 120], "no_gate": [105, 116, 126], "no_groupnorm": [95, 104, 114],
                     "no_decay": [101, 108, 123], "transformer": [1, 1, 1]})
    run = _run()
    sections.claim_ablations(run, runs, "tiny")
    assert _verdicts(run) == {"table6_no_gate": "holds", "table6_no_groupnorm": "contradicted",
                              "table6_no_decay": "inconclusive"}
    assert [r["variant"] for r in sections.ablation_rows(runs)] == ["− swish gate", "− GroupNorm", "− γ decay"]
    run = _run()
    sections.claim_ablations(run, _lm_runs({"no_gate": [1, 2]}), "tiny")  # no full RetNet: nothing to compare
    assert run.claims == [] and sections.ablation_rows(_lm_runs({"no_gate": [1, 2]})) == []


def test_stable_values_hold_no_timing():
    from reproduce import results
    from reproduce.retnet import sections

    run = _run()
    run.record("forms.max_abs_diff", [{"compared": "parallel vs recurrent", "chunk": None, "max_abs_diff": 1e-15}])
    run.record("fig6.decode", _decode_rows([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]))
    run.record("lm.runs", _lm_runs({"retnet": [100.0, 110.0]}))
    values = sections.stable_values(run)
    assert values["forms_equal_below_1e-10"] is True
    assert values["fig6"]["state_bytes_ratio"] == 1.0 and values["fig6"]["kv_bytes_ratio"] == 4.0
    text = results.stable_text(values)
    assert "paper.ppl_200m.retnet: 26.05" in text and "latency_ms" not in text and "step_ms" not in text and "valid_ppl" not in text


# --- data-parallel training: 2 gloo processes == 1 process on the same global batch -----------------
_STEPS, _GLOBAL_BATCH, _LENGTH = 3, 4, 16


def _train_tiny_retnet(out: Path) -> None:
    """Train a tiny RetNet with the shared accelerate loop; the main process writes the per-step losses."""
    from reproduce import train as trainer
    from reproduce.retnet import experiments as ex

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = rn.RetNetForCausalLM(_tiny_config(norm_eps=1e-6))
    ids = np.random.default_rng(0).integers(0, 99, size=2000)
    accelerator = trainer.make_accelerator("cpu")
    result = trainer.train(model, torch.optim.AdamW(model.parameters(), lr=1e-3), ex.batches(ids, _GLOBAL_BATCH, _LENGTH, 0),
                           ex.lm_loss, trainer.TrainConfig(steps=_STEPS), accelerator=accelerator, tokens_in="input_ids")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "losses.json").write_text(json.dumps({"losses": result.losses, "processes": accelerator.num_processes}))


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), __file__, str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    _train_tiny_retnet(tmp_path / "one")
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    both = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert (one["processes"], both["processes"]) == (1, 2)
    torch.testing.assert_close(torch.tensor(both["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
    assert one["losses"][-1] < one["losses"][0]


if __name__ == "__main__":  # the worker of test_two_gloo_processes_train_like_one (run by torchrun)
    _train_tiny_retnet(Path(sys.argv[1]))
