"""TOVA (arXiv 2401.06104): parameters and profiles. Imports only ``reproduce.config`` (no torch)."""

from reproduce.config import Param, PaperSpec

POLICIES = ("window", "window_sink", "h2o", "tova")  # the full cache is always measured as the reference


def _blocks_fit(values) -> str | None:
    for name in ("length", "headline_length"):
        if values["nll_block"] > values[name] - 1:
            return (f"nll_block={values['nll_block']} exceeds the {values[name] - 1} predicted tokens of a passage "
                    f"({name}={values[name]}): choose nll_block <= {name} - 1")
    return None


def _budgets_below_length(values) -> str | None:
    """Every C must leave tokens to evict (or, for Table 1, a token to decode): checked before any pass."""
    L = values["length"]
    for name in ("budgets", "window_budgets"):
        if max(values[name]) >= L:
            return f"{name}={values[name]} must stay below length={L} (a C >= L never evicts)"
    if values["headline_budget"] >= values["headline_length"]:
        return (f"headline_budget={values['headline_budget']} must stay below headline_length="
                f"{values['headline_length']}")
    tokens = values["passages"] * L
    if max(values["throughput_budgets"]) >= tokens:
        return (f"throughput_budgets={values['throughput_budgets']}: Table 1 prefills C tokens of the passages and "
                f"decodes the next one, so every C must be below passages * length = {tokens}")
    if max(values["sensitivity_budgets"]) >= L:
        return f"sensitivity_budgets={values['sensitivity_budgets']} must stay below length={L}"
    for name in ("stream_budget", "analysis_budget", "gen_budget"):
        if values[name] >= L:
            return f"{name}={values[name]} must stay below length={L}"
    streamed = min(values["stream_tokens"], L)
    if values["stream_budget"] >= streamed:
        return (f"stream_budget={values['stream_budget']} must stay below the {streamed} streamed tokens "
                f"(min(stream_tokens={values['stream_tokens']}, length={L})): the state never fills otherwise")
    return None


def _sensitivity_within_passages(values) -> str | None:
    """The sensitivity passes are compared with Figure 3's own TOVA and H2O passes: same passages, same C."""
    if values["sensitivity_passages"] > values["passages"]:
        return (f"sensitivity_passages={values['sensitivity_passages']} exceeds passages={values['passages']}: the "
                "sensitivity passes reuse Figure 3's first passages")
    sweep = sorted(set(values["budgets"]) | {values["length"] // 8})
    outside = [c for c in values["sensitivity_budgets"] if c not in sweep]
    if outside:
        return (f"sensitivity_budgets={values['sensitivity_budgets']}: {outside} not in Figure 3's C values {sweep} "
                "(budgets plus length // 8), whose TOVA and H2O passes they are compared with")
    return None


def hub_datasets(values) -> list[dict]:
    """The hub datasets a run reads (``python -m reproduce run`` opens each before the notebook starts)."""
    if values["corpus"] != "pg19":
        return []
    return [{"param": "pg19_dataset", "id": values["pg19_dataset"], "config": values["pg19_config"] or None,
             "split": values["pg19_split"], "columns": [values["pg19_text_column"]],
             "alternative": "use corpus='novels' (profile=cpu), which reads the packaged novels"}]


def hub_models(values) -> list[dict]:
    """The model (and its tokenizer, from the same repository) unless it is the packaged SmolLM2.

    meta-llama's repositories are gated: accept the licence on the model's hub page, then log in
    (``hf auth login`` or ``HF_TOKEN``) before ``python -m reproduce fetch --profile gpu``.
    """
    if values["model"] == "smollm2":
        return []
    return [{"param": "model", "id": values["model"], "gated": values["model"].startswith("meta-llama/")}]


SPEC = PaperSpec(
    name="tova",
    notebook="04_tova.ipynb",
    title="Transformers are Multi-State RNNs (TOVA; Oren et al., 2024)",
    description="Cache-eviction policies (Window, Window+4, H2O, TOVA) as transformers Caches on a pretrained LLaMA-family model",
    params={
        "model": Param("str", "smollm2", "'smollm2' (packaged SmolLM2-135M-Instruct, GGUF), a Hugging Face hub id "
                       "or a local directory saved with save_pretrained (loaded in bf16 on a GPU under precision='auto')"),
        "corpus": Param("str", "novels", "long texts: packaged English novels, or PG-19 from the hub (gpu)",
                        choices=("novels", "pg19")),
        "pg19_dataset": Param("str", "emozilla/pg19", "PG-19 (corpus='pg19'): a parquet copy on the hub (deepmind/pg19 "
                              "ships a loading script, which datasets >= 4 refuses) or a local parquet folder"),
        "pg19_config": Param("str", "", "config of pg19_dataset ('' = its default)"),
        "pg19_split": Param("str", "test", "split of pg19_dataset (the paper: test)"),
        "pg19_text_column": Param("str", "text", "column of pg19_dataset holding a book's text"),
        "passages": Param("int", 14, "chunks of L tokens for Figure 3 (non-overlapping, spread over the books: one "
                          "of each book per round, so 14 = two from each of the 7 packaged novels)", min=1, max=256),
        "length": Param("int", 2048, "chunk length L in tokens of the budget sweep (the paper: 4096)", min=16),
        "budgets": Param("list[int]", [64, 256, 512], "multi-state sizes C for Figure 3 (C = L/8 is always added)",
                         min=2, min_len=1),
        "window_budgets": Param("list[int]", [64], "C values of the plain Window, which explodes once the "
                                "first tokens leave (the paper's Table 3 reports it at C=64 only)", min=2, min_len=1),
        "policies": Param("list[str]", list(POLICIES), "eviction policies compared with the full cache",
                          choices=POLICIES, min_len=1),
        "sinks": Param("int", 4, "i of Window+i: first tokens always kept (§4.1)", min=1),
        "batch_size": Param("int", 4, "passages per masked parallel pass (App. E)", min=1),
        "nll_block": Param("int", 128, "tokens per block of the paired intervals: blocks of consecutive predicted "
                           "tokens within a passage, the same tokens for every policy", min=1),
        "headline_length": Param("int", 4096, "L of the paper's headline point (its chunk length; SmolLM2 reads 8k)",
                                 min=16),
        "headline_budget": Param("int", 512, "C of the headline point (the paper: 512 = L/8)", min=2),
        "headline_passages": Param("int", 6, "chunks of headline_length tokens for the headline point (one per book "
                                   "while there are books)", min=1, max=256),
        "sensitivity_budgets": Param("list[int]", [256, 512], "C values of the sensitivity passes (TOVA vs H2O with a "
                                     "BOS token prepended, and with each policy's kept sets at the other's scope)",
                                     min=2, min_len=1),
        "sensitivity_passages": Param("int", 7, "the first passages of Figure 3 used by the sensitivity passes (7: one "
                                      "from each book)", min=1, max=256),
        "full_margin_rel": Param("float", 0.05, "TOVA at the headline point within this relative PPL margin of the "
                                 "full cache (the paper: 7.41 vs 7.16, +3.5%)", min=0.0, max=1.0),
        "stream_tokens": Param("int", 512, "tokens streamed through the Cache objects (speed + equality check)", min=16),
        "stream_budget": Param("int", 64, "C of the streaming check", min=2),
        "analysis_budget": Param("int", 256, "C of the 'what TOVA keeps' analysis (paper: L/8)", min=2),
        "throughput_budgets": Param("list[int]", [64, 128, 256, 512, 1024], "C values of Table 1", min=2, min_len=2),
        "throughput_batch": Param("int", 4, "batch size of the decode-throughput measurement", min=1),
        "throughput_steps": Param("int", 16, "decode steps timed per C", min=2),
        "kv_budget_mb": Param("float", 512.0, "KV-cache memory budget for Table 1's largest batch", min=1.0),
        "gen_budget": Param("int", 64, "C of the generation comparison", min=2),
        "gen_prompt_tokens": Param("int", 384, "prompt length of the generation comparison", min=8),
        "gen_new_tokens": Param("int", 40, "tokens generated per policy", min=1),
    },
    profiles={
        "smoke": {
            "threads": 1, "passages": 2, "length": 96, "budgets": [8, 16, 32], "window_budgets": [8, 16],
            "batch_size": 1, "nll_block": 16, "headline_length": 128, "headline_budget": 16, "headline_passages": 2,
            "sensitivity_budgets": [16], "sensitivity_passages": 2,
            "stream_tokens": 40, "stream_budget": 8, "analysis_budget": 12,
            "throughput_budgets": [8, 32], "throughput_batch": 2, "throughput_steps": 2,
            "gen_budget": 8, "gen_prompt_tokens": 32, "gen_new_tokens": 4,
        },
        # two threads: on 2 idle cores a masked pass of 4 x 2048 tokens takes 28 s instead of 45-58 s with one
        # (the decisions' step-by-step loops stay on one thread: appendix_e.one_thread)
        "cpu": {"threads": 2},
        "gpu": {
            "model": "meta-llama/Llama-2-7b-hf", "corpus": "pg19", "passages": 32, "length": 4096,
            "budgets": [64, 128, 256, 512, 1024, 2048], "window_budgets": [64, 128, 256, 512, 1024, 2048], "batch_size": 1,
            "headline_passages": 32, "sensitivity_passages": 8, "threads": 0, "stream_tokens": 2048, "stream_budget": 512,
            "analysis_budget": 512, "throughput_budgets": [256, 512, 1024, 2048, 4096], "throughput_batch": 8,
            "throughput_steps": 64, "kv_budget_mb": 16384.0, "gen_budget": 512, "gen_prompt_tokens": 2048,
            "gen_new_tokens": 128,
        },
    },
    artifacts={
        "Figure 3": "1. Perplexity vs C",
        "Headline": "1a. The paper's point: L = 4096, C = 512",
        "App. E": "1b. App. E == streaming",
        "Table 1": "2. Resources",
        "§6 / Figure 8": "3. What TOVA keeps",
    },
    checks=(_blocks_fit, _budgets_below_length, _sensitivity_within_passages),
    hub_datasets=hub_datasets,
    hub_models=hub_models,
    plots="reproduce.tova.plots",
    sections="reproduce.tova.sections",
)
