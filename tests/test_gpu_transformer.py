"""The transformer gpu profile without a GPU: its wiring on a local WMT14 stand-in, its plan, its checks.

- ``test_gpu_profile_runs_end_to_end_on_a_local_wmt14_standin`` (slow): ``python -m reproduce run
  transformer --profile gpu`` with tiny sizes, reading a local parquet folder laid out as wmt/wmt14
  de-en (``data/{train,validation,test}-00000-of-00001.parquet``, a ``translation`` column of
  {"de": ..., "en": ...} dicts) built from the packaged BEOLINGUS pairs, on CPU with HF_HUB_OFFLINE=1;
  micro-batches (grad_accum 2), checkpoints and a Table 3 worker on.
- The plan of the gpu profile fits an A100 80 GB; an oversized batch without micro-batches is
  refused naming ``grad_accum``; the meta-device measurement equals the real CPU one at small size.
- The loader reads the stand-in compactly (token ids in flat int32 arrays, pairs left in Arrow).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from conftest import run_profile
from reproduce import plan
from reproduce.data import de_en


def wmt14_standin(root, train: int = 1500, dev: int = 40, test: int = 40):
    """A local folder in wmt/wmt14 de-en's layout, from the packaged BEOLINGUS pairs."""
    import pandas as pd

    pairs = list(de_en.beolingus_pairs())
    splits = {"test": pairs[:test], "validation": pairs[test:test + dev], "train": pairs[test + dev:test + dev + train]}
    (root / "data").mkdir(parents=True)
    for name, rows in splits.items():
        pd.DataFrame({"translation": [{"de": p.de, "en": p.en} for p in rows]}).to_parquet(
            root / "data" / f"{name}-00000-of-00001.parquet")
    return splits


def test_the_wmt14_loader_reads_the_standin_compactly(tmp_path, no_network):
    from reproduce import hub
    from reproduce.transformer import data as td

    splits = wmt14_standin(tmp_path / "wmt14", train=300, dev=10, test=12)
    corpus = de_en.wmt14_corpus(str(tmp_path / "wmt14"), None)
    assert isinstance(corpus.train, de_en.ArrowPairs) and len(corpus.train) == 300
    assert corpus.train[5] == splits["train"][5] and list(corpus.train)[:3] == splits["train"][:3]
    assert corpus.dev == splits["validation"] and corpus.test == splits["test"]
    tok = de_en.train_tokenizer(de_en.corpus_texts(corpus.train), 200)
    compact = td.encode_pairs(tok, corpus.train, 100, compact=True, chunk=64)
    plain = td.encode_pairs(tok, list(corpus.train), 100)
    assert isinstance(compact.src, td.Ragged) and compact.src.flat.dtype == np.int32
    assert [list(map(int, r)) for r in compact.src] == plain.src and [list(map(int, r)) for r in compact.tgt] == plain.tgt
    assert [compact.pairs[i] for i in range(len(compact))] == plain.pairs
    with pytest.raises(hub.HubError, match="no split 'dev'") as err:
        de_en.wmt14_corpus(str(tmp_path / "wmt14"), None, dev_split="dev")
    assert err.value.kind == "split" and "\n" not in str(err.value)


@pytest.mark.slow
def test_gpu_profile_runs_end_to_end_on_a_local_wmt14_standin(tmp_path):
    wmt14_standin(tmp_path / "wmt14")
    out = tmp_path / "out"
    tiny = {"wmt_dataset": str(tmp_path / "wmt14"), "wmt_config": "", "vocab_size": 300, "batch_tokens": 600,
            "grad_accum": 2, "n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4, "steps": 8, "warmup": 4,
            "checkpoint_every": 2, "average_last": 3, "eval_every": 4, "threads": 1,
            "t1_width": 32, "t1_lengths": [8, 16, 32, 64], "t1_path_lengths": [4, 8, 16],
            "t3_rows": ["base", "A: h=1"], "t3_epochs": 1, "t3_warmup": 3, "t3_n_layers": 1, "t3_d_model": 32,
            "t3_d_ff": 64, "t3_dev_size": 20, "t3_batch_tokens": 1200, "t3_workers": 1}
    record, wall = run_profile("transformer", "gpu", tiny, out)
    assert record["profile"] == "gpu" and record.get("complete", True) is not False
    m = record["measured"]
    assert m["t2.data"]["train_pairs"] > 1000 and m["t2.data"]["test_pairs"] == 40
    assert m["t2.checkpoints_averaged"] == 3 and len(m["t2.train_loss"]) == 8
    assert set(m["t3.table"]) == {"base", "A: h=1"}
    claims = {c["id"]: c for c in record["claims"]}
    bar = claims["t2_bleu_target"]
    assert bar["threshold"] == 25.3 and "27.3" in bar["source"] and "BEOLINGUS" not in bar.get("note", "")
    assert {"t1_attention_n2", "t2_translates", "t3_one_head_worse"} <= set(claims)
    assert not (out / "runs" / "transformer" / "gpu" / "rows").exists()  # the kept state is dropped once saved
    assert (out / "runs" / "transformer" / "gpu" / "logs").is_dir()  # training curves
    assert wall < 90, f"the gpu-wiring run took {wall:.0f} s"


# ------------------------------------------------------------------------------------------------- plan
def test_plan_of_the_gpu_profile_fits_an_a100_80gb_and_an_oversized_batch_is_refused():
    from reproduce import config, plan

    verdict = plan.make("transformer", config.resolve("transformer", "gpu"), "a100-80gb")
    assert not verdict.too_big, [(s.section, s.peak_bytes) for s in verdict.sections]
    by = {s.section.split(" ")[0]: s for s in verdict.sections}
    assert set(by) == {"2.", "3.", "3b.", "3c.", "4."}
    assert by["3c."].flops < by["3."].flops and by["3c."].parameters < by["3."].parameters  # no encoder
    assert 5e9 < by["3."].peak_bytes < 80e9 and by["3."].flops > 1e17 and by["3."].download_bytes > 5e8
    assert by["4."].gpu_hours(verdict.gpu) > 10 * by["3."].gpu_hours(verdict.gpu) / 2
    big = plan.make("transformer", config.resolve("transformer", "gpu", {"batch_tokens": 200_000}), "a100-80gb")
    assert big.too_big and all("grad_accum" in s.fix for s in big.too_big)
    fixed = plan.make("transformer", config.resolve("transformer", "gpu", {"batch_tokens": 200_000, "grad_accum": 8}))
    assert not fixed.too_big


def test_meta_measurement_equals_the_bytes_saved_on_real_cpu_tensors():
    """At small size, the plan's meta step saves exactly what the same step saves on CPU tensors with
    SDPA's math kernel (the plan's documented upper bound), and at least what the fused kernel saves."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from reproduce.transformer import plan as TP
    from reproduce.transformer.model import Transformer, TransformerConfig, label_smoothed_loss

    cfg = TransformerConfig(vocab_size=97, n_layers=2, d_model=32, d_ff=64, n_heads=4, p_drop=0.1, max_len=64)
    meta = TP._step(cfg, 4 * TP.PLAN_LENGTH)

    def real_saved(backends) -> int:
        torch.manual_seed(0)
        model = Transformer(cfg)
        src = torch.randint(3, 97, (4, TP.PLAN_LENGTH))
        tgt = torch.randint(3, 97, (4, TP.PLAN_LENGTH + 1))
        with sdpa_kernel(backends), plan.count_saved() as saved:
            loss = label_smoothed_loss(model(src, tgt[:, :-1]), tgt[:, 1:], cfg.label_smoothing, 0)
        loss.backward()
        return saved.bytes

    assert meta.saved_bytes == real_saved([SDPBackend.MATH])
    assert real_saved([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]) <= meta.saved_bytes


# ----------------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize("overrides, names", [
    ({"batch_tokens": 100, "grad_accum": 4}, "'batch_tokens' and 'grad_accum'"),
    ({"t3_batch_tokens": 100, "grad_accum": 2}, "'t3_batch_tokens' and 'grad_accum'"),
    ({"steps": 10, "checkpoint_every": 5, "average_last": 3}, "average_last"),
    ({"train_pairs": 500, "t3_train_pairs": 600}, "t3_train_pairs"),
    ({"corpus": "wmt14", "with_bible": True}, "with_bible"),
])
def test_spec_checks_refuse_combinations_that_would_fail_late(overrides, names):
    from reproduce import config

    with pytest.raises(config.ParamError, match=names):
        config.resolve("transformer", "smoke", overrides)


# ----------------------------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def test_a_killed_training_continues_from_its_last_checkpoint_with_the_same_result(tmp_path, monkeypatch):
    """train_translation into a checkpoint folder, killed after step 4 of 6 (checkpoints every 2), then
    run again: it continues from step 4 and ends with the losses, curve and weights of an uninterrupted run."""
    from test_transformer import _tiny_translation_data

    from reproduce.transformer import experiments as ex
    from reproduce.transformer.model import TransformerConfig

    monkeypatch.setenv("REPRODUCE_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    data = _tiny_translation_data()
    cfg = TransformerConfig(vocab_size=data.vocab_size, n_layers=1, d_model=16, d_ff=32, n_heads=4, max_len=64)
    recipe = ex.Recipe(steps=6, batch_tokens=120, warmup=2, checkpoint_every=2, average_last=2, grad_accum=2)
    fresh = ex.train_translation(cfg, data, recipe, device="cpu", eval_every=2)

    real = ex.token_batches

    def dying(*args, **kwargs):  # the 9th micro-batch (step 5 of 6, 2 per step) kills the run
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 8:
                raise Killed
            yield batch

    ckpt = tmp_path / "runs" / "checkpoints" / "table2"
    monkeypatch.setattr(ex, "token_batches", dying)
    with pytest.raises(Killed):
        ex.train_translation(cfg, data, recipe, device="cpu", eval_every=2, checkpoint_dir=ckpt)
    assert sorted(p.name for p in ckpt.glob("step_*"))[-1].endswith("4")
    monkeypatch.setattr(ex, "token_batches", real)
    resumed = ex.train_translation(cfg, data, recipe, device="cpu", eval_every=2, checkpoint_dir=ckpt)
    assert resumed.losses == pytest.approx(fresh.losses, abs=1e-6)
    assert [c["dev_ppl"] for c in resumed.curve] == pytest.approx([c["dev_ppl"] for c in fresh.curve], rel=1e-5)
    for k, v in fresh.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)
    assert len(resumed.checkpoints) == 2
