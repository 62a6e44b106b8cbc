"""The RetNet gpu profile without a GPU or the hub: its wiring on a local WikiText stand-in, and its plan.

Stand-in: a parquet folder in the hub layout of ``Salesforce/wikitext`` (``data/<split>-00000-of-00001.parquet``,
splits train / validation / test, one column ``text`` of WikiText-style lines: `` = Title = \\n`` headings,
empty rows, `` paragraph \\n`` rows) made from the packaged novels. The gpu profile runs end to end on
the CPU at tiny sizes; the memory model of :mod:`reproduce.retnet.plan` is checked against CPU tensors.
"""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest
import torch

from conftest import run_profile
from reproduce import config, plan
from reproduce.retnet import data, plan as retnet_plan
from reproduce.retnet import language_models as lms
from reproduce.retnet.baselines import LMShape, build_model
from reproduce.rundir import row_key

TINY = {"decode_lengths": [16, 32], "decode_batch": 2, "decode_steps": 2, "cost_hidden": 32, "cost_layers": 1,
        "cost_heads": 2, "train_lengths": [32, 64], "train_hidden": 32, "train_heads": 2, "train_batch": 1,
        "train_chunk": 16, "train_reps": 1, "forms_length": 9, "forms_chunks": [1, 4, 9],
        "lm_vocab": 300, "lm_hidden": 32, "lm_layers": 2, "lm_heads": 2, "lm_seq": 32, "lm_batch": 4,
        "lm_micro_batch": 2, "lm_steps": 4, "lm_warmup": 1, "lm_checkpoint_every": 2, "lm_eval_windows": 2,
        "lm_select_windows": 2, "tokenizer_rows": 300, "threads": 1, "device": "cpu"}


def _wikitext_lines(title: str, text: str) -> list[str]:
    """A book as WikiText rows: a heading, then each paragraph on one row, empty rows between."""
    rows = ["", f" = {title} = \n", ""]
    for para in (p.strip().replace("\n", " ") for p in text.split("\n\n")):
        if para:
            rows += [f" {para} \n", ""]
    return rows


@pytest.fixture(scope="module")
def wikitext_folder(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reproduce.data import novels

    books = novels.load_books()[:4]
    root = tmp_path_factory.mktemp("wikitext")
    (root / "data").mkdir()
    splits = {"train": books[:2], "validation": books[2:3], "test": books[3:4]}
    for split, chosen in splits.items():
        rows = [r for b in chosen for r in _wikitext_lines(b.title, b.text[:12000])]
        pq.write_table(pa.table({"text": rows}), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


# ----------------------------------------------------------------------------- loaders
def test_wikitext_stand_in_streams_the_whole_train_split(wikitext_folder):
    import pyarrow.parquet as pq

    hub = data.HubText(str(wikitext_folder), None, tokenizer_rows=20)
    corpus = data.load_corpus(300, "wikitext-103", hub=hub)
    rows = pq.read_table(wikitext_folder / "data" / "train-00000-of-00001.parquet").column("text").to_pylist()
    expected = sum(len(e.ids) for e in corpus.tokenizer.encode_batch([r for r in rows if r], add_special_tokens=False))
    assert corpus.train_ids.size == expected + 1  # every row of the split (the tokenizer saw 20), then end-of-text
    valid = pq.read_table(wikitext_folder / "data" / "validation-00000-of-00001.parquet").column("text").to_pylist()
    assert corpus.tokenizer.decode(corpus.valid_ids[:-1].tolist()) == "".join(valid)  # the validation split validates
    again = data.load_corpus(300, "wikitext-103", hub=hub)  # read back from the token cache
    assert np.array_equal(again.train_ids, corpus.train_ids)


def test_micro_batches_are_the_global_batch_in_pieces():
    ids = np.arange(1000)
    whole = next(data.batches(ids, 4, 8, seed=3))["input_ids"]
    stream = data.batches(ids, 4, 8, seed=3, micro_batch=2)
    assert torch.equal(torch.cat([next(stream)["input_ids"], next(stream)["input_ids"]]), whole)


def test_gpu_profile_reads_wikitext_train_and_validation():
    params = config.resolve("retnet", "gpu")
    sources = config.get_spec("retnet").hub_datasets(params)
    assert [(s["id"], s["config"], s["split"]) for s in sources] == [
        ("Salesforce/wikitext", "wikitext-103-raw-v1", "train"), ("Salesforce/wikitext", "wikitext-103-raw-v1", "validation")]
    assert config.get_spec("retnet").hub_datasets(config.resolve("retnet", "cpu")) == []
    assert params.lm_checkpointing and params.lm_micro_batch == 4 and params.lm_checkpoint_every > 0


# ----------------------------------------------------------------------------- spec checks
@pytest.mark.parametrize("overrides, match", [
    ({"lm_micro_batch": 3}, "lm_micro_batch"), ({"lm_micro_batch": 16}, "lm_micro_batch"),
    ({"lm_warmup": 30000}, "lm_warmup"), ({"lm_heads": 3}, "lm_hidden"), ({"cost_heads": 3}, "cost_hidden"),
    ({"lm_heads": 1024, "variants": ["retnet", "small_heads"]}, "small_heads"), ({"corpus_fraction": 0.5}, "corpus_fraction"),
])
def test_combinations_that_would_crash_late_are_refused(overrides, match):
    with pytest.raises(config.ParamError, match=match) as err:
        config.resolve("retnet", "gpu", overrides)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- plan
def test_gpu_plan_fits_an_80gb_gpu():
    verdict = plan.make("retnet", config.resolve("retnet", "gpu"), "a100-80gb")
    assert not verdict.too_big, [(s.section, s.peak_bytes) for s in verdict.too_big]
    lm = verdict.sections[-1]
    assert 1.2e9 < lm.parameters < 1.4e9  # the 1.3B shape (Table 2)
    assert 5 < verdict.gpu_hours < 100


def test_plan_refuses_a_whole_batch_without_checkpointing_and_names_the_fix():
    params = config.resolve("retnet", "gpu", {"lm_micro_batch": 8, "lm_checkpointing": False})
    verdict = plan.make("retnet", params, "a100-80gb")
    assert [s.section for s in verdict.too_big] == ["4./5. Language modelling (Tables 5, 6)"]
    assert "lm_micro_batch" in verdict.too_big[0].fix and "lm_checkpointing" in verdict.too_big[0].fix


def _saved_bytes_on_cpu(model, ids) -> float:
    """What step_cost's pack hook counts, on real CPU tensors."""
    with plan.count_saved() as saved:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return saved.bytes


class _MallInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _heap_bytes() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd  # malloc'd + mmapped bytes in use


SMALL = LMShape(vocab_size=320, hidden_size=128, num_layers=6, num_heads=4)


def test_meta_saved_bytes_equal_a_cpu_step():
    torch.manual_seed(0)
    model = build_model(SMALL, "retnet", 0)
    ids = torch.randint(0, 320, (2, 64))
    kept, full = retnet_plan.lm_activation_bytes(SMALL, "retnet", 2, 64, checkpointing=False)
    assert kept == full.saved_bytes == _saved_bytes_on_cpu(model, ids)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_formula_within_25_percent_of_the_cpu_heap(checkpointing):
    """Bytes held at the loss (glibc's heap in use after the forward, minus before it) against the
    formula (with checkpointing: less the one block it recomputes in the backward pass)."""
    torch.manual_seed(0)
    model = build_model(SMALL, "retnet", 0)
    if checkpointing:
        lms.enable_checkpointing(model)
    model.train()
    ids = torch.randint(0, 320, (4, 512))
    gc.collect()
    before = _heap_bytes()
    loss = model(input_ids=ids, labels=ids).loss
    held = _heap_bytes() - before
    loss.backward()
    kept, _ = retnet_plan.lm_activation_bytes(SMALL, "retnet", 4, 512, checkpointing)
    if checkpointing:
        build, run_at = retnet_plan._block(SMALL, "retnet")
        kept -= plan.step_cost(build, run_at(4, 512)).saved_bytes - 4 * 512 * 128 * 4
    assert kept == pytest.approx(held, rel=0.25)


# ----------------------------------------------------------------------------- the whole gpu profile
@pytest.mark.slow
def test_gpu_profile_runs_on_a_local_wikitext(tmp_path, wikitext_folder):
    out = tmp_path / "out"
    record, wall = run_profile("retnet", "gpu", {**TINY, "wikitext_dataset": str(wikitext_folder), "wikitext_config": ""}, out)
    assert record["complete"] is True and record["profile"] == "gpu"
    m = record["measured"]
    assert m["lm.corpus"]["source"].startswith(f"wikitext-103 ({wikitext_folder}: train / validation)")
    assert {r["variant"] for r in m["lm.runs"]} == {"transformer", "retnet", "no_mixer"}
    assert all(len(r["curve"]) >= 1 and r["tokens"] == 4 * 4 * 32 for r in m["lm.runs"])
    ids = {c["id"] for c in record["claims"]}
    assert {"forms_equal", "fig6_speedup_at_longest", "fig6_transformer_latency_grows", "table4_throughput_vs_attention",
            "control_retnet_beats_no_mixer", "table5_transformer_below_2b"} <= ids
    assert not (out / "runs" / "retnet" / "gpu" / "rows").exists()  # the kept rows are dropped once the record is saved
    print(f"gpu wiring run: {wall:.1f} s")


# ----------------------------------------------------------------------------- rows
class _Rows:
    """A run.state stand-in (the ``Rows`` protocol): rows kept in a dict, keys as RunDir builds them."""

    def __init__(self):
        self.kept, self.computed = {}, []

    def has_row(self, key, fmt="json"):
        return key in self.kept

    def row(self, key, compute, fmt="json", timed=False):
        if key not in self.kept:
            self.computed.append(key)
            self.kept[key] = compute()
        return self.kept[key]

    def checkpoint_dir(self, key):
        return None

    def key(self, *parts):
        return row_key(*parts)


def test_finished_lm_rows_are_read_back_not_retrained():
    rng = np.random.default_rng(0)
    corpus = data.Corpus(None, rng.integers(0, 64, size=3000), rng.integers(0, 64, size=200), "synthetic")
    shape = LMShape(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2)
    budget = lms.LMBudget(steps=2, batch=2, length=8, warmup=1, eval_windows=2, select_windows=2)
    rows = _Rows()
    args = (corpus, shape, ["retnet", "no_mixer"], [0], {"retnet": [1e-3, 3e-3], "ablations": [1e-2]}, budget)
    first = lms.train_language_models(*args, device="cpu", rows=rows, sweep_seed=9)
    assert rows.computed == ["lm-retnet-9-0.001", "lm-retnet-9-0.003", "lm-no_mixer-0-0.01",
                             "lm-retnet-0-" + f"{first['chosen_lr']['retnet']:g}"]  # the sweep on its own seed
    again = lms.train_language_models(*args, device="cpu", rows=rows, sweep_seed=9)
    assert len(rows.computed) == 4 and again == first
