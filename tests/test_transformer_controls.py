"""Issue #31: the Bible split by books, the controls (copy, retrieval, source-blind), the intervals that
cover seeds and dev sentences, and the gate every BLEU comparison passes through."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reproduce import claims
from reproduce.data import bible, de_en
from reproduce.transformer import experiments as ex
from reproduce.transformer.model import Transformer, TransformerConfig


# ------------------------------------------------------------------------------------- the data
def _fake_bible(monkeypatch, books=range(1, 67), verses=3):
    pairs = [bible.VersePair(b, 1, v, f"Verse {v} of book {b} says hello.", f"Vers {v} des Buches {b} sagt hallo.")
             for b in books for v in range(1, verses + 1)]
    monkeypatch.setattr(bible, "aligned_pairs", lambda src="4", tgt="e": pairs)
    return pairs


def test_bible_corpus_holds_out_whole_books(monkeypatch):
    _fake_bible(monkeypatch)
    c = de_en.bible_book_corpus((6, 45), (9, 46))
    book = lambda p: int(p.en.split("book ")[1].split(" ")[0])  # noqa: E731
    assert {book(p) for p in c.dev} == {6, 45} and {book(p) for p in c.test} == {9, 46}
    assert {book(p) for p in c.train} == set(range(1, 67)) - {6, 9, 45, 46}
    assert len(c.train) == 62 * 3 and c.sources["bible"] == 62 * 3
    small = de_en.bible_book_corpus((6, 45), (9, 46), dev_size=2, test_size=4, max_train=5)
    assert (len(small.dev), len(small.test), len(small.train)) == (2, 4, 5)
    keys = [de_en.split_key(p) for p in small.train]
    assert keys == sorted(de_en.split_key(p) for p in c.train)[:5]  # the first in hash order


@pytest.mark.parametrize("dev, test", [((6,), (6, 9)), ((), (9,)), ((6,), (67,))])
def test_bible_corpus_refuses_overlapping_or_unknown_books(monkeypatch, dev, test):
    _fake_bible(monkeypatch)
    with pytest.raises(ValueError, match="book numbers 1-66"):
        de_en.bible_book_corpus(dev, test)


def test_config_refuses_a_book_in_both_splits_and_bible_with_with_bible():
    from reproduce.config import ParamError, resolve

    with pytest.raises(ParamError, match="share a book"):
        resolve("transformer", "cpu", {"bible_dev_books": [6, 9]})
    with pytest.raises(ParamError, match="with_bible"):
        resolve("transformer", "cpu", {"with_bible": True})
    assert resolve("transformer", "cpu").corpus == "bible"


# --------------------------------------------------------------------------------- the controls
def _retrieve_by_hand(train, queries):
    words = lambda t: set(__import__("re").findall(r"\w+", t.lower()))  # noqa: E731
    out = []
    for q in queries:
        scores = [len(words(q) & words(p.en)) / max(1, len(words(q) | words(p.en))) for p in train]
        out.append(train[int(np.argmax(scores))].de)  # the first maximum: the earliest pair
    return out


def test_retrieval_returns_the_german_of_the_most_overlapping_english():
    P = de_en.Pair
    train = [P("The dog runs.", "Der Hund rennt."), P("The cat sleeps.", "Die Katze schläft."),
             P("A dog and a cat play.", "Ein Hund und eine Katze spielen."), P("The cat runs.", "Die Katze rennt.")]
    queries = ["the cat runs fast", "dogs", "A cat and a dog play together.", "", "The dog runs."]
    got = ex.retrieve_nearest(train, queries)
    assert got == _retrieve_by_hand(train, queries)
    assert got[0] == "Die Katze rennt." and got[2] == "Ein Hund und eine Katze spielen." and got[4] == "Der Hund rennt."
    assert got[1] == got[3] == "Der Hund rennt."  # no word in common: the first pair
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(30)]
    train = [P(" ".join(rng.choice(vocab, rng.integers(1, 8))), f"de{i}") for i in range(200)]
    queries = [" ".join(rng.choice(vocab, rng.integers(1, 8))) for _ in range(50)]
    assert ex.retrieve_nearest(train, queries) == _retrieve_by_hand(train, queries)
    assert ex.retrieve_nearest(train, queries, max_pairs=40) == _retrieve_by_hand(train[::5], queries)


def test_copy_control_is_the_source():
    pairs = [de_en.Pair("Hello.", "Hallo."), de_en.Pair("Israel.", "Israel.")]
    assert ex.copy_source(pairs) == ["Hello.", "Israel."]


def test_source_blind_model_does_not_see_its_source():
    cfg = TransformerConfig(vocab_size=50, n_layers=2, d_model=16, d_ff=32, n_heads=4, max_len=32, p_drop=0.0)
    blind = Transformer(cfg.replace(source_blind=True)).eval()
    assert len(blind.encoder) == 0  # no encoder layer: nothing of it would be trained
    src_a, src_b = torch.tensor([[5, 6, 7, 2]]), torch.tensor([[9, 9, 11, 2]])
    tgt = torch.tensor([[1, 8, 12]])
    assert torch.equal(blind(src_a, tgt), blind(src_b, tgt))  # different sources, same length: same output
    seeing = Transformer(cfg).eval()
    assert not torch.equal(seeing(src_a, tgt), seeing(src_b, tgt))
    loss = blind(src_a, tgt).sum()
    loss.backward()
    assert all(p.grad is not None for p in blind.parameters())  # every parameter reaches the loss (DDP-safe)


def test_sentence_nll_adds_up_to_the_perplexity():
    from tests.test_transformer import _tiny_translation_data

    data = _tiny_translation_data()
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=data.vocab_size, n_layers=1, d_model=16, d_ff=32, n_heads=4,
                                          max_len=64))
    nll, count = ex.sentence_nll(model, data.dev, batch_size=3)
    assert len(nll) == len(data.dev) and list(count) == [len(t) - 1 for t in data.dev.tgt]
    from reproduce.transformer.model import label_smoothed_loss
    src, tgt = torch.tensor([data.dev.src[2]]), torch.tensor([data.dev.tgt[2]])
    with torch.no_grad():
        one = float(label_smoothed_loss(model.eval()(src, tgt[:, :-1]), tgt[:, 1:], 0.0, 0)) * (tgt.shape[1] - 1)
    assert nll[2] == pytest.approx(one, rel=1e-5)  # sentence 2 alone, in the data's order
    assert ex.perplexity(model, data.dev) == pytest.approx(math.exp(nll.sum() / count.sum()))


def test_bleu_interval_and_stats_agree_with_sacrebleu():
    refs = [f"das ist satz nummer {i} hier" for i in range(30)]
    hyps = [r if i % 3 else "das ist etwas" for i, r in enumerate(refs)]
    e = ex.bleu_interval(hyps, refs, resamples=200)
    assert e.value == pytest.approx(ex.bleu(hyps, refs)[0])
    assert e.low < e.value < e.high and e.n == 30
    assert ex.bleu_from_stats(ex.bleu_stats(hyps, refs).sum(0)) == pytest.approx(e.value)


# ------------------------------------------------------------------ seeds and dev sentences together
def _ppl(v):
    return math.exp(v[0] / v[1])


def test_seeds_and_items_without_item_noise_is_the_seed_t_interval():
    tokens = np.full(20, 10.0)
    a = [np.column_stack([np.full(20, 10.0 * x), tokens]) for x in (3.0, 3.1, 2.9)]  # every sentence alike
    b = [np.column_stack([np.full(20, 10.0 * x), tokens]) for x in (2.0, 2.0, 2.1)]
    got = claims.seeds_and_items(a, b, _ppl)
    want = claims.paired_t([math.exp(x) for x in (3.0, 3.1, 2.9)], [math.exp(x) for x in (2.0, 2.0, 2.1)])
    assert got.value == pytest.approx(want.value) and got.low == pytest.approx(want.low)
    assert got.high == pytest.approx(want.high) and got.units == pytest.approx(want.units)


def test_seeds_and_items_widens_with_sentence_noise_and_needs_three_seeds():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 30, 200).astype(float)
    noisy = lambda shift: np.column_stack([tokens * (3.0 + shift + rng.normal(0, 1.0, 200)), tokens])  # noqa: E731
    a = [noisy(0.1) for _ in range(3)]
    b = [np.column_stack([x[:, 0] - 0.1 * tokens, tokens]) for x in a]  # b is a shifted down by 0.1 per token
    seeds_only = claims.paired_t([_ppl(x.sum(0)) for x in a], [_ppl(y.sum(0)) for y in b])
    both = claims.seeds_and_items(a, b, _ppl)
    assert both.value == pytest.approx(seeds_only.value)
    assert both.high - both.low > seeds_only.high - seeds_only.low  # the dev set's own noise counted
    ratio = claims.seeds_and_items(a, b, _ppl, stat="ratio")
    assert ratio.value == pytest.approx(math.exp(0.1), rel=1e-6) and ratio.low < ratio.value < ratio.high
    two = claims.seeds_and_items(a[:2], b[:2], _ppl)
    assert math.isinf(two.low) and "fewer than 3" in two.method
    with pytest.raises(ValueError, match="same seeds"):
        claims.seeds_and_items(a, b[:2], _ppl)


# ---------------------------------------------------------------------------- the Table 2 gate
def _t2_claims(averaged_beam: float, to_retrieval: claims.Estimate) -> dict:
    from reproduce import config, results
    from reproduce.transformer import sections

    run = results.Run(config.resolve("transformer", "smoke"))
    scores = {"averaged_beam": averaged_beam, "retrieval": 9.0, "copy": 0.3}
    gain = claims.Estimate(1.0, 0.5, 1.5, "paired bootstrap over 100 test sentences", 100)
    diffs = {"beam_minus_greedy": gain, "beam_minus_greedy_last": gain, "averaged_minus_last": gain,
             "averaged_minus_last_greedy": gain, "model_minus_retrieval": to_retrieval}
    sections.claim_table2(run.params, run, scores, diffs, 5)
    return {c.id: c for c in run.claims}


def test_every_bleu_comparison_is_gated_by_translating_and_beating_retrieval():
    above = claims.Estimate(2.0, 1.0, 3.0, "paired bootstrap over 100 test sentences", 100)
    touching = claims.Estimate(2.0, -0.1, 4.0, "paired bootstrap over 100 test sentences", 100)
    compared = ("t2_beam_ge_greedy", "t2_beam_ge_greedy_last", "t2_avg_ge_last", "t2_avg_ge_last_greedy")
    ok = _t2_claims(12.0, above)
    assert all(ok[k].verdict == "holds" for k in compared)
    assert ok["t2_translates"].verdict == "holds" and ok["t2_beats_retrieval"].verdict == "holds"
    for bleu, retrieval in ((12.0, touching), (4.9, above)):  # either half of the gate fails: nothing judged
        got = _t2_claims(bleu, retrieval)
        assert all(got[k].verdict == "not testable" for k in compared)
    assert _t2_claims(12.0, touching)["t2_beats_retrieval"].verdict == "inconclusive"
    assert _t2_claims(4.9, above)["t2_translates"].verdict == "contradicted"


def test_table3_rows_that_do_not_read_their_source_are_not_judged():
    from tests.test_transformer import _t3_claims, _t3_row

    table = {"base": _t3_row([60.0, 61.0, 62.0], [0.5] * 3), "A: h=1": _t3_row([66.0, 67.0, 69.0], [0.5] * 3),
             "C: N+": _t3_row([58.0, 59.0, 59.5], [0.5] * 3)}
    reads = _t3_claims(table | {"source-blind": _t3_row([90.0, 91.0, 92.0], [0.1] * 3)})
    assert reads["t3_one_head_worse"].verdict == "holds" and reads["t3_bigger_better"].verdict == "holds"
    assert reads["t3_base_reads_source"].verdict == "holds"
    assert reads["t3_one_head_worse"].precondition.value == pytest.approx(69.0 / 92.0)
    blind_close = _t3_claims(table | {"source-blind": _t3_row([90.0, 66.5, 92.0], [0.1] * 3)})  # h=1 above it on seed 1
    assert blind_close["t3_one_head_worse"].verdict == "not testable"
    assert blind_close["t3_bigger_better"].verdict == "holds"  # base and N+ read their source on every seed
    no_control = _t3_claims(table, blind=False)
    assert no_control["t3_bigger_better"].verdict == "not testable" and "t3_base_reads_source" not in no_control


def test_table3_subset_can_keep_only_short_pairs():
    from reproduce.transformer import data as td
    from tests.test_transformer import _tiny_translation_data

    data = _tiny_translation_data()
    P = de_en.Pair
    corpus = de_en.Corpus(list(data.corpus.train) + [P("A much longer sentence than the others here.", "Ein Satz.")],
                          list(data.corpus.dev), [], {})
    sub = td.subset_data(corpus, 10, 70, 4, max_words=5)
    assert all(len(p.en.split()) <= 5 for p in list(sub.train.pairs) + list(sub.dev.pairs))
    assert sub.corpus.sources["max_words"] == 5
    with pytest.raises(ValueError, match="at most 3 words"):
        td.subset_data(corpus, 10, 70, 4, max_words=3)


def test_table3_claims_with_dev_sentences_pair_seeds_by_value_and_cover_the_sentences():
    """The record's path: per-sentence NLL in ``items``; seeds listed in different orders by the two rows."""
    from reproduce import config, results
    from reproduce.transformer import variations
    from tests.test_transformer import _t3_row

    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 20, 50)
    nll = {(row, seed): tokens * (lvl + 0.01 * seed + rng.normal(0, 0.05, 50))
           for row, lvl in (("base", 4.0), ("A: h=1", 4.2), ("source-blind", 4.6)) for seed in (0, 1, 2)}
    ppl = lambda row, seed: math.exp(nll[row, seed].sum() / tokens.sum())  # noqa: E731
    order = {"base": [0, 1, 2], "A: h=1": [2, 0, 1], "source-blind": [1, 2, 0]}
    table, items = {}, {}
    for row, seeds in order.items():
        table[row] = _t3_row([ppl(row, k) for k in seeds], [0.5] * 3) | {"seeds": seeds}
        items[row] = {"nll": [nll[row, k].tolist() for k in seeds], "best_nll": [nll[row, k].tolist() for k in seeds],
                      "tokens": tokens.tolist(), "bleu_stats": [[] for _ in seeds]}
    run = results.Run(config.resolve("transformer", "smoke"))
    variations.claim_table3(run, table, items)
    got = {c.id: c for c in run.claims}
    pairs = lambda row: [np.column_stack([nll[row, k], tokens]) for k in (0, 1, 2)]  # noqa: E731
    want = claims.seeds_and_items(pairs("A: h=1"), pairs("base"), lambda v: math.exp(v[0] / v[1]))
    one = got["t3_one_head_worse"]
    assert one.ours.value == pytest.approx(want.value) and one.ours.low == pytest.approx(want.low)
    assert "dev sentences" in one.ours.method and one.verdict == "holds"
    assert one.precondition.holds and one.precondition.value == pytest.approx(
        max(ppl(r, k) / ppl("source-blind", k) for r in ("A: h=1", "base") for k in (0, 1, 2)))
    items["A: h=1"]["best_nll"][0] = []  # a resumed run that lost its best point's sentences: seeds only
    run = results.Run(config.resolve("transformer", "smoke"))
    variations.claim_table3(run, table, items)
    best = {c.id: c for c in run.claims}["t3_one_head_worse_best"]
    assert best.ours.method.startswith("paired t over 3 seeds")


def test_the_control_job_is_waited_for_before_table3_jobs_queued_behind_it():
    from dataclasses import dataclass

    from reproduce.pool import Pool
    from reproduce.transformer import sections

    ran = []

    @dataclass(frozen=True)
    class Job:
        key: str

        def run(self, shared, checkpoint_dir):
            ran.append(self.key)
            return {"key": self.key, "data": shared["table2"]}

    with Pool(workers=0, shared={"table2": "t2", "table3": "t3"}) as pool:
        for key in (sections.SOURCE_BLIND_KEY, "table3-base-0", "table3-base-1"):
            pool.submit(Job(key))
        assert sections.wait_for(pool, sections.SOURCE_BLIND_KEY) == {"key": sections.SOURCE_BLIND_KEY, "data": "t2"}
        assert ran == [sections.SOURCE_BLIND_KEY]  # the Table 3 jobs have not run yet
        assert [r["key"] for r in pool.wait()] == [sections.SOURCE_BLIND_KEY, "table3-base-0", "table3-base-1"]
        assert sections.wait_for(pool, sections.SOURCE_BLIND_KEY)["key"] == sections.SOURCE_BLIND_KEY  # known: no wait


# ------------------------------------------------------------------------------------- Table 3's held-out verses
def test_table3_heldout_verses_follow_the_subset_and_are_never_trained_on():
    from reproduce.transformer import data as td
    from tests.test_transformer import _tiny_translation_data

    corpus = _tiny_translation_data().corpus
    sub = td.subset_data(corpus, 20, 70, 4, heldout=10)
    ordered = [p.en for p in td.hash_order(list(corpus.train))]
    assert [p.en for p in sub.train.pairs] == ordered[:20] and [p.en for p in sub.heldout.pairs] == ordered[20:30]
    plain = td.subset_data(corpus, 20, 70, 4)
    assert plain.heldout is None and [p.en for p in plain.train.pairs] == ordered[:20]
    assert plain.tokenizer.get_vocab() == sub.tokenizer.get_vocab()  # the vocabulary sees the training verses only
    with pytest.raises(ValueError, match="train_pairs \\+ heldout must be at most 48"):
        td.subset_data(corpus, 40, 70, 4, heldout=10)
    # repeated sentences (the Bible's formulas) sit side by side in hash order: held out once, never if trained on
    repeats = de_en.Corpus(list(corpus.train) + [de_en.Pair(p.en, p.de + " (2)") for p in corpus.train], [], [], {})
    sub = td.subset_data(de_en.Corpus(repeats.train, corpus.dev, [], {}), 20, 70, 4, heldout=10)
    keys = [de_en.split_key(p) for p in sub.heldout.pairs]
    assert len(set(keys)) == 10 and not set(keys) & {de_en.split_key(p) for p in sub.train.pairs}
    with pytest.raises(ValueError, match="only 38 distinct training pairs are left"):
        td.subset_data(de_en.Corpus(repeats.train, corpus.dev, [], {}), 20, 70, 4, heldout=40)


def test_a_table3_row_scores_heldout_verses_after_the_dev_sentences_and_its_curve_the_dev_only():
    from reproduce.transformer import data as td
    from reproduce.transformer import variations
    from tests.test_transformer import _tiny_translation_data

    sub = td.subset_data(_tiny_translation_data().corpus, 20, 70, 4, heldout=6)
    base = TransformerConfig(vocab_size=sub.vocab_size, n_layers=1, d_model=16, d_ff=32, n_heads=2, max_len=128)
    recipe = ex.Recipe(steps=4, batch_tokens=200, warmup=2)
    r = variations.run_table3_row("base", base, sub, recipe, beam=1, alpha=0.6, device="cpu", eval_every=2)
    assert r.heldout == 6 and len(r.dev_nll) == len(r.dev_tokens) == 4 + 6 and len(r.best_dev_nll) == 4
    assert r.dev_ppl == pytest.approx(math.exp(sum(r.dev_nll) / sum(r.dev_tokens)))
    assert r.curve[-1]["dev_ppl"] == pytest.approx(math.exp(sum(r.dev_nll[:4]) / sum(r.dev_tokens[:4])))
    table, _, items = variations.tabulate([r], base, recipe, 2, 2)
    assert items["base"]["best_tokens"] == r.dev_tokens[:4] and table["base"]["heldout"] == 6


def test_table3_best_epoch_claims_pair_the_dev_sentences_with_their_own_token_counts():
    """With held-out verses the last-epoch claim scores dev + held-out, the best-epoch twin the dev verses
    only: each with its own token counts (a shape error otherwise)."""
    from reproduce import config, results
    from reproduce.transformer import variations
    from tests.test_transformer import _t3_row

    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 20, 30)  # 20 dev verses, then 10 held-out verses
    nll = {(row, k): tokens * (lvl + 0.01 * k + rng.normal(0, 0.05, 30))
           for row, lvl in (("base", 4.0), ("A: h=1", 4.2), ("source-blind", 4.6)) for k in (0, 1, 2)}
    table, items = {}, {}
    for row in ("base", "A: h=1", "source-blind"):
        ppl = [math.exp(nll[row, k].sum() / tokens.sum()) for k in (0, 1, 2)]
        best = [math.exp(nll[row, k][:20].sum() / tokens[:20].sum()) for k in (0, 1, 2)]
        table[row] = _t3_row(ppl, [0.5] * 3, best) | {"heldout": 10}
        items[row] = {"nll": [nll[row, k].tolist() for k in (0, 1, 2)],
                      "best_nll": [nll[row, k][:20].tolist() for k in (0, 1, 2)], "tokens": tokens.tolist(),
                      "best_tokens": tokens[:20].tolist(), "bleu_stats": [[] for _ in range(3)]}
    run = results.Run(config.resolve("transformer", "smoke"))
    variations.claim_table3(run, table, items)
    got = {c.id: c for c in run.claims}
    pairs = lambda row, n: [np.column_stack([nll[row, k][:n], tokens[:n]]) for k in (0, 1, 2)]  # noqa: E731
    score = lambda v: math.exp(v[0] / v[1])  # noqa: E731
    assert got["t3_one_head_worse"].ours.value == pytest.approx(claims.seeds_and_items(pairs("A: h=1", 30), pairs("base", 30), score).value)
    assert got["t3_one_head_worse_best"].ours.value == pytest.approx(claims.seeds_and_items(pairs("A: h=1", 20), pairs("base", 20), score).value)
    assert "30 dev sentences" in got["t3_one_head_worse"].ours.method and "20 dev sentences" in got["t3_one_head_worse_best"].ours.method
    assert "20 dev verses + 10 held-out training verses" in got["t3_one_head_worse"].note


def test_bigger_rows_can_run_on_fewer_seeds_and_are_paired_on_the_seeds_they_share():
    from reproduce import config
    from reproduce.transformer import variations
    from tests.test_transformer import _t3_claims, _t3_row

    base = TransformerConfig(vocab_size=50, n_layers=1, d_model=16, d_ff=32, n_heads=2, max_len=64)
    jobs = variations.table3_jobs(["base", "C: d_ff*2", "C: N-"], [0, 1, 2, 3, 4], base, ex.Recipe(steps=2, batch_tokens=100),
                                  beam=1, alpha=0.6, device="cpu", bigger_seeds=3)
    assert [(j.row, j.recipe.seed) for j in jobs if j.row == "C: d_ff*2"] == [("C: d_ff*2", k) for k in (0, 1, 2)]
    assert sum(j.row == "C: N-" for j in jobs) == 5 and sum(j.row == "base" for j in jobs) == 5
    table = {"base": _t3_row([60.0, 61.0, 62.0, 60.5, 61.5], [0.5] * 5),
             "C: d_ff*2": _t3_row([58.0, 59.0, 60.0], [0.5] * 3)}
    bigger = _t3_claims(table)["t3_bigger_better"]
    assert bigger.ours.value == pytest.approx(2.0) and bigger.ours.n == 3
    with pytest.raises(ValueError, match="t3_bigger_seeds' = 4 is more than the 3 t3_seeds"):
        config.resolve("transformer", "smoke", {"t3_bigger_seeds": 4})
    with pytest.raises(ValueError, match="t3_heldout"):
        config.resolve("transformer", "smoke", {"t3_train_pairs": 0, "t3_heldout": 5})


def test_no_dropout_overfitting_compares_the_last_and_best_epochs_on_the_same_dev_verses():
    """With held-out verses the last-epoch PPL covers other verses than the best epoch's; the overfitting
    check must divide the dev-only last point of the curve by the best."""
    from tests.test_transformer import _t3_claims, _t3_row

    table = {"base": _t3_row([60.0, 61.0, 62.0], [0.5] * 3),
             "D: P_drop=0.0": _t3_row([50.0, 51.0, 52.0], [0.5] * 3, best=[60.0, 60.0, 60.0])
             | {"heldout": 10, "last_dev_only_ppl_per_seed": [66.0, 67.0, 68.0]}}
    over = _t3_claims(table)["t3_no_dropout_overfits"]
    assert over.ours.value == pytest.approx(66.0 / 60.0) and over.verdict == "holds"
