"""Our FLAVA objective code vs Hugging Face's ``FlavaForPreTraining.forward`` (one training step each).

Both run forward + backward on the same paired batch of the cpu profile's sizes (32 px, width 64,
2+2+1 layers, batch 64). HF's forward always runs the unmasked and the masked (multimodal) pass;
ours runs only the passes the objectives need, so FLAVA_C (GC only) skips the masked multimodal
pass. Before timing, the losses are checked equal on a batch without ITM negatives. Prints the time
per step of each and the ratio ours / HF, measured in this run.

    python benchmarks/flava_objectives.py [--batch 64 --hidden 64 --repeats 10 --threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from reproduce.data import scenes
from reproduce.flava import data as D
from reproduce.flava import model as M
from reproduce.flava import objectives as O


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = M.FlavaSizes(image_size=32, patch_size=8, hidden=args.hidden, heads=2, mlp=4 * args.hidden, image_layers=2,
                         text_layers=2, multimodal_layers=1, projection_dim=args.hidden, codebook_size=128,
                         vocab_size=1000, max_text_len=24)
    captions = scenes.make_scenes(1000, 32, 1).captions
    texts = D.TextSources(pretrain=captions, austen_heldout=[], melville_heldout=[])
    data = D.build_pretrain_data(sizes, n_pairs=2000, n_images=64, n_text=256, emoji_prob=0.0, seed=0, texts=texts)
    batch = D.BatchSampler(data, sizes, args.batch, seed=0).paired()
    ids = batch.itm_ids_masked.where(batch.mlm_labels.eq(O.CE_IGNORE), batch.mlm_labels)
    same_text = O.PairedBatch(batch.pixel_values, ids, batch.itm_attention_mask, batch.image_tokens, batch.bool_masked_pos,
                              batch.itm_ids_masked, batch.itm_attention_mask, batch.mlm_labels, torch.ones_like(batch.itm_labels))
    model = M.build_model(sizes, seed=0).train()
    everything = O.Objectives(gc=True, mmm=True, itm=True)
    ours = dict(O.losses(model, same_text, everything, gather=False).items())
    theirs = O.hf_pretraining_losses(model, same_text)
    gap = max(abs(ours[k].item() - theirs[k].item()) for k in theirs)
    assert gap <= 1e-5, f"losses differ by {gap}"

    def step(loss_fn):
        def run():
            model.zero_grad(set_to_none=True)
            loss_fn().backward()
        return run

    hf = _time(step(lambda: sum(O.hf_pretraining_losses(model, batch).values())), args.repeats)
    print(f"paired batch {args.batch}, width {args.hidden}, {args.threads} thread(s); losses equal to {gap:.1e}")
    print(f"  HF FlavaForPreTraining.forward (all paired losses): {hf * 1e3:8.1f} ms/step")
    for name, objectives in (("FLAVA_MM (GC+MMM+ITM)", everything), ("FLAVA_C (GC only)", O.Objectives(gc=True))):
        t = _time(step(lambda: O.losses(model, batch, objectives, gather=False).total()), args.repeats)
        print(f"  ours, {name:22s}: {t * 1e3:8.1f} ms/step   ours/HF = {t / hf:.2f}")


if __name__ == "__main__":
    main()
