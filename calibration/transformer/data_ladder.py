"""Issue #31, data ladder (calibration only, seed 100: disjoint from the record's seeds 0, 1, 2).

Question: with the cpu profile's model (d_model 128, N 2, h 8, d_ff 512) and a regularised low-resource
recipe (P_drop 0.3, label smoothing 0.1, joint BPE 4000 trained on the training split only), does an
*in-domain held-out* test set -- whole Bible books that are not in training -- give a model that
translates (dev BLEU >= 5 and model - retrieval > 0 with a paired bootstrap interval above 0)?

Rungs (one per invocation, or a comma list, one process, one torch thread):
  a  train on the Bible verses of every book except the held-out ones (WEB -> Elberfelder 1932).
  b  the same Bible training verses + the BEOLINGUS training split (de_en.load_corpus's hash split,
     so BEOLINGUS dev/test stay out); the same held-out Bible dev books.
  a with ``--p_drop 0.1 --tag _p01``: rung a with the paper's dropout instead of 0.3 (the runs are far from
     converged, so the question is whether the low-resource regulariser slows learning at this budget).
     ``--seed 101`` repeats it on a second calibration seed (init and batch order; the data are the same).

Source-blind control (``--source_blind``): the same model, data, seed, batches and schedule, but the
encoder's output (the decoder's memory) is replaced by zeros everywhere -- in training, dev perplexity,
greedy and beam decoding (``SourceBlindTransformer.encode``). With a zero memory every cross-attention key
and value is its projection bias, so attention is uniform over identical vectors and returns the same
vector for every sentence and every source length: the decoder is a target-side language model that reads
nothing of the source. The only thing of the source that still reaches the output is the decoders' length
cap (source tokens + 50), the same cap the model has. The encoder's parameters are built (so the decoder's
initialisation is the same as the model's for the same seed) but never used. ``--compare RUN.json`` then
reports RUN's hypotheses minus this run's, per decoding (same paired bootstrap as model - retrieval).

Held-out books. ``reproduce.data.bible.aligned_pairs`` (the function ``de_en.bible_pairs`` uses) carries
the book number of every verse pair (1 = Genesis .. 66 = Revelation), so no book identity has to be
derived: dev = Joshua (6) + Romans (45) (1,091 verses: OT narrative + a Pauline letter), test = 1 Samuel
(9) + 1 Corinthians (46) (1,247 verses, the same two genres; *never decoded or scored by this script*).
Training = every other book. Known overlaps: Judges 1 repeats a few verses of Joshua 15, 1 Chronicles 10
repeats 1 Samuel 31; the retrieval baseline picks such near-copies up, so they are counted in its favour.

Dev scores (sacrebleu corpus BLEU, default 13a signature, detokenised text):
  * the model: last checkpoint and the average of the last 5 checkpoints (every ``--ckpt_every`` steps),
    greedy and beam 4 / alpha 0.6; max output length = source tokens + 50 (the package's decoders);
  * copy baseline: the English source as output;
  * retrieval baseline: the German of the training pair whose English word set (lower-cased ``\\w+``
    tokens) has the largest Jaccard overlap with the dev English (ties: the first in training order);
  * model - retrieval: ``reproduce.transformer.experiments.bleu_difference`` (paired bootstrap over dev
    sentences, 1000 resamples, sacrebleu sentence statistics summed per resample);
  * dev perplexity per wordpiece (``experiments.perplexity``).

Training: the package's pieces (``model.Transformer``, ``label_smoothed_loss``, ``noam_lr`` = eq. (3) with
warm-up ``--warmup``, Adam 0.9/0.98/1e-9, ``data.token_batches`` length-bucketed batches) in a plain loop
that stops at a wall-clock budget (``--minutes``) or ``--steps``, whichever comes first, so that a rung
fits a fixed time; the step count reached is reported. Nothing under reproduce/ is changed.

Usage:
  .venv/bin/python calibration/transformer/data_ladder.py --rungs a --minutes 20
  .venv/bin/python calibration/transformer/data_ladder.py --rungs b --minutes 20
  .venv/bin/python calibration/transformer/data_ladder.py --rungs a --p_drop 0.1 --tag _p01 --minutes 18
  .venv/bin/python calibration/transformer/data_ladder.py --rungs a --p_drop 0.1 --tag _p01 --minutes 18 --seed 101
  .venv/bin/python calibration/transformer/data_ladder.py --rungs a --p_drop 0.1 --tag _p01_blind --source_blind \
      --minutes 18 --steps 3523 --compare calibration/transformer/runs/a_p01_seed100.json
Results (JSON with dev hypotheses) go to calibration/transformer/runs/<rung>_seed<seed>.json; the table
and what it says: calibration/transformer/data_ladder.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import defaultdict
from pathlib import Path

import torch

from reproduce.data import bible, de_en
from reproduce.transformer import data as tdata
from reproduce.transformer import experiments
from reproduce.transformer.decoding import average_checkpoints
from reproduce.transformer.model import Transformer, TransformerConfig, label_smoothed_loss, noam_lr

DEV_BOOKS = (6, 45)  # Joshua, Romans
TEST_BOOKS = (9, 46)  # 1 Samuel, 1 Corinthians -- held out, never scored here
OUT_DIR = Path(__file__).resolve().parent / "runs"


def bible_splits() -> tuple[list[de_en.Pair], list[de_en.Pair], list[de_en.Pair]]:
    """(train, dev, test) Bible verse pairs by whole books (see the module docstring)."""
    train, dev, test = [], [], []
    for p in bible.aligned_pairs("4", "e"):  # WEB -> Elberfelder 1932, as de_en.bible_pairs
        pair = de_en.Pair(p.src, p.tgt)
        (dev if p.book in DEV_BOOKS else test if p.book in TEST_BOOKS else train).append(pair)
    return train, dev, test


def rung_corpus(rung: str) -> de_en.Corpus:
    train, dev, test = bible_splits()
    sources = {"bible": len(train)}
    if rung == "b":
        beol = de_en.load_corpus(dev_size=1000, test_size=1000).train  # the record's BEOLINGUS training split
        train = train + beol
        sources["beolingus"] = len(beol)
    elif rung != "a":
        raise ValueError(f"unknown rung {rung!r}")
    return de_en.Corpus(train, dev, test, sources)


def prepare(corpus: de_en.Corpus, vocab_size: int, max_tokens: int = 100) -> tdata.TranslationData:
    """Joint BPE on the training split only; dev encoded in full; test is *not* encoded (never used)."""
    tok = de_en.train_tokenizer(de_en.corpus_texts(corpus.train), vocab_size)
    return tdata.TranslationData(
        tok, tdata.encode_pairs(tok, corpus.train, max_tokens), tdata.encode_pairs(tok, corpus.dev, 10**6),
        tdata.EncodedPairs([], [], []), corpus)


# ---------------------------------------------------------------- baselines

_WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def retrieval(train: list[de_en.Pair], queries: list[str]) -> list[str]:
    """German of the training pair with the largest word-set Jaccard overlap with each query."""
    sets = [words(p.en) for p in train]
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for w in s:
            index[w].append(i)
    out = []
    for q in queries:
        qs = words(q)
        inter: dict[int, int] = defaultdict(int)
        for w in qs:
            for i in index.get(w, ()):
                inter[i] += 1
        best, best_j = 0, -1.0
        for i, k in inter.items():
            j = k / (len(qs) + len(sets[i]) - k)
            if j > best_j or (j == best_j and i < best):
                best, best_j = i, j
        out.append(train[best].de)
    return out


# ---------------------------------------------------------------- source-blind control

class SourceBlindTransformer(Transformer):
    """The same Transformer with its encoder output replaced by zeros (see the module docstring)."""

    def encode(self, src, need_weights: bool = False):
        b, s = src.shape
        return torch.zeros(b, s, self.cfg.d_model, device=src.device), []


# ---------------------------------------------------------------- training

def train_loop(cfg: TransformerConfig, data: tdata.TranslationData, seed: int, batch_tokens: int, warmup: int,
               minutes: float, max_steps: int, ckpt_every: int, keep: int, eval_every: int, log,
               model_cls: type = Transformer) -> dict:
    torch.manual_seed(seed)
    model = model_cls(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: noam_lr(i + 1, cfg.d_model, warmup))
    batches = tdata.token_batches(data.train, batch_tokens, seed)
    ckpts, curve, losses = [], [], []
    t0, step, eval_s = time.time(), 0, 0.0
    budget = minutes * 60
    while step < max_steps and time.time() - t0 - eval_s < budget:
        model.train()
        b = next(batches)
        logits = model(b["src"], b["tgt"][:, :-1])
        loss = label_smoothed_loss(logits, b["tgt"][:, 1:], cfg.label_smoothing, tdata.PAD_ID)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % ckpt_every == 0:
            ckpts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            ckpts = ckpts[-keep:]
        if eval_every and step % eval_every == 0:
            e0 = time.time()
            ppl = experiments.perplexity(model, data.dev)
            eval_s += time.time() - e0
            curve.append({"step": step, "dev_ppl": ppl, "train_loss": sum(losses[-100:]) / len(losses[-100:])})
            log(f"step {step}  train loss {curve[-1]['train_loss']:.3f}  dev ppl {ppl:.2f}  "
                f"{(time.time() - t0 - eval_s) / step:.3f} s/step")
    train_s = time.time() - t0 - eval_s
    if not ckpts or step % ckpt_every:
        ckpts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        ckpts = ckpts[-keep:]
    avg = model_cls(cfg)
    avg.load_state_dict(average_checkpoints(ckpts))
    return {"model": model.eval(), "averaged": avg.eval(), "steps": step, "train_s": train_s, "eval_s": eval_s,
            "curve": curve, "n_averaged": len(ckpts)}


# ---------------------------------------------------------------- one rung

def run_rung(rung: str, args, log) -> dict:
    t_start = time.time()
    corpus = rung_corpus(rung)
    if args.dev_limit:  # smoke runs only
        corpus = de_en.Corpus(corpus.train, corpus.dev[:args.dev_limit], corpus.test, corpus.sources)
    data = prepare(corpus, args.vocab)
    log(f"rung {rung}: train pairs {len(corpus.train)} ({corpus.sources}), kept {len(data.train)} "
        f"(<{100} tokens); dev {len(data.dev)}; vocab {data.vocab_size}; prep {time.time() - t_start:.0f}s")
    refs = [p.de for p in data.dev.pairs]
    srcs = [p.en for p in data.dev.pairs]
    res: dict = {"rung": rung, "seed": args.seed, "train_pairs": len(corpus.train), "train_pairs_kept": len(data.train),
                 "sources": corpus.sources, "dev_books": DEV_BOOKS, "dev_sentences": len(refs), "vocab": data.vocab_size,
                 "source_blind": bool(args.source_blind), "args": vars(args)}
    copy_bleu, sig = experiments.bleu(srcs, refs)
    t0 = time.time()
    retr = retrieval(list(corpus.train), srcs)
    retr_bleu, _ = experiments.bleu(retr, refs)
    res.update(signature=sig, copy_bleu=copy_bleu, retrieval_bleu=retr_bleu)
    log(f"copy {copy_bleu:.2f}  retrieval {retr_bleu:.2f} ({time.time() - t0:.0f}s)  {sig}")

    cfg = TransformerConfig(vocab_size=data.vocab_size, n_layers=args.n_layers, d_model=args.d_model,
                            d_ff=args.d_ff, n_heads=args.heads, p_drop=args.p_drop, label_smoothing=args.ls)
    tr = train_loop(cfg, data, args.seed, args.batch_tokens, args.warmup, args.minutes, args.steps,
                    args.ckpt_every, 5, args.eval_every, log,
                    SourceBlindTransformer if args.source_blind else Transformer)
    bpe = tdata.batches_per_epoch(data.train, args.batch_tokens, args.seed)
    res.update(batches_per_epoch=bpe, epochs=tr["steps"] / bpe)
    res.update(steps=tr["steps"], train_s=tr["train_s"], eval_during_train_s=tr["eval_s"], curve=tr["curve"],
               n_averaged=tr["n_averaged"])
    hyps = {"retrieval": retr}
    for which in ("averaged", "last"):
        m = tr["averaged"] if which == "averaged" else tr["model"]
        ppl = experiments.perplexity(m, data.dev)
        res[f"{which}_dev_ppl"] = ppl
        for beam in ((1, args.beam) if which == "averaged" else (1,)):
            t0 = time.time()
            h = experiments.translate(m, data.dev, data.detokenize, beam, args.alpha, desc=f"{which} beam {beam}")
            score, _ = experiments.bleu(h, refs)
            d = experiments.bleu_difference(h, retr, refs, resamples=1000, seed=0)
            name = f"{which}_{'greedy' if beam == 1 else f'beam{beam}'}"
            hyps[name] = h
            res[name] = {"bleu": score, "minus_retrieval": d.value, "ci95": [d.low, d.high], "decode_s": time.time() - t0}
            log(f"{name}: dev BLEU {score:.2f}  minus retrieval {d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]  "
                f"dev ppl {ppl:.2f}  ({time.time() - t0:.0f}s)")
    if args.compare:  # the named run's hypotheses minus this run's, per decoding both have
        other = json.loads(Path(args.compare).read_text())
        assert [s["ref"] for s in other["samples"]] == [refs[i] for i in range(0, len(refs), 100)], "different dev set"
        res["compare"] = {"run": str(args.compare)}
        for name, h in hyps.items():
            if name == "retrieval" or name not in other["hypotheses"]:
                continue
            d = experiments.bleu_difference(other["hypotheses"][name], h, refs, resamples=1000, seed=0)
            res["compare"][name] = {"other_bleu": other[name]["bleu"], "this_bleu": res[name]["bleu"],
                                    "other_minus_this": d.value, "ci95": [d.low, d.high]}
            log(f"compare {name}: {Path(args.compare).name} {other[name]['bleu']:.2f} minus this {res[name]['bleu']:.2f} "
                f"= {d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]")
    res["wall_s"] = time.time() - t_start
    res["samples"] = [{"en": srcs[i], "ref": refs[i], **{k: v[i] for k, v in hyps.items()}} for i in range(0, len(refs), 100)]
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"{rung}{args.tag}_seed{args.seed}{'_smoke' if args.dev_limit else ''}.json"
    out.write_text(json.dumps({**res, "hypotheses": hyps}, ensure_ascii=False, indent=1))
    log(f"wrote {out}  (wall {res['wall_s'] / 60:.1f} min)")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rungs", default="a", help="comma list of rungs: a, b")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall budget (dev-PPL evals excluded)")
    ap.add_argument("--steps", type=int, default=10**9, help="step cap")
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--d_model", type=int, default=128)
    ap.add_argument("--n_layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--d_ff", type=int, default=512)
    ap.add_argument("--p_drop", type=float, default=0.3)
    ap.add_argument("--ls", type=float, default=0.1)
    ap.add_argument("--batch_tokens", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--ckpt_every", type=int, default=100)
    ap.add_argument("--eval_every", type=int, default=250)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the output name for a variant of a rung, e.g. _p01")
    ap.add_argument("--source_blind", action="store_true",
                    help="control: the encoder output is replaced by zeros (the decoder never reads the source)")
    ap.add_argument("--compare", default="", help="a run JSON: report its hypotheses minus this run's (paired bootstrap)")
    ap.add_argument("--dev_limit", type=int, default=0, help="smoke runs: score only the first N dev verses (0 = all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    for rung in args.rungs.split(","):
        run_rung(rung.strip(), args, log)


if __name__ == "__main__":
    main()
