"""The flava gpu profile without a GPU: its wiring on local stand-ins, its plan, resume of a pretraining.

- ``test_gpu_profile_runs_end_to_end_on_local_stand_ins`` (slow): ``python -m reproduce run flava
  --profile gpu`` with tiny sizes, reading a local parquet folder laid out as lmms-lab/flickr30k
  (``data/test-00000-of-00001.parquet``: ``image`` as a datasets Image, ``caption`` a list of five,
  ``sentids``, ``img_id``, ``filename``) and a tiny FLAVA saved with ``save_pretrained`` in place of
  facebook/flava-full, on CPU with HF_HUB_OFFLINE=1; micro-batches and checkpoints on.
- The plan of the gpu profile fits an A100 80 GB; an oversized micro-batch is refused naming the fix;
  the meta-device measurement equals the real CPU one at small size and bounds ``objectives.losses``.
- A pretraining killed after a checkpoint and run again returns what an uninterrupted one does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_profile
from reproduce.data import scenes
from reproduce.flava import ablation as A
from reproduce.flava import data as D
from reproduce.flava import model as M
from reproduce.flava import objectives as O

TINY = M.FlavaSizes(image_size=32, patch_size=8, hidden=32, heads=2, mlp=64, image_layers=1, text_layers=1,
                    multimodal_layers=1, projection_dim=16, codebook_size=16, vocab_size=200, max_text_len=20)
WORDS = ["a", "an", "the", "red", "blue", "green", "circle", "square", "left", "of", "right", "above", "below", "and"]


def flickr30k_standin(root, n: int = 40, seed: int = 0):
    """A local folder in lmms-lab/flickr30k's layout: one split ``test``, five captions per image."""
    import io

    import datasets
    from PIL import Image

    made = scenes.make_scenes(n, 48, seed)
    pngs = []
    for image in made.images:
        buf = io.BytesIO()
        Image.fromarray(image[:, 4:]).save(buf, format="PNG")  # 48 x 44: not square, as photos are not
        pngs.append({"bytes": buf.getvalue(), "path": None})
    table = datasets.Dataset.from_dict({
        "image": pngs,
        "caption": [[c, f"{c} again", "another caption", "a fourth", "a fifth"] for c in made.captions],
        "sentids": [[str(5 * i + k) for k in range(5)] for i in range(n)],
        "img_id": [str(i) for i in range(n)], "filename": [f"{i}.jpg" for i in range(n)],
    }).cast_column("image", datasets.Image())
    (root / "data").mkdir(parents=True)
    table.to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return made.captions


def tiny_released_flava(root):
    """A tiny FlavaForPreTraining and its processor, saved as facebook/flava-full would be."""
    from transformers import BertTokenizerFast, FlavaImageProcessor, FlavaProcessor

    root.mkdir(parents=True)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    side = {"height": TINY.image_size, "width": TINY.image_size}
    FlavaProcessor(image_processor=FlavaImageProcessor(size=side, crop_size=side), tokenizer=tokenizer).save_pretrained(root)
    sizes = M.FlavaSizes(**{**TINY.__dict__, "vocab_size": len(tokenizer), "max_text_len": 77})
    M.build_model(sizes, 0).save_pretrained(root)
    return root


def test_the_local_standin_reads_as_the_hub_dataset_would(tmp_path):
    """Fast: hub_pairs on the stand-in folder (no hub): square uint8 images, the first caption of each list."""
    from reproduce.data import pmd

    captions = flickr30k_standin(tmp_path / "flickr")
    out = pmd.hub_pairs(str(tmp_path / "flickr"), [], 12, 32, split="test", seed=0)
    assert out.images.shape == (12, 32, 32, 3) and out.images.dtype == np.uint8
    assert set(out.captions) <= set(captions) and len(set(out.captions)) == 12
    from reproduce import hub

    with pytest.raises(hub.HubError, match="no split 'train'") as err:
        pmd.hub_pairs(str(tmp_path / "flickr"), [], 12, 32, split="train")
    assert err.value.kind == "split"


@pytest.mark.slow
def test_gpu_profile_runs_end_to_end_on_local_stand_ins(tmp_path):
    flickr_captions = flickr30k_standin(tmp_path / "flickr")
    released = tiny_released_flava(tmp_path / "flava-full")
    out = tmp_path / "out"
    tiny = {"image_size": 32, "patch_size": 8, "hidden": 32, "heads": 2, "mlp": 64, "image_layers": 1, "text_layers": 1,
            "multimodal_layers": 1, "projection_dim": 16, "codebook_size": 16, "vocab_size": 300, "max_text_len": 24,
            "n_pairs": 32, "n_images": 32, "n_text": 64, "emoji_prob": 0.0, "vq_fit_images": 16,
            "rows": ["MIM", "MLM", "FLAVA_MM", "FLAVA", "FLAVA+init"], "seeds": [0], "steps": 2, "batch_size": 8,
            "micro_batch": 4, "warmup": 1, "checkpoint_every": 1, "n_probe": 30, "n_retrieval": 12,
            "finetune_steps": 2, "threads": 1, "pairs_dataset": str(tmp_path / "flickr"), "flava_model": str(released)}
    record, wall = run_profile("flava", "gpu", tiny, out)
    assert record["profile"] == "gpu" and record.get("complete", True) is not False
    measured = record["measured"]
    assert measured["data"]["pairs"] == 32 and measured["data"]["codebook"] == 16
    full = measured["hf_path.flava_full"]  # the stand-in of facebook/flava-full, loaded and scored
    assert full["loaded"] and full["parameters"] > 0 and set(full["zero_shot_heldout_scenes"]) == {"TR R@1", "IR R@1", "TR R@5", "IR R@5"}
    rows = {r["row"] for r in measured["table3.per_seed"]}
    assert rows == {"untrained", "MIM", "MLM", "FLAVA_MM", "FLAVA", "FLAVA+init"}
    assert {"global_contrastive", "itm", "mmm_image", "mmm_text", "total"} <= set(measured["pretraining.losses"]["FLAVA"])
    assert {c["id"] for c in record["claims"]} >= {"hf_losses_agree", "table3_init_improves_full", "itm_heldout_above_chance"}
    assert {c["id"]: c["verdict"] for c in record["claims"]}["hf_losses_agree"] == "holds"
    assert not (out / "runs" / "flava" / "gpu" / "rows").exists()  # the kept state is dropped once saved
    assert (out / "runs" / "flava" / "gpu" / "logs").is_dir()  # training curves
    assert wall < 150, f"the gpu-wiring run took {wall:.0f} s"
    assert measured["retrieval.examples"]  # the retrieval section ran on held-out scenes
    del flickr_captions


# ------------------------------------------------------------------------------------------------- plan
def test_plan_of_the_gpu_profile_fits_an_a100_80gb_and_an_oversized_micro_batch_is_refused():
    from reproduce import config, plan

    verdict = plan.make("flava", config.resolve("flava", "gpu"), "a100-80gb")
    assert not verdict.too_big, [(s.section, s.peak_bytes) for s in verdict.sections]
    names = [s.section for s in verdict.sections]
    assert names[0].startswith("1.") and any(n.startswith("2. Table 3") for n in names)
    table3 = next(s for s in verdict.sections if s.section.startswith("2."))
    assert 20e9 < table3.peak_bytes < 80e9 and table3.flops > 1e19 and table3.gpu_hours(verdict.gpu) > 10
    assert verdict.sections[0].download_bytes > 4e9  # Flickr30K's parquet files
    big = plan.make("flava", config.resolve("flava", "gpu", {"micro_batch": 256}), "a100-80gb")
    assert [s.section for s in big.too_big] == [table3.section] and "micro_batch" in big.too_big[0].fix


def test_meta_measurement_equals_real_cpu_tensors_and_bounds_the_real_losses():
    """The plan's paired step on the meta device saves exactly the bytes it saves on CPU tensors, and at
    least what ``objectives.losses`` (masked heads, mined negatives) saves, within 25 %."""
    from reproduce import plan as P
    from reproduce.flava import plan as FP

    b = 8
    meta = P.step_cost(lambda: M.build_model(TINY, 0), lambda m: FP.paired_step(m, TINY, b))

    def real_saved(fn) -> int:
        model = M.build_model(TINY, 0)
        with P.count_saved() as saved:
            loss = fn(model)
        loss.backward()
        return saved.bytes

    assert meta.saved_bytes == real_saved(lambda m: FP.paired_step(m, TINY, b, device="cpu"))
    captions = scenes.make_scenes(120, 32, 5).captions
    texts = D.TextSources(pretrain=[f"{c} and then more words." for c in captions], austen_heldout=[], melville_heldout=[])
    data = D.build_pretrain_data(TINY, n_pairs=64, n_images=32, n_text=32, emoji_prob=0.0, seed=0, texts=texts)
    batch = D.BatchSampler(data, TINY, batch_size=b, seed=0, itm_negative_prob=0.0).paired()
    every = O.Objectives(mim=True, mlm=True, gc=True, mmm=True, itm=True)
    real = real_saved(lambda m: O.losses(m, batch, every, gather=False, itm_negatives="mined",
                                         generator=torch.Generator().manual_seed(0)).total())
    assert real <= meta.saved_bytes <= 1.25 * real


# ----------------------------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


class DyingSampler(D.BatchSampler):
    """A sampler that dies at its ``die_at``-th draw, as a run killed mid-training."""

    die_at = 0

    def draw(self, row):
        self.draws = getattr(self, "draws", 0) + 1
        if self.die_at and self.draws == self.die_at:
            raise Killed
        return super().draw(row)


def test_a_killed_pretraining_resumes_from_its_checkpoint_with_the_same_result(tmp_path):
    from reproduce.flava.pretraining import FlavaTrainConfig, pretrain

    captions = scenes.make_scenes(120, 32, 5).captions
    texts = D.TextSources(pretrain=[f"{c} and then more words." for c in captions], austen_heldout=[], melville_heldout=[])
    data = D.build_pretrain_data(TINY, n_pairs=64, n_images=32, n_text=32, emoji_prob=0.0, seed=0, texts=texts)
    row = A.table3_rows()["FLAVA"]

    def run(checkpoints, die_at=0):
        sampler = DyingSampler(data, TINY, 8, seed=1, itm_negative_prob=0.0)
        sampler.die_at = die_at
        model = M.build_model(TINY, 0)
        cfg = FlavaTrainConfig(steps=4, batch_size=8, micro_batch=4, warmup=1, itm_negatives="mined", seed=0,
                               checkpoint_every=2, checkpoint_dir=checkpoints)
        return pretrain(model, row, sampler, cfg, "cpu"), model

    whole, model = run(tmp_path / "a")
    with pytest.raises(Killed):
        run(tmp_path / "b", die_at=4)  # during update 4 (updates 1-2 are checkpointed)
    again, resumed = run(tmp_path / "b")
    assert json.dumps(again) == json.dumps(whole)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
