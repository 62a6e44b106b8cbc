"""What the TOVA notebook costs on a GPU (``python -m reproduce plan tova --profile gpu``).

Nothing is trained: every section is inference with the model's weights in the dtype of
``precision`` (bf16 on a GPU, as the paper's half precision). Per section:

- **FLOPs**: one forward of ``(1, length)`` tokens counted by ``FlopCounterMode`` on the meta device
  (:func:`reproduce.plan.step_cost`, eager attention: the full ``T x T`` scores, an upper bound for
  the App. E pass, which skips the causal upper triangle), times the passes; shorter forwards (Table
  1's prefills, decode steps, generation) at the same FLOPs per token.
- **Peak memory** (a formula, :func:`weights_bytes`, :func:`kv_bytes`, :func:`pass_transient_bytes`,
  :func:`eager_prefill_bytes`): the weights, plus the KV cache a section holds, plus the largest
  transient of its step (the App. E pass: an MLP's activations, the logits of one vocabulary chunk,
  one block of masked attention, the float32 queries and keys of the eviction decisions; eager
  attention: the ``H x T x T`` scores in the model's dtype and their float32 softmax).
  ``tests/test_gpu_tova.py`` checks the weights and KV bytes against a real model and cache.
- **Time not measured by FLOPs** (``other_hours``): TOVA's and H2O's decisions are replayed step by
  step on the CPU (``appendix_e.evictions``: numba, one core) over probabilities copied from the GPU
  block by block; streaming, Table 1 and generation are launch-bound decode steps.

The model's shapes come from its config: the packaged SmolLM2, a local directory, the hub cache,
or, for ``meta-llama/Llama-2-7b-hf`` (the gpu profile's model) offline, :data:`LLAMA2_7B` below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reproduce.configs.tova import SPEC
from reproduce.plan import SectionPlan, step_cost

from .policies import POLICIES

# LLaMA-2-7B (config.json of meta-llama/Llama-2-7b-hf): used when the hub cannot be read.
LLAMA2_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096}
LLAMA2_7B_DOWNLOAD = 13.5e9  # its bf16 safetensors
PG19_TEST_DOWNLOAD = 25e6  # emozilla/pg19's test parquet (100 books, 40 MB of text)

# ours: rate of the step-by-step decisions (evictions), in candidate-score operations per second:
# measured 0.12-0.15e9/s for TOVA and H2O at C = 128 / 512 on a shared 2-core CPU (matmuls and the
# numba replay together), see the module docstring; the ops of one step are 2 x H x (C + 64).
DECISION_OPS_PER_S = 0.13e9
HOST_COPY_BYTES_PER_S = 10e9  # ours: the probabilities of each block cross PCIe to the replay (~10 GB/s)
DECODE_STEP_S = 0.03  # ours: one launch-bound decode step of a 32-layer model (~40 kernels per layer)
BLOCK = 64  # appendix_e.evictions' block of steps
ATTN_BLOCK = 256  # appendix_e.blocked_attention's block of queries
VOCAB_CHUNK = 512  # appendix_e.chunked_nll's positions per logits chunk


@dataclass(frozen=True)
class Shapes:
    vocab: int
    d: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    parameters: int
    bytes_per_value: int  # the weights' and activations' dtype

    @property
    def head_dim(self) -> int:
        return self.d // self.heads


def _config_dict(name: str) -> tuple[dict, str]:
    """The model's config as a dict, and where it came from."""
    if name == "smollm2":
        from reproduce import hf

        config, _ = hf._smollm2_config_and_tokenizer(hf.smollm2_gguf_path())
        return config.to_dict(), "the packaged SmolLM2-135M"
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text(encoding="utf-8")), str(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text(encoding="utf-8")), f"{name} (hub cache)"
    except Exception:  # noqa: BLE001 - no cache: the known shapes below
        pass
    return dict(LLAMA2_7B), ("LLaMA-2-7B's shapes" + ("" if name == "meta-llama/Llama-2-7b-hf" else
                                                       f" (the config of {name!r} is not at hand)"))


def _llama_config(cfg: dict):
    from transformers import LlamaConfig

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads")
    return LlamaConfig(**{k: cfg[k] for k in keys if k in cfg}, tie_word_embeddings=cfg.get("tie_word_embeddings", False),
                       attn_implementation="eager")


def shapes(params) -> tuple[Shapes, object, str]:
    import torch

    from reproduce import runtime

    cfg, source = _config_dict(params.model)
    lcfg = _llama_config(cfg)
    dtype = runtime.autocast_dtype(params.precision, torch.device("cuda")) or torch.float32
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        n = sum(p.numel() for p in LlamaForCausalLM(lcfg).parameters())
    s = Shapes(lcfg.vocab_size, lcfg.hidden_size, lcfg.intermediate_size, lcfg.num_hidden_layers,
               lcfg.num_attention_heads, lcfg.num_key_value_heads or lcfg.num_attention_heads, n,
               torch.finfo(dtype).bits // 8)
    return s, lcfg, source


def forward_flops(lcfg, tokens: int) -> float:
    """FLOPs of one forward of ``(1, tokens)`` (meta device, eager attention)."""
    import torch
    from transformers import LlamaForCausalLM

    def run(model):
        with torch.no_grad():
            return model(input_ids=torch.zeros(1, tokens, dtype=torch.long, device="meta")).logits

    return step_cost(lambda: LlamaForCausalLM(lcfg), run, train=False).flops


# ----------------------------------------------------------------------------- memory formulas
def weights_bytes(s: Shapes) -> float:
    return s.parameters * s.bytes_per_value


def kv_bytes(s: Shapes, tokens: int, batch: int = 1) -> float:
    """Keys and values of ``tokens`` per sequence in every layer (the bytes of the cache tensors)."""
    return 2 * s.layers * s.kv_heads * s.head_dim * tokens * batch * s.bytes_per_value


def pass_transient_bytes(s: Shapes, L: int, batch: int, budget: int) -> float:
    """The largest transient of one App. E layer, summed over its parts (an upper bound): the
    residual stream and an MLP's three ``ffn``-wide activations, one masked attention block (float32
    scores and their softmax, the bool mask), the float32 queries and keys of the decisions with
    one block of probabilities, and one vocabulary chunk of logits (model dtype and float32)."""
    b = s.bytes_per_value
    stream = 4 * batch * L * s.d * b
    mlp = 3 * batch * L * s.ffn * b
    attention = batch * s.heads * ATTN_BLOCK * L * (4 + 4 + 1)
    decisions = batch * (s.heads + s.kv_heads) * L * s.head_dim * 4 + 2 * batch * s.heads * BLOCK * (budget + BLOCK) * 4
    logits = batch * VOCAB_CHUNK * s.vocab * (b + 4)
    return stream + mlp + attention + decisions + logits


def eager_prefill_bytes(s: Shapes, T: int, batch: int = 1) -> float:
    """Eager attention of ``T`` tokens: the ``H x T x T`` scores in the model's dtype, their float32
    softmax and its cast back, plus the MLP's activations and the last position's logits."""
    b = s.bytes_per_value
    return batch * (s.heads * T * T * (b + 4 + b) + 3 * T * s.ffn * b + 4 * T * s.d * b + s.vocab * 4)


# ----------------------------------------------------------------------------- sections
def _decision_hours(s: Shapes, L: int, budgets, passages: int) -> float:
    """Replay of the decisions plus the copy of the probabilities to the host, for one policy."""
    ops = sum(s.layers * max(L - C, 0) * 2 * s.heads * (C + BLOCK) for C in budgets) * passages
    copied = sum(s.layers * max(L - C, 0) * s.heads * (C + BLOCK) * 4 for C in budgets) * passages
    return (ops / DECISION_OPS_PER_S + copied / HOST_COPY_BYTES_PER_S) / 3600


def sections(params) -> list[SectionPlan]:
    s, lcfg, source = shapes(params)
    L, n = params.length, params.passages
    weights = weights_bytes(s)
    per_token = forward_flops(lcfg, L) / L  # at length L: the attention share included
    sweep = sorted(set(params.budgets) | {L // 8})
    budgets_of = {p: (params.window_budgets if p == "window" else sweep) for p in params.policies}
    passes = 1 + sum(len(b) for b in budgets_of.values())  # the full cache + every (policy, C)
    collect = ("tova", params.analysis_budget)
    if params.analysis_budget not in budgets_of.get("tova", ()):
        passes += 1
    scored = [p for p in params.policies if p in ("tova", "h2o")]
    decisions = sum(_decision_hours(s, L, budgets_of[p], n) for p in scored)
    if collect[1] not in budgets_of.get("tova", ()):
        decisions += _decision_hours(s, L, [collect[1]], n)
    fig3_peak = weights + pass_transient_bytes(s, L, params.batch_size, max(sweep))
    download = (LLAMA2_7B_DOWNLOAD if params.model == "meta-llama/Llama-2-7b-hf" else 0.0)
    data = PG19_TEST_DOWNLOAD if params.corpus == "pg19" else 0.0
    out = [SectionPlan(
        SPEC.section("Figure 3"), f"{passes} App. E passes x {n} passages of L={L} ({', '.join(params.policies)} at C in "
        f"{sweep}, Window at {params.window_budgets}, the full cache)", s.parameters, fig3_peak,
        passes * n * L * per_token, download_bytes=download + data, other_hours=decisions,
        fix="batch_size (passages per masked pass)",
        notes=f"shapes of {source}; decisions of {', '.join(scored) or 'no scored policy'} replayed on one CPU core")]

    if "tova" in scored and "h2o" in scored:  # sensitivity: H2O and TOVA at the other's scope; with BOS (+ the full cache)
        SB, SN = params.sensitivity_budgets, params.sensitivity_passages
        spasses = 4 * len(SB) + 1
        out.append(SectionPlan(
            "1. Sensitivity passes", f"{spasses} App. E passes x {SN} passages of L={L} (TOVA and H2O at C in {SB}: "
            "at the other's scope, and with a BOS token; the full cache with BOS)", s.parameters, fig3_peak,
            spasses * SN * L * per_token, other_hours=4 * sum(_decision_hours(s, L, [c], SN) for c in SB),  # 2 policies x 2 factors
            fix="sensitivity_passages"))

    HL, HC, HN = params.headline_length, params.headline_budget, params.headline_passages
    hpolicies = ["tova"] + (["window_sink"] if "window_sink" in params.policies else [])
    shared = HL == L and HN == n and all(HC in budgets_of.get(p, ()) for p in hpolicies)
    out.append(SectionPlan(
        "1a. The paper's point", f"full cache + {' + '.join(hpolicies)} at C={HC} x {HN} chunks of L={HL}"
        + (" (Figure 3's rows: nothing new)" if shared else ""), s.parameters,
        weights + pass_transient_bytes(s, HL, params.batch_size, HC),
        0.0 if shared else (1 + len(hpolicies)) * HN * HL * per_token,
        other_hours=0.0 if shared else _decision_hours(s, HL, [HC], HN), fix="batch_size"))

    T, C = min(params.stream_tokens, L), params.stream_budget
    out.append(SectionPlan(
        SPEC.section("App. E"), f"{T - C} decode steps through a TOVA cache of C={C} + one App. E pass of {T} tokens",
        s.parameters, weights + kv_bytes(s, C + 1) + max(eager_prefill_bytes(s, C), pass_transient_bytes(s, T, 1, C)),
        2 * T * per_token, other_hours=(T - C) * DECODE_STEP_S / 3600 + _decision_hours(s, T, [C], 1),
        fix="stream_budget / stream_tokens"))

    B, steps, budgets = params.throughput_batch, params.throughput_steps, params.throughput_budgets
    cmax = max(budgets)
    out.append(SectionPlan(
        SPEC.section("Table 1"), f"TOVA prefill of C tokens + {steps + 1} decode steps at batch {B}, C in {budgets}",
        s.parameters, weights + kv_bytes(s, cmax + 1, B) + kv_bytes(s, cmax + 1) + eager_prefill_bytes(s, cmax),
        sum(C + (steps + 1) * B for C in budgets) * per_token,
        other_hours=len(budgets) * (steps + 1) * DECODE_STEP_S / 3600, fix="throughput_batch (or the largest throughput_budgets)",
        notes=f"KV cache at C={cmax}: {kv_bytes(s, cmax, 1) / 1e9:.2f} GB per sequence"))

    out.append(SectionPlan(SPEC.section("§6 / Figure 8"), f"from Figure 3's collecting pass (TOVA at C={params.analysis_budget})",
                           s.parameters, 0.0, 0.0, notes="no GPU work"))

    P, G = min(params.gen_prompt_tokens, L), params.gen_new_tokens
    runs = 1 + len(params.policies)
    out.append(SectionPlan(
        "4. Generation", f"{runs} greedy continuations of {G} tokens after a {P}-token prompt", s.parameters,
        weights + kv_bytes(s, P + G) + eager_prefill_bytes(s, P), runs * (P + G) * per_token,
        other_hours=runs * G * DECODE_STEP_S / 3600, fix="gen_prompt_tokens"))
    return out


__all__ = ["sections", "weights_bytes", "kv_bytes", "pass_transient_bytes", "eager_prefill_bytes", "POLICIES"]
