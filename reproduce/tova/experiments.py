"""Measurements of the notebook's sections: Figure 3 (PPL vs C), Table 1 (resources), what TOVA
keeps, generation.

Every function returns plain data (floats, lists, dicts); :mod:`.sections` records it with
``run.record`` and makes the claims; figures are drawn from the records only (:mod:`.plots`).
No claims and no paper numbers here (those live in :mod:`.sections`).
"""

from __future__ import annotations

import inspect
import math
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from reproduce import distributed
from reproduce.hub import HubError
from reproduce.rundir import MemoryRows, Rows

from . import appendix_e
from .appendix_e import MaskedPass
from .policies import EvictionCache, EvictionSpec, attach, make_cache


def once(rows: Rows, key: str, compute, timed: bool = False):
    """``compute()`` as row ``key`` of ``rows`` (:mod:`reproduce.rundir`): computed once, on the main
    process when several run (:func:`reproduce.distributed.on_main`), and read back by a rerun when
    ``rows`` is the run's state (``timed``: the row holds timings, kept per thread count)."""
    return rows.row(key, lambda: distributed.on_main(compute), fmt="pickle", timed=timed)


# ----------------------------------------------------------------------------- model and text
@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    description: str

    @property
    def parameters(self) -> int:
        """Number of weights (tied embeddings counted once)."""
        return sum(p.numel() for p in self.model.parameters())


def load_model(name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Loaded:
    """The packaged SmolLM2-135M-Instruct (``name="smollm2"``), a hub id or a local directory, with eager attention.

    Eager attention returns the probabilities TOVA and H2O score by. ``dtype``: the weights' dtype
    (None: float32; the paper ran LLaMA-2 in half precision, the gpu profile loads bf16 through
    ``precision``). A hub id while the hub is offline fails at once with
    ``reproduce.hub.HubError`` (kind "offline") naming the packaged alternative; a gated or missing hub model
    fails in one line naming the fix.
    """
    from reproduce import hf

    if name == "smollm2":
        model, tokenizer, report = hf.load_smollm2(attn_implementation="eager", dtype=dtype or torch.float32)
        description = ("SmolLM2-135M-Instruct (instruction-tuned; 4-bit Q4_1 GGUF weights dequantised to "
                       f"{str(dtype or torch.float32).removeprefix('torch.')}), {report.model_class}")
    else:
        from transformers import AutoTokenizer

        try:
            model, report = hf.load_pretrained(name, "AutoModelForCausalLM", attn_implementation="eager",
                                               dtype=dtype or torch.float32)
            source, extra = hf.hub_or_local(name)  # the tokenizer through the same offline-aware path
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        except HubError:  # offline and not cached: its own one-line message
            raise
        except OSError as err:  # gated, missing, or no tokenizer files: one line naming the fix
            raise ModelUnavailable(name, err) from err
        description = f"{name}, {report.model_class}, {str(dtype or torch.float32).removeprefix('torch.')}"
    model = attach(model.to(device).eval())
    return Loaded(model, tokenizer, description)


class ModelUnavailable(OSError):
    """A hub model that cannot be loaded (gated, missing, incomplete directory); the message is one line."""

    def __init__(self, name: str, err: BaseException):
        text = " ".join(str(err).split())
        if "gated" in text.lower() or type(err).__name__ == "GatedRepoError":
            why = (f"is gated: accept its terms at https://huggingface.co/{name} and log in (`hf auth login` or "
                   "HF_TOKEN)")
        else:
            why = f"cannot be loaded ({type(err).__name__}: {text[:160]})"
        super().__init__(f"model {name!r} {why}; or set -p model=<local directory saved with save_pretrained>, or "
                         "use profile=cpu, which loads the packaged SmolLM2-135M")


def load_passages(corpus: str, tokenizer, length: int, n: int, seed: int = 0, *, pg19_dataset: str = "emozilla/pg19",
                  pg19_config: str = "", pg19_split: str = "test", pg19_text_column: str = "text"):
    """``(ids [n, length], sources)``: ``n`` non-overlapping chunks of ``length`` tokens.

    As the paper cuts PG-19: every book into consecutive chunks of ``length`` tokens. The chunks are
    spread over the books (:func:`reproduce.data.novels.chunks`: one random chunk of each book per
    round, several per book only when ``n`` asks for more than there are books): over the seven
    packaged novels, or over the first ``n`` books of PG-19 (``pg19_dataset``: a parquet copy on the
    hub, by default emozilla/pg19's test split of 100 books, or a local parquet folder). Passages are
    the unit of the intervals: from one or two books they would not be independent.
    """
    from reproduce.data import novels

    if corpus == "novels":
        p = novels.chunks(tokenizer, length, n, split="all", seed=seed)
        return p.ids, [f"{book} @ token {start}" for book, start in zip(p.books, p.starts)]
    if corpus == "pg19":
        import itertools
        from types import SimpleNamespace

        from reproduce.data import text

        books = text.hub_dataset(pg19_dataset, pg19_config or None, split=pg19_split, text_field=pg19_text_column,
                                 param="pg19_dataset")
        keys = {}
        shelf = []
        for i, book in enumerate(itertools.islice(books, n)):  # streamed: only the first n books are read
            key = f"pg19-{pg19_split}-book{i}"
            keys[key] = i
            shelf.append(SimpleNamespace(key=key, text=book))
        try:
            p = novels.chunks(tokenizer, length, n, split="all", seed=seed, data_splits={"all": shelf})
        except ValueError as err:
            raise ValueError(f"{pg19_dataset} ({pg19_split}): {err}; lower passages or length") from None
        return p.ids, [f"pg19 {pg19_split} book {keys[book]} @ token {start}" for book, start in zip(p.books, p.starts)]
    raise ValueError(f"unknown corpus {corpus!r}; expected 'novels' or 'pg19'")


def bos_token_id(tokenizer) -> int | None:
    """The tokenizer's beginning-of-sequence token (None when it has none)."""
    return getattr(tokenizer, "bos_token_id", None)


def with_bos(ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """``ids`` (``n, L``) with ``bos_id`` prepended to every passage and its last token dropped (same L)."""
    return torch.cat([torch.full_like(ids[:, :1], bos_id), ids[:, :-1]], dim=1)


# ----------------------------------------------------------------------------- Figure 3
def perplexity(nll: torch.Tensor) -> float:
    """exp(mean negative log-likelihood) over every predicted token."""
    return math.exp(nll.double().mean().item())


@dataclass
class Sweep:
    """What :func:`budget_sweep` measured.

    ``ppl["full"]`` is a float, ``ppl[policy][C]`` floats. ``block_nll`` has the same keys, each
    holding the per-block mean NLLs: blocks of ``block`` consecutive predicted tokens within each
    passage (a trailing partial block is dropped), passage by passage, the same tokens for every
    policy, so that two policies can be compared block by block (paired). ``collected`` is the
    :class:`MaskedPass` of ``collect``, or None.
    """

    ppl: dict
    block_nll: dict
    block: int
    blocks_per_passage: int
    collected: MaskedPass | None


def block_nll(nll: torch.Tensor, block: int) -> list[float]:
    """Mean NLL of each block of ``block`` consecutive predicted tokens, passage by passage.

    ``nll`` is ``(B, L - 1)``; returns ``B * ((L - 1) // block)`` values (trailing tokens that do not
    fill a block are dropped), in float64.
    """
    B, T = nll.shape
    n = T // block
    return nll[:, : n * block].double().reshape(B, n, block).mean(dim=-1).flatten().tolist()


def block_books(sources: list[str], blocks_per_passage: int) -> list[str]:
    """The book of every token block (``"emma @ token 94208"`` -> ``"emma"``), passage by passage: the
    unit of the text claims' intervals (design.md: blocks inside passages are not independent)."""
    return [s.split(" @ ")[0] for s in sources for _ in range(blocks_per_passage)]


def spec_key(spec: EvictionSpec) -> str:
    """A file-name-safe name of ``spec`` (``tova_C512``, ``window_sink_C64_i4``, ``full``)."""
    if spec.policy == "full":
        return "full"
    return (f"{spec.policy}_C{spec.budget}" + (f"_i{spec.sinks}" if spec.policy == "window_sink" else "")
            + ("" if spec.default_scope else f"_per{spec.scope}"))


def masked_pass(model, ids: torch.Tensor, spec: EvictionSpec, batch_size: int, block: int,
                keeper: MaskedPass | None = None) -> dict:
    """One App. E pass of ``spec`` over the passages ``ids``, ``batch_size`` at a time: ``ppl``,
    ``block_nll`` (:func:`block_nll`) and ``keeper`` (``keeper`` when it collects, else None)."""
    keeper = keeper if keeper is not None else MaskedPass(spec)
    nll = torch.cat([appendix_e.nll(model, ids[i : i + batch_size], spec, keeper)  # B, L-1 per batch
                     for i in range(0, len(ids), batch_size)])
    return {"ppl": perplexity(nll), "block_nll": block_nll(nll, block), "keeper": keeper if keeper.collect else None}


def spec_passes(model, ids: torch.Tensor, specs: Sequence[EvictionSpec], batch_size: int = 1, block: int = 128,
                rows: Rows = MemoryRows(), key: str = "passes", desc: str = "masked passes") -> dict:
    """``{spec_key: {"ppl", "block_nll"}}``: one App. E pass per spec over ``ids`` (each row
    ``<key>-<spec_key>`` of ``rows``, as in :func:`budget_sweep`)."""
    out = {}
    for spec in tqdm(specs, desc=desc, unit="config"):
        done = once(rows, rows.key(key, spec_key(spec)), lambda spec=spec: masked_pass(model, ids, spec, batch_size, block))
        out[spec_key(spec)] = {"ppl": done["ppl"], "block_nll": done["block_nll"]}
    return out


def budget_sweep(model, ids: torch.Tensor, budgets: Sequence[int], policies: Sequence[str], sinks: int = 4,
                 batch_size: int = 1, collect: EvictionSpec | None = None, picture_layers: Sequence[int] = (),
                 window_budgets: Sequence[int] | None = None, block: int = 128, rows: Rows = MemoryRows(),
                 key: str = "sweep") -> Sweep:
    """Figure 3: perplexity of every (policy, C) by the App. E masked pass, plus the full cache.

    The plain Window runs at ``window_budgets`` (default: ``budgets``). The per-token NLLs of each
    pass are also reduced to per-block means (``block`` tokens; see :class:`Sweep`). ``collect``
    is added to the sweep if absent. Each configuration's pass is row ``<key>-<spec_key>`` of
    ``rows`` (:func:`once`; a section passes ``run.state``, so that a rerun skips finished ones): a
    dict ``ppl``, ``block_nll``, ``keeper`` (the :class:`MaskedPass` of ``collect``, else None).
    """
    def budgets_of(p):
        return window_budgets if p == "window" and window_budgets is not None else budgets

    specs = [EvictionSpec("full")] + [
        EvictionSpec(p, c, sinks) if p == "window_sink" else EvictionSpec(p, c) for p in policies for c in budgets_of(p)
    ]
    if collect is not None and collect not in specs:
        specs.append(collect)
    ppl: dict = {p: {} for p in policies}
    blocks: dict = {p: {} for p in policies}
    collected = None

    def one(spec):
        return masked_pass(model, ids, spec, batch_size, block,
                           MaskedPass(spec, collect=spec == collect, picture_layers=tuple(picture_layers)))

    for spec in tqdm(specs, desc="Figure 3: masked passes", unit="config"):
        done = once(rows, rows.key(key, spec_key(spec)), lambda spec=spec: one(spec))
        if spec == collect:
            if done["keeper"] is None:  # a row kept by a sweep that did not collect (same NLLs): collect now
                done = one(spec)
            collected = done["keeper"]
        if spec.policy == "full":
            ppl["full"], blocks["full"] = done["ppl"], done["block_nll"]
        elif spec.policy in policies and spec.budget in budgets_of(spec.policy):
            ppl[spec.policy][spec.budget] = done["ppl"]
            blocks[spec.policy][spec.budget] = done["block_nll"]
    return Sweep(ppl, blocks, block, (ids.shape[1] - 1) // block, collected)


@torch.no_grad()
def layer_queries_keys(model, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(query, key, scaling)`` of decoder layer ``layer`` in a full-cache forward of ``ids``: the
    rotated ``(B, H, T, D)`` queries and ``(B, Hk, T, D)`` keys its eviction decisions read (for the
    decision benchmark and the test of the tie rule on real text)."""
    from transformers import AttentionInterface

    captured: dict = {}

    def capture(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        if module.layer_idx == layer:
            captured.update(query=query.clone(), key=key.clone(), scaling=scaling)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("tova_capture", capture)
    previous = model.config._attn_implementation
    model.config._attn_implementation = "tova_capture"
    try:
        model.model(input_ids=ids, use_cache=False)
    finally:
        model.config._attn_implementation = previous
    return captured["query"], captured["key"], captured["scaling"]


def _sync(device: torch.device) -> None:
    """Wait for the GPU's queued kernels, so that a timer measures them (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- streaming
def _cache_kw(model) -> str:
    """``cache`` (transformers >= 5.24) or ``past_key_values`` (older 5.x) for the forward call."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


@torch.no_grad()
def streaming_nll(model, ids: torch.Tensor, cache: EvictionCache, prefill: int = 1) -> torch.Tensor:
    """Per-token NLL (``B, L - 1``) fed through ``cache`` one token at a time (the recurrent form).

    The first ``prefill`` tokens go in one forward (choose ``prefill <= C``: nothing is evicted
    before the state overflows, so this equals streaming them one by one).
    """
    kw = _cache_kw(model)
    out = model(ids[:, :prefill], use_cache=True, **{kw: cache})
    nll = [F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2), ids[:, 1:prefill], reduction="none")]  # B, prefill-1
    last = out.logits[:, -1]
    for t in range(prefill, ids.shape[1]):
        nll.append(F.cross_entropy(last.float(), ids[:, t], reduction="none")[:, None])  # B, 1
        last = model(ids[:, t : t + 1], use_cache=True, **{kw: cache}).logits[:, -1]
    return torch.cat(nll, dim=1)


def streaming_check(model, ids: torch.Tensor, spec: EvictionSpec) -> dict:
    """Stream ``ids`` through the Cache of ``spec``; compare with the App. E pass; tokens/s of each."""
    cache = make_cache(spec)
    prefill = min(spec.budget or ids.shape[1], ids.shape[1] - 1)
    _sync(ids.device)
    start = time.perf_counter()
    streamed = streaming_nll(model, ids, cache, prefill=prefill)
    _sync(ids.device)
    stream_s = time.perf_counter() - start
    start = time.perf_counter()
    masked = appendix_e.nll(model, ids, spec)
    _sync(ids.device)
    masked_s = time.perf_counter() - start
    steps = ids.shape[1] - prefill
    return {
        "policy": str(spec), "tokens": int(ids.numel()),
        "ppl_streaming": perplexity(streamed), "ppl_appendix_e": perplexity(masked),
        "max_abs_nll_diff": (streamed - masked).abs().max().item(),
        "max_stored": max(cache.stored_lengths()),
        "streaming_tokens_per_s": ids.shape[0] * steps / stream_s,
        "appendix_e_tokens_per_s": ids.numel() / masked_s,
    }


# ----------------------------------------------------------------------------- Table 1
@torch.no_grad()
def resources(model, ids: torch.Tensor, budgets: Sequence[int], batch: int, steps: int, kv_budget_mb: float) -> dict:
    """Table 1: KV bytes (from the cache tensors), decode throughput and the largest batch vs C.

    ``ms_per_step[C]`` is the median of the timed steps, ``step_ms[C]`` all of them.

    For each C: a TOVA state of C tokens (a C-token prefill of the passages' tokens, one after the
    other, so C may exceed one passage) is copied to ``batch`` rows, then ``steps`` decode steps are
    timed (each evicts one token, so the state stays at C).
    ``max_batch`` is the number of sequences whose KV cache fits ``kv_budget_mb`` (weights excluded).
    """
    kw = _cache_kw(model)
    out = {"budgets": list(budgets), "batch": batch, "kv_mb_per_seq": {}, "kv_bytes_per_seq": {}, "ms_per_step": {},
           "step_ms": {}, "tokens_per_s": {}, "max_batch": {}, "kv_budget_mb": kv_budget_mb}
    stream = ids.reshape(1, -1)  # 1, passages * length
    if max(budgets) >= stream.shape[1]:
        raise ValueError(f"Table 1 needs more than C={max(budgets)} tokens; the passages hold {stream.shape[1]}")
    for C in tqdm(budgets, desc="Table 1: decode throughput", unit="C"):
        cache = make_cache(EvictionSpec("tova", C))
        model(stream[:, :C], use_cache=True, **{kw: cache})
        cache.batch_repeat_interleave(batch)
        token = stream[:, C : C + 1].expand(batch, 1)
        model(token, use_cache=True, **{kw: cache})  # warm-up step
        times = []
        for _ in range(steps):
            _sync(token.device)
            start = time.perf_counter()
            model(token, use_cache=True, **{kw: cache})
            _sync(token.device)
            times.append(time.perf_counter() - start)
        if max(cache.stored_lengths()) != C:
            raise AssertionError(f"TOVA state holds {max(cache.stored_lengths())} tokens, not C={C}")
        per_seq = cache.nbytes() / batch / 2**20
        step = sorted(times)[len(times) // 2]  # median: robust to other processes on a shared CPU
        out["kv_mb_per_seq"][C] = per_seq
        out["kv_bytes_per_seq"][C] = cache.nbytes() // batch
        out["ms_per_step"][C] = 1e3 * step
        out["step_ms"][C] = [1e3 * t for t in times]  # every timed step (the claim's interval resamples them)
        out["tokens_per_s"][C] = batch / step
        out["max_batch"][C] = int(kv_budget_mb // per_seq)
    return out


# ----------------------------------------------------------------------------- what TOVA keeps
PUNCTUATION = set(string.punctuation) | {"“", "”", "‘", "’", "—", "–", "…"}
TOKEN_CLASSES = ("first token", "newline", "punctuation", "other")


def token_class(position: int, text: str) -> str:
    """The paper's token categories (§6): the first token, newlines, punctuation, everything else."""
    if position == 0:
        return "first token"
    if "\n" in text:
        return "newline"
    stripped = text.strip()
    if stripped and all(ch in PUNCTUATION for ch in stripped):
        return "punctuation"
    return "other"


def kept_analysis(keeper: MaskedPass, ids: torch.Tensor, tokenizer, first_half_only: bool = True) -> dict:
    """Which tokens TOVA keeps: mean survival by token class, first-token survival per layer.

    A token's survival is the fraction of later steps at which it is in a layer's state. Only tokens
    in the first half of a chunk are counted (a late token has few later steps and is kept by
    recency alone). The same means are also given passage by passage (``*_by_passage``: None where
    a passage has no token of a class), the units of the claims' intervals.
    """
    layers = sorted(keeper.survival)
    survival = torch.stack([keeper.survival[l] for l in layers])  # layers, B, L
    _, B, L = survival.shape
    limit = L // 2 if first_half_only else L
    totals = {c: [0.0, 0] for c in TOKEN_CLASSES}
    by_passage = {c: [] for c in TOKEN_CLASSES}
    for b in range(B):
        pieces = tokenizer.convert_ids_to_tokens(ids[b].tolist())
        texts = [tokenizer.convert_tokens_to_string([p]) for p in pieces]
        mean_over_layers = survival[:, b].mean(dim=0)  # L
        passage = {c: [0.0, 0] for c in TOKEN_CLASSES}
        for j in range(limit):
            c = token_class(j, texts[j])
            v = mean_over_layers[j].item()
            totals[c][0] += v
            totals[c][1] += 1
            passage[c][0] += v
            passage[c][1] += 1
        for c, (s, n) in passage.items():
            by_passage[c].append(s / n if n else None)
    return {
        "budget": keeper.spec.budget,
        "class_survival": {c: (s / n if n else None) for c, (s, n) in totals.items()},
        "class_counts": {c: n for c, (_, n) in totals.items()},
        "class_survival_by_passage": by_passage,  # class -> B values
        "first_token_by_layer": survival[:, :, 0].mean(dim=1).tolist(),  # layers
        "first_token_by_passage": survival[:, :, 0].mean(dim=0).tolist(),  # B
        "first_token_by_layer_passage": survival[:, :, 0].tolist(),  # layers x B
        "mean_by_layer": survival[:, :, :limit].mean(dim=(1, 2)).tolist(),
        "occupancy": {str(l): [[round(v, 3) for v in row] for row in keeper.occupancy[l].tolist()]
                      for l in sorted(keeper.occupancy)},
        "length": L,
    }


def highlight(keeper: MaskedPass, ids: torch.Tensor, tokenizer, n_tokens: int = 200, row: int = 0):
    """HTML of the first ``n_tokens`` of passage ``row``, each token shaded by its survival."""
    import html

    survival = torch.stack([keeper.survival[l][row] for l in sorted(keeper.survival)]).mean(dim=0)  # L
    pieces = tokenizer.convert_ids_to_tokens(ids[row, :n_tokens].tolist())
    spans = []
    for j, piece in enumerate(pieces):
        text = html.escape(tokenizer.convert_tokens_to_string([piece])).replace("\n", "⏎<br>")
        alpha = survival[j].item()
        spans.append(f'<span title="{alpha:.2f}" style="background: rgba(213,94,0,{alpha:.2f})">{text}</span>')
    return ('<div style="font-family: serif; line-height: 1.6; max-width: 60em">' + "".join(spans) + "</div>")


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def generate_each(model, tokenizer, prompt_ids: torch.Tensor, specs: Sequence[EvictionSpec], new_tokens: int) -> dict:
    """Greedy continuation of one prompt (``1, P``) under each policy; the prompt is cut after prefill."""
    kw = _cache_kw(model)
    texts = {}
    for spec in tqdm(specs, desc="Generation", unit="policy"):
        out = model.generate(prompt_ids, max_new_tokens=new_tokens, do_sample=False, attention_mask=torch.ones_like(prompt_ids),
                             pad_token_id=tokenizer.eos_token_id, **{kw: make_cache(spec)})
        texts[str(spec)] = tokenizer.decode(out[0, prompt_ids.shape[1] :], skip_special_tokens=True)
    return texts
