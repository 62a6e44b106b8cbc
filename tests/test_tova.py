"""Tests of reproduce.tova: the eviction policies as Caches, the App. E masked pass, bad input.

Tiny random LLaMA models (hidden 48, 6 query / 2 KV heads) for the unit tests; the packaged
SmolLM2-135M on real text for the equivalence of streaming and App. E (marked slow, run in CI).
Equivalence tests run in float64 so that near-ties cannot flip an eviction decision by rounding;
eager attention still computes its softmax in float32, which bounds the agreement at ~1e-6.
"""

from __future__ import annotations

import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reproduce import config
from reproduce.tova import appendix_e, experiments, policies
from reproduce.tova.policies import EvictionSpec, H2OLayer, TOVALayer

TOL = 1e-5  # float64 model, float32 softmax inside eager attention (measured max ~6e-7)
# SmolLM2 (30 layers): eager attention's float32 softmax inside the float64 model leaves ~1e-7 errors
# in the probabilities that grow to ~2e-4 in the NLL (measured for the full cache, where no eviction
# decision is involved); the App. E pass computes its softmax in float64. Decisions are compared exactly.
TOL_REAL = 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads run ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama(seed: int = 0, attn: str = "eager") -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=99, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, attn_implementation=attn)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval().double()


@pytest.fixture(scope="module")
def tiny():
    return policies.attach(tiny_llama())


def all_specs(C: int) -> list[EvictionSpec]:
    return [EvictionSpec("full"), EvictionSpec("window", C), EvictionSpec("window_sink", C, sinks=4),
            EvictionSpec("h2o", C), EvictionSpec("tova", C)]


# ----------------------------------------------------------------------------- streaming == parallel
def test_full_cache_streaming_reproduces_plain_logits(tiny):
    ids = torch.randint(0, 99, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = tiny(ids).logits
        for cache in (policies.FullCache(), policies.TOVACache(30), policies.H2OCache(40), policies.WindowCache(30)):
            steps = [tiny(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(30)]
            assert (torch.cat(steps, dim=1) - plain).abs().max().item() < TOL, cache
            assert max(cache.stored_lengths()) == 30


@pytest.mark.parametrize("spec", all_specs(8), ids=str)
def test_appendix_e_equals_streaming_tiny(tiny, spec):
    ids = torch.randint(0, 99, (2, 40), generator=torch.Generator().manual_seed(2))
    masked = appendix_e.nll(tiny, ids, spec)
    cache = policies.make_cache(spec)
    streamed = experiments.streaming_nll(tiny, ids, cache, prefill=1)  # one token at a time from the start
    assert streamed.shape == masked.shape == (2, 39)
    assert (streamed - masked).abs().max().item() < TOL
    if spec.budget is not None:
        assert max(cache.stored_lengths()) == spec.budget


def test_prefill_up_to_C_equals_token_by_token(tiny):
    ids = torch.randint(0, 99, (1, 30), generator=torch.Generator().manual_seed(3))
    for spec in all_specs(10)[1:]:
        one = experiments.streaming_nll(tiny, ids, policies.make_cache(spec), prefill=1)
        pre = experiments.streaming_nll(tiny, ids, policies.make_cache(spec), prefill=10)
        assert (one - pre).abs().max().item() < TOL, spec


# ----------------------------------------------------------------------------- what each policy keeps
def stream(model, ids, cache):
    with torch.no_grad():
        for t in range(ids.shape[1]):
            model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            assert max(cache.stored_lengths()) <= (cache.budget or ids.shape[1])
    return cache


def test_window_keeps_the_last_C(tiny):
    cache = stream(tiny, torch.randint(0, 99, (2, 25)), policies.WindowCache(8))
    for layer in cache.layers:
        assert (layer.positions == torch.arange(17, 25)).all()
        assert layer.get_seq_length() == 25 and layer.stored == 8
        assert layer.get_mask_sizes(1) == (9, 17)


def test_window_sink_keeps_first_four_and_last_C_minus_four(tiny):
    cache = stream(tiny, torch.randint(0, 99, (2, 25)), policies.WindowSinkCache(10, sinks=4))
    expected = torch.tensor([0, 1, 2, 3, 19, 20, 21, 22, 23, 24])
    for layer in cache.layers:
        assert (layer.positions == expected).all()


def test_tova_length_never_exceeds_C_and_heads_agree(tiny):
    cache = stream(tiny, torch.randint(0, 99, (2, 25)), policies.TOVACache(6))
    for layer in cache.layers:
        assert layer.stored == 6
        assert (layer.positions == layer.positions[:, :1]).all()  # GQA: every KV head keeps the same tokens


def filled_layer(cls, S: int, B: int = 1, Hk: int = 2, D: int = 4, **kwargs):
    layer = cls(**kwargs)
    layer.update(torch.randn(B, Hk, S, D, dtype=torch.float64), torch.randn(B, Hk, S, D, dtype=torch.float64))
    return layer


def test_tova_drops_lowest_head_averaged_score():
    layer = filled_layer(TOVALayer, S=5, budget=4)  # 4 query heads over 2 KV heads (GQA)
    attn = torch.tensor([[0.30, 0.30, 0.14, 0.16, 0.10],  # head 0's minimum is token 4 ...
                         [0.30, 0.30, 0.10, 0.20, 0.10],
                         [0.30, 0.30, 0.10, 0.20, 0.10],
                         [0.30, 0.30, 0.10, 0.00, 0.30]],  # ... head 3's is token 3; the mean's is token 2
                        dtype=torch.float64)
    layer.observe(attn[None, :, None, :])  # B, H, T=1, S
    assert layer.positions.sort(dim=-1).values.tolist() == [[[0, 1, 3, 4], [0, 1, 3, 4]]]  # every KV head drops token 2
    assert layer.keys.shape == (1, 2, 4, 4)


def test_tova_may_drop_the_new_token_and_pins_nothing():
    layer = filled_layer(TOVALayer, S=4, budget=3)
    layer.observe(torch.tensor([0.05, 0.5, 0.4, 0.05 - 1e-3], dtype=torch.float64).expand(1, 4, 1, 4))
    assert layer.positions[0, 0].tolist() == [0, 1, 2]  # the new token (3) had the lowest score
    layer.update(torch.randn(1, 2, 1, 4, dtype=torch.float64), torch.randn(1, 2, 1, 4, dtype=torch.float64))
    layer.observe(torch.tensor([0.01, 0.5, 0.4, 0.09], dtype=torch.float64).expand(1, 4, 1, 4))
    assert sorted(layer.positions[0, 0].tolist()) == [1, 2, 4]  # the first token is not pinned
    assert layer.keys.shape == (1, 2, 3, 4)


def test_tova_cuts_a_long_prompt_in_one_shot_by_the_last_query():
    layer = filled_layer(TOVALayer, S=6, budget=3)
    attn = torch.zeros(1, 4, 6, 6, dtype=torch.float64)
    attn[..., -1, :] = torch.tensor([0.3, 0.0, 0.25, 0.05, 0.1, 0.3], dtype=torch.float64)
    attn[..., 0, 1] = 1.0  # earlier queries do not matter
    layer.observe(attn)
    assert layer.positions[0, 0].tolist() == [0, 2, 5]


def test_h2o_accumulated_scores_match_manual_computation():
    layer = filled_layer(H2OLayer, S=3, B=1, Hk=1, budget=4)  # H = 2 query heads share the KV head
    a1 = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
                       [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.6, 0.2, 0.2]]], dtype=torch.float64)
    layer.observe(a1[None])  # prefill of 3 tokens: column sums over both heads and all queries
    assert torch.allclose(layer.scores, torch.tensor([[[4.2, 1.1, 0.7]]], dtype=torch.float64))
    layer.update(torch.randn(1, 1, 1, 4, dtype=torch.float64), torch.randn(1, 1, 1, 4, dtype=torch.float64))
    layer.observe(torch.tensor([[[[0.1, 0.2, 0.3, 0.4]], [[0.1, 0.1, 0.4, 0.4]]]], dtype=torch.float64))
    assert torch.allclose(layer.scores, torch.tensor([[[4.4, 1.4, 1.4, 0.8]]], dtype=torch.float64))
    layer.update(torch.randn(1, 1, 1, 4, dtype=torch.float64), torch.randn(1, 1, 1, 4, dtype=torch.float64))
    layer.observe(torch.tensor([[[[0.1, 0.0, 0.4, 0.1, 0.4]], [[0.1, 0.0, 0.4, 0.1, 0.4]]]], dtype=torch.float64))
    # scores now [4.6, 1.4, 2.2, 1.0, 0.8]; recent = C // 2 = 2 (tokens 3, 4) are safe; the lowest
    # of the others is token 1 (1.4): it goes although tokens 3 (1.0) and 4 (0.8) score lower.
    assert layer.positions[0, 0].tolist() == [0, 2, 3, 4]
    assert torch.allclose(layer.scores, torch.tensor([[[4.6, 2.2, 1.0, 0.8]]], dtype=torch.float64))


def test_h2o_heads_choose_independently():
    layer = filled_layer(H2OLayer, S=5, B=1, Hk=2, budget=4)  # H = Hk = 2: one query head per KV head
    attn = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    attn[0, 0, -1] = torch.tensor([0.1, 0.5, 0.2, 0.1, 0.1], dtype=torch.float64)
    attn[0, 1, -1] = torch.tensor([0.5, 0.1, 0.2, 0.1, 0.1], dtype=torch.float64)
    layer.observe(attn)  # recent: tokens 3, 4; heavy hitters: 2 of tokens 0-2, per head
    assert layer.positions.tolist() == [[[1, 2, 3, 4], [0, 2, 3, 4]]]


def test_kv_bytes_are_the_stored_tensors(tiny):
    cache = stream(tiny, torch.randint(0, 99, (2, 20)), policies.TOVACache(5))
    per_layer = 2 * 2 * 2 * 5 * 8 * 8  # keys+values, B, Hk, C, D=48/6, float64 bytes
    assert cache.nbytes() == 3 * per_layer


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"policy": "lru", "budget": 8}, "unknown policy"),
    ({"policy": "tova", "budget": 0}, "budget C >= 1"),
    ({"policy": "tova", "budget": None}, "budget C >= 1"),
    ({"policy": "window", "budget": 8.0}, "budget C >= 1"),
    ({"policy": "full", "budget": 8}, "leave budget=None"),
    ({"policy": "window_sink", "budget": 4, "sinks": 4}, "sinks < budget"),
    ({"policy": "h2o", "budget": 1}, "budget must be >= 2"),
])
def test_spec_rejects_nonsense(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvictionSpec(**kwargs)


def test_attach_needs_eager_attention():
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        policies.attach(tiny_llama(attn="sdpa"))


def test_scored_cache_without_hooks_says_what_to_do():
    model = tiny_llama()  # not attached
    cache = policies.TOVACache(4)
    with torch.no_grad(), pytest.raises(RuntimeError, match="attach"):
        for t in range(6):
            model(torch.tensor([[t]]), past_key_values=cache, use_cache=True)


def test_appendix_e_attention_needs_a_spec(tiny):
    with appendix_e.masked_attention(tiny), pytest.raises(RuntimeError, match="MaskedPass"):
        tiny(torch.tensor([[1, 2, 3]]))
    assert tiny.config._attn_implementation == "eager"  # restored after the error


@pytest.mark.parametrize("overrides, name", [
    ({"budgets": [1]}, "budgets"), ({"policies": ["lru"]}, "policies"), ({"length": 8}, "length"),
    ({"corpus": "wikitext"}, "corpus"), ({"full_margin_rel": -0.1}, "full_margin_rel"),
])
def test_config_rejects_bad_parameters(overrides, name):
    with pytest.raises(config.ParamError, match=name):
        config.resolve("tova", "cpu", overrides)


def test_profiles_resolve():
    for profile in config.PROFILES:
        params = config.resolve("tova", profile)
        assert params.analysis_budget >= 2


def test_hub_model_offline_fails_fast(monkeypatch):
    from reproduce import hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(hf.HubOfflineError, match="profile=cpu"):
        experiments.load_model("meta-llama/Llama-2-7b-hf")
    assert time.perf_counter() - start < 5


# ----------------------------------------------------------------------------- the packaged model, real text
@pytest.fixture(scope="module")
def smollm2():
    try:
        loaded = experiments.load_model("smollm2")
    except Exception as error:  # pragma: no cover - the packaged model is a project dependency
        pytest.fail(f"the packaged SmolLM2 does not load: {error}")
    loaded.model.double()
    return loaded


@pytest.fixture(scope="module")
def novel_ids(smollm2):
    ids, _ = experiments.load_passages("novels", smollm2.tokenizer, length=48, n=2, seed=0)
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("spec", all_specs(12), ids=str)
def test_appendix_e_equals_streaming_on_real_text(smollm2, novel_ids, spec):
    """The paper's parallel evaluation (App. E) == streaming with the Cache objects, kept sets included."""
    model, ids = smollm2.model, novel_ids
    keeper = appendix_e.MaskedPass(spec, collect=True)
    masked = appendix_e.nll(model, ids, spec, keeper)
    cache = policies.make_cache(spec)
    streamed = experiments.streaming_nll(model, ids[:, :-1], cache, prefill=spec.budget or 24)
    assert (streamed - masked[:, :-1]).abs().max().item() < TOL_REAL
    for layer_idx, layer in enumerate(cache.layers):  # state after step L-2 == what the last query sees, minus itself
        visible = keeper.last_row[layer_idx]  # B, Hm, L
        for b in range(ids.shape[0]):
            for h in range(layer.positions.shape[1]):
                expected = visible[b, h if visible.shape[1] > 1 else 0, :-1].nonzero().flatten().tolist()
                assert sorted(layer.positions[b, h].tolist()) == expected, (layer_idx, b, h)


@pytest.mark.slow
def test_generate_with_each_policy(smollm2, novel_ids):
    prompt = novel_ids[:1, :20]
    texts = experiments.generate_each(smollm2.model, smollm2.tokenizer, prompt, all_specs(8), new_tokens=3)
    assert len(texts) == 5 and all(isinstance(t, str) and t for t in texts.values())


@pytest.mark.parametrize("spec", all_specs(8)[1:], ids=str)
def test_blocked_attention_equals_dense_masked_attention(spec):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, n, 45, 8, generator=g, dtype=torch.float64) for n in (6, 2, 2))
    logits = q @ k.repeat_interleave(3, dim=1).transpose(2, 3) / 8**0.5
    mask = appendix_e.policy_mask(logits, spec, kv_heads=2)
    mask = mask.repeat_interleave(6 // mask.shape[1], dim=1)  # B, H, T, T as the attention function passes it
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1), attn_mask=mask)
    for block in (1, 7, 16, 64):
        blocked = appendix_e.blocked_attention(q, k, v, mask, 1 / 8**0.5, spec, block=block)
        assert (blocked - dense).abs().max().item() < 1e-12, block
