"""Tests of reproduce.transformer: equivalence with torch.nn references, cache, decoding, schedule,
parameter counts (Table 3) and bad inputs. Tiny configs; the whole file runs in well under a minute."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from reproduce.transformer import decoding, model
from reproduce.transformer.model import MultiHeadAttention, Transformer, TransformerConfig

torch.set_num_threads(1)

TINY = TransformerConfig(vocab_size=23, n_layers=2, d_model=16, d_ff=32, n_heads=4, p_drop=0.0, max_len=64)


def _tiny_model(seed: int = 0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TINY.replace(**changes)).eval()


def _tokens(b: int, t: int, lengths: list[int], vocab: int = 23, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (b, t), generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = 0  # padding
    return x


# -- multi-head attention against torch.nn.MultiheadAttention ---------------------------------------


def _copy_mha(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        ref.out_proj.weight.copy_(ours.w_o.weight)
        ref.out_proj.bias.copy_(ours.w_o.bias)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_equals_torch(mask_kind, need_weights):
    torch.manual_seed(0)
    d, h, b, t = 16, 4, 3, 7
    ours = MultiHeadAttention(d, h, d // h, d // h).eval()
    ref = nn.MultiheadAttention(d, h, batch_first=True).eval()
    _copy_mha(ours, ref)
    x = torch.randn(b, t, d)
    our_mask, ref_kwargs = None, {}
    if mask_kind == "causal":
        our_mask = model.causal_mask(t)
        ref_kwargs["attn_mask"] = ~our_mask  # torch: True = not allowed
    elif mask_kind == "padding":
        keep = torch.ones(b, t, dtype=torch.bool)
        keep[0, 5:] = keep[2, 3:] = False
        our_mask = keep[:, None, None, :]
        ref_kwargs["key_padding_mask"] = ~keep
    out, w = ours(x, mask=our_mask, need_weights=need_weights)
    ref_out, ref_w = ref(x, x, x, need_weights=True, average_attn_weights=False, **ref_kwargs)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    else:
        assert w is None


def test_fast_and_explicit_paths_agree_with_dk_not_dv():
    """Table 3 row (B) uses d_k != d_v: both paths must still compute eq. (1) identically."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, d_k=2, d_v=6).eval()
    q, src = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    fast, _ = mha(q, src)
    slow, w = mha(q, src, need_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))


# -- encoder-decoder against torch.nn.Transformer ----------------------------------------------------


def _copy_stack(ours: Transformer, ref: nn.Transformer) -> None:
    with torch.no_grad():
        for o, r in zip(ours.encoder, ref.encoder.layers):
            _copy_mha(o.self_attn, r.self_attn)
            for a, c in ((o.ffn.w_1, r.linear1), (o.ffn.w_2, r.linear2), (o.norm1, r.norm1), (o.norm2, r.norm2)):
                c.weight.copy_(a.weight)
                c.bias.copy_(a.bias)
        for o, r in zip(ours.decoder, ref.decoder.layers):
            _copy_mha(o.self_attn, r.self_attn)
            _copy_mha(o.cross_attn, r.multihead_attn)
            pairs = ((o.ffn.w_1, r.linear1), (o.ffn.w_2, r.linear2), (o.norm1, r.norm1), (o.norm2, r.norm2), (o.norm3, r.norm3))
            for a, c in pairs:
                c.weight.copy_(a.weight)
                c.bias.copy_(a.bias)
    # the paper's post-LN stacks end with the last sub-layer's LayerNorm; nn.Transformer adds one more
    ref.encoder.norm = nn.Identity()
    ref.decoder.norm = nn.Identity()


def test_encoder_decoder_equals_torch_transformer():
    ours = _tiny_model()
    cfg = ours.cfg
    ref = nn.Transformer(cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.n_layers, cfg.d_ff, dropout=0.0, batch_first=True)
    ref.eval()
    _copy_stack(ours, ref)
    src = _tokens(3, 8, [8, 5, 2])
    tgt = _tokens(3, 6, [6, 6, 4], seed=2)
    x_src, x_tgt = ours.embed(src), ours.embed(tgt)
    pad_src = src == cfg.pad_id
    ref_out = ref(
        x_src, x_tgt, tgt_mask=~model.causal_mask(6), src_key_padding_mask=pad_src, memory_key_padding_mask=pad_src
    )
    memory, _ = ours.encode(src)
    hidden, _, _ = ours.decode(tgt, memory, src)
    torch.testing.assert_close(hidden, ref_out, atol=1e-5, rtol=1e-5)


def test_forward_with_attention_equals_fast_forward():
    m = _tiny_model()
    src, tgt = _tokens(2, 7, [7, 4]), _tokens(2, 5, [5, 3], seed=3)
    with torch.no_grad():
        logits, att = m.forward_with_attention(src, tgt)
    torch.testing.assert_close(logits, m(src, tgt), atol=1e-5, rtol=1e-5)
    assert att.encoder[0].shape == (2, 4, 7, 7) and att.decoder_cross[1].shape == (2, 4, 5, 7)
    assert float(att.encoder[0][1, :, :, 4:].abs().max()) == 0.0  # padding keys get no weight


# -- incremental decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_kv_cache_equals_full_recomputation(positional):
    m = _tiny_model(positional=positional)
    src, tgt = _tokens(2, 7, [7, 4]), _tokens(2, 6, [6, 6], seed=4)
    full = m(src, tgt)
    memory, _ = m.encode(src)
    cache = m.new_cache()
    steps = [m.decode_step(tgt[:, :2], memory, src, cache)]  # a 2-token prefix, then one token at a time
    steps += [m.decode_step(tgt[:, i : i + 1], memory, src, cache) for i in range(2, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.seen == 6 and cache.layers[0].self_k.shape == (2, 4, 6, 4)


def test_greedy_cached_equals_uncached():
    m = _tiny_model()
    src = _tokens(3, 6, [6, 4, 2])
    assert decoding.greedy_decode(m, src, 1, 2, extra_len=5) == decoding.greedy_decode(
        m, src, 1, 2, extra_len=5, use_cache=False
    )


# -- beam search -----------------------------------------------------------------------------------------


def test_beam_one_equals_greedy():
    m = _tiny_model(seed=3)
    src = _tokens(4, 6, [6, 5, 3, 2])
    greedy = decoding.greedy_decode(m, src, 1, 2, extra_len=7)
    assert decoding.beam_search(m, src, 1, 2, beam=1, alpha=0.6, extra_len=7) == greedy


def test_length_penalty_is_gnmt_form():
    for n, a in [(1, 0.6), (7, 0.6), (20, 1.0), (13, 0.0)]:
        assert decoding.length_penalty(n, a) == pytest.approx(((5 + n) ** a) / ((5 + 1) ** a))
    assert decoding.length_penalty(7, 0.6) == pytest.approx(2**0.6)


def _sequence_logprob(m: Transformer, src: torch.Tensor, seq: list[int], bos: int) -> float:
    tgt_in = torch.tensor([[bos, *seq[:-1]]])
    logp = m(src, tgt_in).log_softmax(-1)[0]  # (T, V)
    return float(sum(logp[i, t] for i, t in enumerate(seq)).detach())


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_finds_exhaustive_optimum(alpha):
    """A beam wider than the search space must return the exact arg-max of logP(Y)/lp(Y)."""
    m = _tiny_model(seed=5, vocab_size=5)
    bos, eos = 1, 2
    src = torch.tensor([[3, 4]])
    extra = 1  # max length = 2 + 1 = 3
    words = [t for t in range(5) if t != eos]
    candidates = [[eos]] + [[a, eos] for a in words] + [[a, b, eos] for a, b in itertools.product(words, words)]
    candidates += [list(c) for c in itertools.product(words, words, words)]  # cut at max length, no EOS
    scored = [(_sequence_logprob(m, src, c, bos) / decoding.length_penalty(len(c), alpha), c) for c in candidates]
    best_score, best = max(scored)
    hyps = decoding.beam_search_hypotheses(m, src, bos, eos, beam=200, alpha=alpha, extra_len=extra)[0]
    top = max(hyps, key=lambda h: h.score)
    assert top.tokens == best
    assert top.score == pytest.approx(best_score, abs=1e-5)


# -- schedule, loss, positional encodings -----------------------------------------------------------


@pytest.mark.parametrize("d_model,warmup", [(512, 4000), (128, 300)])
def test_noam_schedule_peaks_at_warmup(d_model, warmup):
    lrs = [model.noam_lr(s, d_model, warmup) for s in range(1, 3 * warmup)]
    assert max(range(len(lrs)), key=lrs.__getitem__) + 1 == warmup
    assert max(lrs) == pytest.approx(d_model**-0.5 * warmup**-0.5)
    assert model.noam_lr(4 * warmup, d_model, warmup) == pytest.approx(d_model**-0.5 * (4 * warmup) ** -0.5)


def test_label_smoothed_loss_matches_formula():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 7), torch.tensor([[1, 4, 0], [6, 2, 3]])
    eps, v = 0.1, 7
    logp = logits.log_softmax(-1)
    q = torch.full_like(logp, eps / v).scatter_add(-1, target[..., None], torch.full_like(logp[..., :1], 1 - eps))
    manual = -(q * logp).sum(-1)
    keep = target != 0
    expected = manual[keep].mean()
    assert float(model.label_smoothed_loss(logits, target, eps, pad_id=0)) == pytest.approx(float(expected), rel=1e-6)


def test_sinusoidal_encoding_formula():
    pe = model.sinusoidal_encoding(50, 16)
    for pos, i in [(0, 0), (3, 2), (49, 7)]:
        assert float(pe[pos, 2 * i]) == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
        assert float(pe[pos, 2 * i + 1]) == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)


def test_checkpoint_averaging_is_elementwise_mean():
    a, b = _tiny_model(0).state_dict(), _tiny_model(1).state_dict()
    avg = decoding.average_checkpoints([a, b])
    for k in a:
        torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2)


# -- Table 3 parameter counts -------------------------------------------------------------------------


@pytest.mark.parametrize("cfg,paper_millions", [(TransformerConfig.base(), 65), (TransformerConfig.big(), 213)])
def test_parameter_count_matches_table3(cfg, paper_millions):
    n = model.count_parameters(cfg)
    assert abs(n / 1e6 - paper_millions) / paper_millions < 0.05, n


def test_table3_rows_are_config_fields():
    base = TransformerConfig.base()
    assert (base.d_k, base.d_v) == (64, 64)
    assert (base.replace(n_heads=1).d_k, base.replace(n_heads=32).d_v) == (512, 16)  # row (A)
    assert base.replace(d_k=16).d_v == 64  # row (B)
    assert model.count_parameters(base.replace(d_k=16)) < model.count_parameters(base)


# -- bad inputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"n_heads": 3}, "not divisible"),
        ({"p_drop": 1.5}, "p_drop"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"positional": "rotary"}, "positional"),
        ({"n_layers": 0}, "n_layers"),
        ({"pad_id": 99}, "pad_id"),
        ({"d_model": 15, "n_heads": 1}, "even"),
    ],
)
def test_config_refuses_nonsense(changes, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**{"vocab_size": 50, **changes})


def test_config_replace_refuses_unknown_field():
    with pytest.raises(ValueError, match="d_modle"):
        TINY.replace(d_modle=8)


def test_too_long_sequence_is_an_error():
    m = _tiny_model()
    with pytest.raises(ValueError, match="max_len"):
        m(torch.ones(1, 65, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_bad_beam_and_mismatched_checkpoints():
    m = _tiny_model()
    with pytest.raises(ValueError, match="beam"):
        decoding.beam_search(m, torch.ones(1, 3, dtype=torch.long), 1, 2, beam=0)
    sd = m.state_dict()
    with pytest.raises(ValueError, match="different parameter names"):
        decoding.average_checkpoints([sd, {k: v for k, v in list(sd.items())[1:]}])
    with pytest.raises(ValueError, match="at least one"):
        decoding.average_checkpoints([])


# -- Table 1 measurements ----------------------------------------------------------------------------


def test_table1_path_lengths_and_flop_exponents():
    from reproduce.transformer import table1

    paths = table1.path_lengths([4, 8, 9, 16], d=8, heads=2)
    assert paths["attention"] == [1, 1, 1, 1]
    assert paths["recurrent"] == [4, 8, 9, 16]
    assert paths["convolution"] == [2, 4, 4, 8]  # ceil((n-1)/(k-1)), k = 3
    assert paths["dilated_convolution"] == [2, 2, 2, 3]  # smallest L with 3^L >= n
    costs = table1.layer_costs([8, 16, 32], d=16, heads=2, batch=1, repeats=1)
    assert table1.loglog_slope([8, 16, 32], costs["attention"]["core_flops"]) == pytest.approx(2.0)
    assert table1.loglog_slope([8, 16, 32], costs["recurrent"]["flops"]) == pytest.approx(1.0)
    assert costs["recurrent"]["matmul_calls"] == [16, 32, 64]  # two matmuls per recurrent step
    assert len(set(costs["attention"]["matmul_calls"])) == 1
    assert table1.crossover([1, 2, 4], [1, 2, 8], [2, 3, 4]) == pytest.approx(2 * 2 ** (math.log(3 / 2) / math.log(3)))
    assert table1.crossover([1, 2], [1, 1], [2, 2]) is None


# -- data, Table 3 rows and the parameter schema --------------------------------------------------------


BEOLINGUS_SAMPLE = [
    "# Version :: devel\n",
    "Ausnahme {f} | Die Ausnahme bestätigt die Regel. :: exception | The exception proves the rule.\n",
    "Regel {f} | Keine Regel ohne Ausnahme. [Sprw.] :: rule | There's an exception to every rule.\n",
    "kurz | Sehr gut. :: short | Very good.\n",  # 2 words: not a sentence for us
    "Test | Das ist gut. :: test | Example: this is good.\n",  # two variants joined by ': '
    "A | B | Er kommt. :: a | Misaligned entry.\n",
]


def test_beolingus_parser_keeps_full_sentence_pairs():
    from reproduce.data import de_en

    pairs = de_en.parse_beolingus(BEOLINGUS_SAMPLE)
    assert pairs == [
        de_en.Pair("The exception proves the rule.", "Die Ausnahme bestätigt die Regel."),
        de_en.Pair("There's an exception to every rule.", "Keine Regel ohne Ausnahme."),
    ]


def test_splits_are_disjoint_and_stable():
    from reproduce.data import de_en

    pairs = [de_en.Pair(f"Sentence number {i} is here.", f"Satz Nummer {i} ist hier.") for i in range(200)]
    pairs.append(de_en.Pair("Sentence number 7 is here.", "Ein anderer Satz hier."))  # same English, other German
    train, dev, test = de_en.split_pairs(pairs, 20, 30)
    assert (len(dev), len(test)) in ((20, 31), (21, 30)) and len(train) + len(dev) + len(test) == len(pairs)
    assert not {p.en for p in train} & {p.en for p in dev + test}
    assert set(de_en.split_pairs(list(reversed(pairs)), 20, 30)[2]) == set(test)  # by hash, not by order
    with pytest.raises(ValueError, match="no training data"):
        de_en.split_pairs(pairs, 100, 101)


def test_joint_tokenizer_round_trips_text():
    from reproduce.data import de_en

    texts = ["The exception proves the rule.", "Die Ausnahme bestätigt die Regel.", "Wo war ich stehengeblieben?"] * 20
    tok = de_en.train_tokenizer(texts, 120)
    assert [tok.token_to_id(s) for s in de_en.SPECIALS] == [0, 1, 2, 3]
    for t in texts[:3]:
        assert tok.decode(tok.encode(t).ids) == t
    with pytest.raises(ValueError, match="vocab_size"):
        de_en.train_tokenizer(texts, 10)


def test_wmt14_offline_error_names_the_packaged_alternative(monkeypatch):
    from reproduce import hub
    from reproduce.data import de_en

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="beolingus"):
        de_en.wmt14_corpus()


def test_table3_rows_scale_with_the_small_base():
    from reproduce.configs.transformer import TABLE3_ROWS
    from reproduce.transformer.sections import PAPER
    from reproduce.transformer.variations import table3_config

    assert set(PAPER["table3"]) == set(TABLE3_ROWS) - {"source-blind"}  # every paper row has the paper's numbers
    assert table3_config(TransformerConfig(vocab_size=100), "source-blind").source_blind
    base = TransformerConfig(vocab_size=100, n_layers=2, d_model=64, d_ff=256, n_heads=8)
    assert table3_config(base, "A: h=1").d_k == 64 and table3_config(base, "A: h=32").d_k == 2
    assert (table3_config(base, "B: d_k/4").d_k, table3_config(base, "B: d_k/4").d_v) == (2, 8)
    assert table3_config(base, "C: d_model/2").d_k == 4 and table3_config(base, "C: N+").n_layers == 3
    assert table3_config(base, "D: ls=0.2").label_smoothing == 0.2
    assert table3_config(base, "E: learned").positional == "learned"
    with pytest.raises(ValueError, match="unknown Table 3 row"):
        table3_config(base, "F: rotary")


def test_parameter_schema_refuses_bad_values():
    from reproduce.config import ParamError, resolve

    assert resolve("transformer", "smoke").t3_rows == ["base", "A: h=1", "C: N+", "D: P_drop=0.0", "E: learned",
                                                        "source-blind"]
    with pytest.raises(ParamError, match="t3_rows"):
        resolve("transformer", "cpu", {"t3_rows": ["A: h=3"]})
    with pytest.raises(ParamError, match="corpus"):
        resolve("transformer", "cpu", {"corpus": "wmt16"})
    with pytest.raises(ParamError, match="did you mean"):
        resolve("transformer", "cpu", {"d_modle": 64})


def test_recipe_refuses_nonsense():
    from reproduce.transformer.experiments import Recipe

    with pytest.raises(ValueError, match="steps"):
        Recipe(steps=0, batch_tokens=100)
    with pytest.raises(ValueError, match="lr_scale"):
        Recipe(steps=1, batch_tokens=100, lr_scale=0.0)


def _tiny_translation_data():
    from reproduce.data import de_en
    from reproduce.transformer import data as td

    words = ["house", "tree", "dog", "cat", "car", "book", "rule", "town"]
    german = ["Haus", "Baum", "Hund", "Katze", "Auto", "Buch", "Regel", "Stadt"]
    pairs = [de_en.Pair(f"The {a} sees the {b}.", f"Das {c} sieht das {d}.")
             for (a, c) in zip(words, german) for (b, d) in zip(words, german)]
    corpus = de_en.Corpus(pairs[:48], pairs[48:56], pairs[56:], {"tiny": 48})
    tok = de_en.train_tokenizer(de_en.corpus_texts(corpus.train), 80)
    return td.TranslationData(tok, td.encode_pairs(tok, corpus.train, 100), td.encode_pairs(tok, corpus.dev, 100),
                              td.encode_pairs(tok, corpus.test, 100), corpus)


def test_table3_runs_do_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    """Each (row, seed) run seeds itself: in this process, in two workers with this process taking jobs
    from the back of the queue, or in two workers alone, the numbers are the same."""
    from reproduce.pool import Pool
    from reproduce.transformer import variations
    from reproduce.transformer.experiments import Recipe

    monkeypatch.setenv("REPRODUCE_CACHE", str(tmp_path))
    data = _tiny_translation_data()
    base = TransformerConfig(vocab_size=data.vocab_size, n_layers=1, d_model=16, d_ff=32, n_heads=4, max_len=64)
    recipe = Recipe(steps=3, batch_tokens=120, warmup=2)
    rows, seeds = ["base", "A: h=1"], [0, 1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (and the cpu profile, threads 1): float sums in the same order
    try:
        here = variations.run_table3_rows(rows, seeds, base, data, recipe, beam=2, alpha=0.6, device="cpu", workers=0,
                                          eval_every=1)
        shared = variations.run_table3_rows(rows, seeds, base, data, recipe, beam=2, alpha=0.6, device="cpu", workers=2,
                                            eval_every=1)
    finally:
        torch.set_num_threads(threads)
    with Pool(workers=2, shared={"table3": data}) as pool:  # help=False: every run in a worker
        for job in variations.table3_jobs(rows, seeds, base, recipe, beam=2, alpha=0.6, device="cpu", eval_every=1):
            pool.submit(job)
        two = [variations.RowResult(**r) for r in pool.wait()]
    assert [(r.row, r.seed) for r in here] == [("base", 0), ("base", 1), ("A: h=1", 0), ("A: h=1", 1)]
    key = lambda r: (r.row, r.seed, r.params, r.dev_ppl, r.best_dev_ppl, r.best_step, r.dev_bleu, r.train_loss,  # noqa: E731
                     [c["dev_ppl"] for c in r.curve], r.dev_nll, r.best_dev_nll, r.dev_tokens, r.dev_bleu_stats)
    assert [key(r) for r in shared] == [key(r) for r in here]
    assert [key(r) for r in two] == [key(r) for r in here]
    assert here[0].dev_ppl != here[1].dev_ppl  # the seed really changes the run
    assert [c["step"] for c in here[0].curve] == [1, 2, 3]  # dev PPL after every step asked for
    assert here[0].best_dev_ppl == min(c["dev_ppl"] for c in here[0].curve) and here[0].dev_ppl == here[0].curve[-1]["dev_ppl"]
    # the per-sentence dev statistics give back the run's perplexity and BLEU; they are kept to 4 decimals, so the
    # log-perplexity they give is within 0.5e-4 nats per sentence, spread over the tokens
    nll, tokens = here[0].dev_nll, here[0].dev_tokens
    assert np.array_equal(nll, np.round(nll, 4))  # the source's own rounding (Python's round may differ by an ulp)
    bound = 0.5e-4 * len(nll) / sum(tokens)
    assert abs(math.fsum(nll) / sum(tokens) - math.log(here[0].dev_ppl)) <= bound
    best_at = min(here[0].curve, key=lambda c: c["dev_ppl"])["dev_ppl"]
    assert abs(math.fsum(here[0].best_dev_nll) / sum(tokens) - math.log(best_at)) <= bound
    from reproduce.transformer.experiments import bleu_from_stats
    assert bleu_from_stats(np.asarray(here[0].dev_bleu_stats).sum(0)) == pytest.approx(here[0].dev_bleu)


def test_table3_subset_has_its_own_vocabulary_in_hash_order():
    from reproduce.data import de_en
    from reproduce.transformer import data as td

    data = _tiny_translation_data()
    sub = td.subset_data(data.corpus, 20, 70, 5)
    assert len(sub.train) == 20 and len(sub.dev) == 5 and len(sub.test) == len(data.corpus.test)
    keys = [de_en.split_key(p) for p in sub.train.pairs]
    assert keys == sorted(keys) and keys == sorted(de_en.split_key(p) for p in data.corpus.train)[:20]
    assert {p.en for p in sub.train.pairs}.isdisjoint({p.en for p in sub.dev.pairs})
    assert sub.tokenizer is not data.tokenizer and sub.vocab_size <= 70
    again = td.subset_data(data.corpus, 20, 70, 5)  # deterministic
    assert again.train.src == sub.train.src and again.dev.tgt == sub.dev.tgt
    for bad, match in (({"train_pairs": 0}, "train_pairs"), ({"train_pairs": 10**6}, "train_pairs"),
                       ({"dev_size": 0}, "dev_size")):
        with pytest.raises(ValueError, match=match):
            td.subset_data(data.corpus, **({"train_pairs": 20, "vocab_size": 70, "dev_size": 5} | bad))


def test_batches_per_epoch_counts_the_first_epoch():
    from reproduce.transformer import data as td

    data = _tiny_translation_data()
    n = td.batches_per_epoch(data.train, 60, seed=3)
    batches = td.token_batches(data.train, 60, seed=3)
    seen = 0
    for k in range(n):
        seen += len(next(batches)["src"])
    assert seen == len(data.train) and n > 1  # exactly one pass over the pairs


def _t3_row(ppl: list[float], bleu: list[float], best: list[float] | None = None, **extra) -> dict:
    import statistics

    best = ppl if best is None else best
    return {"N": 2, "d_model": 64, "steps": 900, "epochs": 20, "batch_tokens": 1000, "seeds": list(range(len(ppl))),
            "dev_ppl": statistics.fmean(ppl), "dev_ppl_per_seed": ppl, "best_dev_ppl": statistics.fmean(best),
            "best_dev_ppl_per_seed": best, "best_epoch_per_seed": [20.0] * len(ppl), "dev_bleu": statistics.fmean(bleu),
            "dev_bleu_per_seed": bleu, "train_loss": 5.0, **extra}


def _t3_claims(table: dict, blind: bool = True) -> dict:
    """The Table 3 claims of ``table``; ``blind``: with a source-blind row far above every row (so every
    row reads its source), on the base row's seeds."""
    from reproduce import config, results
    from reproduce.transformer import variations

    run = results.Run(config.resolve("transformer", "smoke"))
    if blind and "source-blind" not in table:
        n = len(table["base"]["seeds"])
        table = table | {"source-blind": _t3_row([1000.0] * n, [0.1] * n) | {"seeds": table["base"]["seeds"]}}
    variations.claim_table3(run, table)
    return {c.id: c for c in run.claims}


def test_table3_claims_are_paired_by_seed():
    got = _t3_claims({
        "base": _t3_row([99.0, 100.0, 104.0], [0.9, 0.4, 0.5]),
        "A: h=1": _t3_row([104.0, 105.5, 108.0], [0.5, 0.5, 0.5]),  # +5, +5.5, +4 on the same seeds: holds
        "B: d_k/4": _t3_row([96.0, 110.0, 100.0], [0.6, 0.6, 0.6]),  # -3, +10, -4: straddles 0, inconclusive
        "D: ls=0.0": _t3_row([104.0, 105.0, 108.0], [0.6, 0.6, 0.6]),  # base below ls=0 on every seed: contradicted
    })
    assert {k: c.verdict for k, c in got.items()} == {
        "t3_base_reads_source": "holds",
        "t3_one_head_worse": "holds", "t3_one_head_worse_best": "holds",  # best = last here
        "t3_small_dk_hurts": "inconclusive", "t3_small_dk_hurts_best": "inconclusive",
        "t3_ls_hurts_ppl": "contradicted", "t3_ls_hurts_ppl_best": "contradicted",
        "t3_ls_helps_bleu": "not testable",  # dev BLEU < 5: the precondition fails
    }
    one_head = got["t3_one_head_worse"]
    assert one_head.ours.value == pytest.approx(14.5 / 3) and one_head.ours.units == pytest.approx((5.0, 5.5, 4.0))
    assert one_head.ours.low > 0 and one_head.source.startswith("paper:")
    assert got["t3_ls_helps_bleu"].precondition.value == 1  # one condition fails: base BLEU 0.6 < 5
    assert "dev BLEU of base" in got["t3_ls_helps_bleu"].precondition.text
    # Pairing is by seed value, not by list position (workers may finish in any order).
    shuffled = _t3_claims({"base": _t3_row([99.0, 100.0], [0.5, 0.5]) | {"seeds": [0, 1]},
                           "A: h=1": _t3_row([105.5, 104.0], [0.5, 0.5]) | {"seeds": [1, 0]}})
    assert shuffled["t3_one_head_worse"].ours.units == pytest.approx((5.0, 5.5))


def test_table3_bleu_claim_is_judged_when_bleu_carries_a_signal():
    got = _t3_claims({"base": _t3_row([99.0, 100.0, 101.0], [20.0, 21.0, 22.0]),
                      "D: ls=0.0": _t3_row([95.0, 96.0, 97.0], [18.0, 19.1, 19.9])})
    assert got["t3_ls_helps_bleu"].verdict == "holds" and got["t3_ls_hurts_ppl"].verdict == "holds"


def test_best_and_last_epoch_are_judged_apart():
    got = _t3_claims({"base": _t3_row([60.0, 61.0, 62.0], [0.5] * 3, best=[58.0, 59.0, 60.0]),
                      "B: d_k/4": _t3_row([60.5, 60.0, 63.0], [0.5] * 3, best=[61.0, 62.0, 62.5])})
    assert got["t3_small_dk_hurts"].verdict == "inconclusive"  # +0.5, -1, +1 at the last epoch
    assert got["t3_small_dk_hurts_best"].verdict == "holds"  # +3, +3, +2.5 at the best epoch
    assert got["t3_small_dk_hurts_best"].ours.units == pytest.approx((3.0, 3.0, 2.5))


def test_dropout_claim_needs_overfitting_in_the_same_run():
    """The last-epoch dropout claim is judged only when the no-dropout row has overfitted on every seed."""
    from reproduce.transformer import variations

    base = _t3_row([63.0, 64.0, 62.0], [0.5] * 3, best=[61.5, 62.0, 61.0])
    overfit = _t3_row([146.0, 150.0, 139.0], [0.4] * 3, best=[77.5, 78.0, 76.0])
    got = _t3_claims({"base": base, "D: P_drop=0.0": overfit})
    assert got["t3_no_dropout_overfits"].verdict == "holds"
    assert got["t3_no_dropout_overfits"].ours.value == pytest.approx(min(146 / 77.5, 150 / 78, 139 / 76))
    assert got["t3_dropout_helps"].verdict == "holds" and got["t3_dropout_helps_best"].verdict == "holds"
    # Not yet overfitted on one seed (still improving: last == best): the last-epoch claim is not testable,
    # the best-epoch one is still judged.
    early = _t3_row([50.0, 52.0, 49.0], [0.4] * 3, best=[48.0, 52.0, 47.0])
    got = _t3_claims({"base": base, "D: P_drop=0.0": early})
    assert got["t3_no_dropout_overfits"].verdict == "contradicted"
    assert got["t3_dropout_helps"].verdict == "not testable"
    assert got["t3_dropout_helps"].precondition.value == 1  # one condition fails: last / best = 1.0 on a seed
    assert got["t3_dropout_helps_best"].verdict == "contradicted"  # 48-61.5, 52-62, 47-61: below 0 on every seed
    assert variations.OVERFIT_RISE == 1.05  # pre-registered; changing it is a visible decision


def test_one_seed_is_inconclusive():
    got = _t3_claims({"base": _t3_row([99.0], [0.5]), "A: h=1": _t3_row([120.0], [0.5])})
    assert got["t3_one_head_worse"].verdict == "inconclusive"


def test_learned_positions_claim_is_a_paired_ratio():
    got = _t3_claims({"base": _t3_row([100.0, 110.0, 90.0], [0.5] * 3),
                      "E: learned": _t3_row([101.0, 111.0, 90.5], [0.5] * 3)})
    claim = got["t3_learned_positions_equal"]
    assert claim.relation == "~=" and claim.verdict == "holds" and 1.0 < claim.ours.value < 1.01


def test_bleu_difference_is_a_paired_bootstrap_over_sentences():
    from reproduce.transformer import experiments as ex

    refs = [f"das ist satz nummer {i} hier" for i in range(40)]
    good = list(refs)
    bad = [r if i % 2 else "ganz anders" for i, r in enumerate(refs)]
    e = ex.bleu_difference(good, bad, refs, resamples=200)
    assert e.value > 0 and e.low > 0 and e.n == 40
    same = ex.bleu_difference(good, good, refs, resamples=50)
    assert same.value == same.low == same.high == 0


def test_wall_time_crossover_has_a_bootstrap_interval():
    from reproduce.transformer import sections

    lengths, d = [16, 32, 64, 128], 32
    rng = __import__("numpy").random.default_rng(0)
    attention = [list(n * 1e-4 * (1 + 0.01 * rng.standard_normal(5))) for n in lengths]  # grows as n ...
    recurrent = [[3.2e-3 * (1 + 0.01 * e) for e in rng.standard_normal(5)] for _ in lengths]  # ... flat: cross at n = 32
    e = sections.crossover_time_estimate(lengths, d, attention, recurrent)
    assert e.noisy and e.low <= e.value <= e.high and abs(e.value) < 0.1
    flat = [[1e-3] * 5 for _ in lengths]  # never crosses: nothing measured
    assert sections.crossover_time_estimate(lengths, d, flat, [[2e-3] * 5 for _ in lengths]).value is None


def test_table3_data_without_a_subset_is_table2s_data_with_a_hash_ordered_dev():
    """t3_train_pairs 0 (the gpu profile, as the paper): Table 2's pairs and vocabulary, dev in hash order."""
    from types import SimpleNamespace

    from reproduce.data import de_en
    from reproduce.transformer import variations

    data = _tiny_translation_data()
    same = variations.table3_data(SimpleNamespace(t3_train_pairs=0, t3_vocab_size=1000, t3_dev_size=3), data)
    assert same.tokenizer is data.tokenizer and same.train is data.train and len(same.dev) == 3
    keys = [de_en.split_key(p) for p in same.dev.pairs]
    assert keys == sorted(de_en.split_key(p) for p in data.corpus.dev)[:3]
    sub = variations.table3_data(SimpleNamespace(t3_train_pairs=20, t3_vocab_size=70, t3_dev_size=3, t3_max_words=0, t3_heldout=0), data)
    assert len(sub.train) == 20 and sub.tokenizer is not data.tokenizer
