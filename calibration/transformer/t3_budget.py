"""Table 3 budget calibration (issue #31): does a Table 3 row read its source within its budget?

Each Table 3 (row, seed) gets ~2 CPU-minutes in the cpu profile (7 rows x 3 seeds beside the Table 2
model and its source-blind control, 45 min on 2 cores). This script trains Table 3 rows exactly as the
record does (``reproduce.transformer.data.subset_data`` + ``experiments.train_translation`` +
``variations.table3_config``, the source-blind control as ``"source-blind"``) on the Bible training books
and scores them on the dev books (Joshua + Romans; the test books are never read here), for a training
subset (``--pairs``, optionally only verses of at most ``--max_words`` English words, train and dev
alike) and a step budget (``--steps``, rounded to whole epochs). Seed 100 (the record uses 0, 1, 2).

    .venv/bin/python calibration/transformer/t3_budget.py --pairs 2000 --max_words 20 --steps 950 \
        --rows base,source-blind --tag w20_p2000

One JSON line per row is appended to ``calibration/transformer/runs/t3_budget.jsonl``: the settings, the
dev-PPL curve (every epoch), dev BLEU (beam 4, last checkpoint, as Table 3), train and decode seconds.
Run it with one torch thread, as the record's workers (this script sets it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reproduce.data import de_en
from reproduce.transformer import data as td
from reproduce.transformer.experiments import Recipe, evaluate_bleu, train_translation
from reproduce.transformer.model import TransformerConfig
from reproduce.transformer.variations import table3_config

OUT = Path(__file__).resolve().parent / "runs" / "t3_budget.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--max_words", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--steps", type=int, default=950)
    ap.add_argument("--batch_tokens", type=int, default=1000)
    ap.add_argument("--d_model", type=int, default=128)
    ap.add_argument("--d_ff", type=int, default=512)
    ap.add_argument("--rows", default="base,source-blind")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sub = td.subset_data(de_en.bible_book_corpus(), args.pairs, args.vocab, args.dev, max_words=args.max_words)
    epoch = td.batches_per_epoch(sub.train, args.batch_tokens)
    epochs = max(1, round(args.steps / epoch))
    base = TransformerConfig(vocab_size=sub.vocab_size, n_layers=2, d_model=args.d_model, d_ff=args.d_ff, n_heads=8,
                             p_drop=0.1, label_smoothing=0.1, max_len=512)
    for row in args.rows.split(","):
        t0 = time.time()
        trained = train_translation(table3_config(base, row), sub, Recipe(steps=epochs * epoch, batch_tokens=args.batch_tokens,
                                    warmup=400, seed=args.seed), device="cpu", eval_every=epoch)
        t1 = time.time()
        bleu = evaluate_bleu(trained.model, sub, "dev", 4, 0.6)["bleu"]
        line = {"tag": args.tag, "row": row, "seed": args.seed, "pairs": args.pairs, "max_words": args.max_words,
                "vocab": sub.vocab_size, "dev": len(sub.dev), "batch_tokens": args.batch_tokens, "d_model": args.d_model,
                "epochs": epochs, "steps": epochs * epoch, "train_s": round(t1 - t0, 1),
                "decode_s": round(time.time() - t1, 1), "dev_ppl_curve": [round(c["dev_ppl"], 2) for c in trained.curve],
                "dev_bleu": round(bleu, 2)}
        with OUT.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
