"""The TOVA gpu profile without a GPU or the hub: its wiring on local stand-ins, and its plan.

Stand-ins: a parquet folder laid out as the hub's PG-19 copy (``emozilla/pg19``: columns
``short_book_title``, ``publication_date``, ``url``, ``text``; ``data/test-00000-of-00001.parquet``)
holding the packaged novels, and a tiny ``LlamaForCausalLM`` with the packaged SmolLM2 tokenizer,
saved with ``save_pretrained`` (the gpu profile's LLaMA-2-7B is gated). The gpu profile runs end
to end on the CPU with tiny sizes; the memory model of :mod:`reproduce.tova.plan` is checked against a
real model and cache.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, KeptRows, run_profile, subprocess_env
from reproduce import config, hub, plan
from reproduce.tova import experiments, plan as tova_plan, policies
from reproduce.tova.policies import EvictionSpec

TINY = {"passages": 2, "length": 64, "budgets": [8, 16], "window_budgets": [8], "batch_size": 1, "nll_block": 16,
        "headline_length": 64, "headline_budget": 8, "headline_passages": 2, "stream_tokens": 40, "stream_budget": 8,
        "analysis_budget": 8, "throughput_budgets": [8, 16], "throughput_batch": 2, "throughput_steps": 2,
        "kv_budget_mb": 1.0, "gen_budget": 8, "gen_prompt_tokens": 32, "gen_new_tokens": 4, "threads": 1,
        "sensitivity_budgets": [8], "sensitivity_passages": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def pg19_folder(tmp_path_factory):
    """Three packaged novels as PG-19 test rows, in the hub copy's layout and column types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reproduce.data import novels

    books = novels.load_books()[:3]
    root = tmp_path_factory.mktemp("pg19")
    (root / "data").mkdir()
    table = pa.table({"short_book_title": [b.title for b in books],
                      "publication_date": pa.array([1811 + i for i in range(len(books))], pa.int32()),
                      "url": [f"http://www.gutenberg.org/ebooks/{i}" for i in range(len(books))],
                      "text": [b.text[:20000] for b in books]})
    pq.write_table(table, root / "data" / "test-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer LlamaForCausalLM (4 query / 2 KV heads) with the SmolLM2 tokenizer, saved to disk."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from reproduce import hf

    _, tokenizer = hf._smollm2_config_and_tokenizer(hf.smollm2_gguf_path())
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


# ----------------------------------------------------------------------------- loaders
def test_pg19_stand_in_reads_as_passages(pg19_folder, tiny_llama_dir):
    loaded = experiments.load_model(str(tiny_llama_dir))
    ids, sources = experiments.load_passages("pg19", loaded.tokenizer, 64, 3, pg19_dataset=str(pg19_folder))
    assert ids.shape == (3, 64)
    # one passage from each book (bug: the 32 headline passages were the first 32 chunks: 1-2 books)
    assert sorted(s.split(" @ ")[0] for s in sources) == ["pg19 test book 0", "pg19 test book 1", "pg19 test book 2"]
    assert all(int(s.split("@ token ")[1]) % 64 == 0 for s in sources)  # consecutive chunks of each book, as the paper
    again, _ = experiments.load_passages("pg19", loaded.tokenizer, 64, 3, pg19_dataset=str(pg19_folder))
    assert torch.equal(ids, again)  # the same seed, the same passages
    more, more_sources = experiments.load_passages("pg19", loaded.tokenizer, 64, 5, pg19_dataset=str(pg19_folder))
    assert len({s.split(" @ ")[0] for s in more_sources}) == 3  # more passages than books: every book, then again
    assert loaded.model.config._attn_implementation == "eager" and loaded.model.dtype == torch.float32


def test_pg19_wrong_split_or_column_fails_in_one_line(pg19_folder, tiny_llama_dir):
    loaded = experiments.load_model(str(tiny_llama_dir))
    with pytest.raises(hub.HubError) as err:
        experiments.load_passages("pg19", loaded.tokenizer, 64, 1, pg19_dataset=str(pg19_folder), pg19_text_column="body")
    assert "\n" not in str(err.value) and "body" in str(err.value)


def test_local_model_loads_in_bf16(tiny_llama_dir):
    loaded = experiments.load_model(str(tiny_llama_dir), dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16 and "bfloat16" in loaded.description


def test_offline_hub_model_fails_in_one_line_fast(monkeypatch, no_network):
    from reproduce import hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(hub.HubError) as err:
        experiments.load_model("meta-llama/Llama-2-7b-hf")
    assert time.perf_counter() - start < 5 and "\n" not in str(err.value)


def test_gated_model_message_is_one_line_naming_the_fix():
    err = experiments.ModelUnavailable("meta-llama/Llama-2-7b-hf", OSError("You are trying to access a gated repo.\n"
                                                                           "Make sure to have access to it"))
    text = str(err)
    assert "\n" not in text and "hf auth login" in text and "-p model=" in text


def test_gpu_profile_reads_pg19_parquet_by_default():
    params = config.resolve("tova", "gpu")
    sources = config.get_spec("tova").hub_datasets(params)
    assert sources == [{"param": "pg19_dataset", "id": "emozilla/pg19", "config": None, "split": "test",
                        "columns": ["text"], "alternative": sources[0]["alternative"]}]
    assert config.get_spec("tova").hub_datasets(config.resolve("tova", "cpu")) == []


def test_offline_pg19_fails_before_the_kernel_starts(tmp_path):
    """The preflight of ``reproduce run``: exit 1 and one line, within seconds (no notebook started)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reproduce", "run", "tova", "--profile", "gpu",
                           "--output-dir", str(tmp_path), "--no-progress"], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), timeout=60)
    assert proc.returncode != 0 and "emozilla/pg19" in proc.stderr and "offline" in proc.stderr
    assert time.perf_counter() - start < 30


# ----------------------------------------------------------------------------- spec checks
@pytest.mark.parametrize("overrides, match", [
    ({"budgets": [64, 4096]}, "budgets"), ({"window_budgets": [4096]}, "window_budgets"),
    ({"headline_budget": 4096}, "headline_budget"), ({"stream_budget": 4096}, "stream_budget"),
    ({"stream_tokens": 256, "stream_budget": 512}, "stream_budget"), ({"gen_budget": 4096}, "gen_budget"),
    ({"analysis_budget": 4096}, "analysis_budget"),
    ({"passages": 1, "throughput_budgets": [256, 4096]}, "throughput_budgets"),
])
def test_gpu_budgets_that_would_crash_late_are_refused(overrides, match):
    with pytest.raises(config.ParamError, match=match) as err:
        config.resolve("tova", "gpu", overrides)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- rows
def test_sweep_rows_are_skipped_when_kept():
    """A rerun reads each (policy, C) row back instead of running its pass; the numbers are the same."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attn_implementation="eager")
    torch.manual_seed(0)
    model = policies.attach(LlamaForCausalLM(cfg).eval())
    ids = torch.randint(0, 99, (2, 40), generator=torch.Generator().manual_seed(0))
    rows = KeptRows()
    kwargs = dict(budgets=[8, 16], policies=["tova", "window"], collect=EvictionSpec("tova", 8), block=13, rows=rows,
                  key="fig3")
    first = experiments.budget_sweep(model, ids, **kwargs)
    n = len(rows.computed)
    again = experiments.budget_sweep(model, ids, **kwargs)
    assert n == 5 and len(rows.computed) == n  # full + 2 TOVA + 2 Window, then nothing
    assert rows.computed[0] == "fig3-full" and "fig3-tova_C8" in rows.computed
    assert again.ppl == first.ppl and again.block_nll == first.block_nll and again.collected is first.collected


# ----------------------------------------------------------------------------- plan
def test_gpu_plan_fits_an_80gb_gpu():
    verdict = plan.make("tova", config.resolve("tova", "gpu"), "a100-80gb")
    assert not verdict.too_big, [(s.section, s.peak_bytes) for s in verdict.too_big]
    assert verdict.sections[0].parameters == 6_738_415_616  # LLaMA-2-7B
    assert 1.0 < verdict.gpu_hours < 10.0


def test_plan_refuses_an_oversized_batch_and_names_the_fix():
    verdict = plan.make("tova", config.resolve("tova", "gpu", {"throughput_batch": 64}), "a100-80gb")
    assert [s.section for s in verdict.too_big] == ["2. Resources"]
    assert "throughput_batch" in verdict.too_big[0].fix


def test_memory_model_counts_the_real_weights_and_cache(tiny_llama_dir):
    """Weights and KV bytes of the formulas equal a real model's and a real TOVA cache's tensors."""
    params = config.resolve("tova", "gpu", {"model": str(tiny_llama_dir), "precision": "fp32"})
    s, _, _ = tova_plan.shapes(params)
    loaded = experiments.load_model(str(tiny_llama_dir))
    assert tova_plan.weights_bytes(s) == sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    cache = policies.make_cache(EvictionSpec("tova", 12))
    with torch.no_grad():
        loaded.model(torch.randint(0, 100, (3, 30)), use_cache=True, **{experiments._cache_kw(loaded.model): cache})
    assert tova_plan.kv_bytes(s, 12, batch=3) == cache.nbytes()
    bf16 = tova_plan.shapes(config.resolve("tova", "gpu", {"model": str(tiny_llama_dir)}))[0]
    assert tova_plan.weights_bytes(bf16) * 2 == tova_plan.weights_bytes(s)  # precision='auto' on a GPU: bf16


# ----------------------------------------------------------------------------- the whole gpu profile
@pytest.mark.slow
def test_gpu_profile_runs_on_local_stand_ins(tmp_path, pg19_folder, tiny_llama_dir):
    out = tmp_path / "out"
    record, wall = run_profile("tova", "gpu", {**TINY, "model": str(tiny_llama_dir), "pg19_dataset": str(pg19_folder)}, out)
    assert record["complete"] is True and record["profile"] == "gpu"
    assert record["params"]["pg19_dataset"] == str(pg19_folder) and record["params"]["corpus"] == "pg19"
    m = record["measured"]
    assert m["data.sources"][0].startswith("pg19 test book ") and str(tiny_llama_dir) in m["model"]
    assert set(m["fig3.ppl"]) == {"window", "window_sink", "h2o", "tova"} and m["fig3.ppl"]["tova"].keys() == {"8", "16"}
    assert m["headline.ppl"]["full"] == m["fig3.full_ppl"]  # the same passages: Figure 3's passes
    assert m["table1"]["budgets"] == [8, 16] and len(m["generation"]["texts"]) == 5
    ids = {c["id"] for c in record["claims"]}
    assert {"fig3_tova_near_full", "headline_tova_le_window_sink", "appE_equals_streaming", "table1_kv_proportional_to_C",
            "kept_first_token_layers"} <= ids
    assert "sensitivity" in next(c for c in record["claims"] if c["id"] == "fig3_tova_le_h2o_C8")["note"]
    assert not (out / "runs" / "tova" / "gpu" / "rows").exists()  # the kept rows are dropped once the record is saved
    print(f"gpu wiring run: {wall:.1f} s")
