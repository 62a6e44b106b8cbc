"""Why H2O beats TOVA on this model (issue #27): sensitivity passes beside Figure 3's claims.

In the paper TOVA beats H2O at every C; on SmolLM2-135M the records found the opposite at C = 256
and 512, in every book. :func:`sensitivity_passes` measures two candidate factors on the first
passages (one per book): a BOS token prepended to every passage, and each policy's kept sets at
the other's scope (H2O one set per layer, TOVA one per KV head; ``EvictionSpec.scope``).
:func:`sensitivity_note` turns them into the note of the TOVA <= H2O claims: measurements, not
claims (the verdicts stay as measured). Books are the unit of every interval, as in the claims.
"""

from __future__ import annotations

import pandas as pd

from reproduce import claims

from . import experiments as ex
from .policies import EvictionSpec

SENSITIVITY_ROWS = ("as in Figure 3", "BOS token prepended", "H2O: one set per layer", "TOVA: one set per KV head")


def sensitivity_passes(params, run, text, blocks_per_passage: int) -> dict:
    """Why H2O beats TOVA on this model (issue #27): TOVA and H2O at ``sensitivity_budgets`` on the
    first ``sensitivity_passages`` passages (one per book), (a) with a BOS token prepended to every
    passage (our chunks start mid-text: the paper's LLaMA-2 chunks too, but its attention sink may
    differ), and (b) with each policy's kept sets at the other's scope (H2O one set per layer, TOVA
    one per KV head). Reported as measurements beside the Figure 3 claims, not as claims.

    Returns ``bos`` / ``scope``: ``{spec_key: block_nll}`` (the BOS passes' blocks cover the same
    number of predicted tokens, shifted by one), and what the passes ran on.
    """
    n, budgets = params.sensitivity_passages, params.sensitivity_budgets
    ids = text.ids[:n]
    scope_specs = [EvictionSpec(p, C, scope=s) for C in budgets for p, s in (("h2o", "layer"), ("tova", "head"))]
    scoped = ex.spec_passes(text.model, ids, scope_specs, params.batch_size, params.nll_block, run.state, "sens-scope",
                            desc="sensitivity: kept-set scope")
    bos_id = ex.bos_token_id(text.tokenizer)
    bos = {}
    if bos_id is not None:
        bos_specs = [EvictionSpec("full")] + [EvictionSpec(p, C) for C in budgets for p in ("h2o", "tova")]
        bos = ex.spec_passes(text.model, ex.with_bos(ids, bos_id), bos_specs, params.batch_size, params.nll_block,
                             run.state, "sens-bos", desc="sensitivity: BOS token")
    return {"passages": n, "budgets": list(budgets), "blocks_per_passage": blocks_per_passage,
            "bos_token_id": bos_id, "sources": text.sources[:n],
            "bos": {k: v["block_nll"] for k, v in bos.items()}, "scope": {k: v["block_nll"] for k, v in scoped.items()}}


def sensitivity_ratios(sensitivity: dict, block_nll: dict, books: list[str], C: int) -> dict[str, claims.Estimate]:
    """PPL(TOVA) / PPL(H2O) at ``C`` on the sensitivity passages, for each row of :data:`SENSITIVITY_ROWS`
    that was measured (books as units, as the claims)."""
    k = sensitivity["passages"] * sensitivity["blocks_per_passage"]
    sub = books[:k]
    tova, h2o = block_nll["tova"][C][:k], block_nll["h2o"][C][:k]
    out = {SENSITIVITY_ROWS[0]: claims.ppl_ratio(tova, h2o, "books", sub)}
    bos, scope = sensitivity.get("bos") or {}, sensitivity.get("scope") or {}
    if f"tova_C{C}" in bos:
        out[SENSITIVITY_ROWS[1]] = claims.ppl_ratio(bos[f"tova_C{C}"], bos[f"h2o_C{C}"], "books", sub)
    if f"h2o_C{C}_perlayer" in scope:
        out[SENSITIVITY_ROWS[2]] = claims.ppl_ratio(tova, scope[f"h2o_C{C}_perlayer"], "books", sub)
    if f"tova_C{C}_perhead" in scope:
        out[SENSITIVITY_ROWS[3]] = claims.ppl_ratio(scope[f"tova_C{C}_perhead"], h2o, "books", sub)
    return out


def _side(e: claims.Estimate) -> str:
    if e.high is not None and e.high < 1:
        return "TOVA ahead"
    if e.low is not None and e.low > 1:
        return "H2O ahead"
    return "no clear order"


def sensitivity_note(sensitivity: dict, block_nll: dict, books: list[str], C: int) -> str:
    """The sensitivity passes at ``C`` in words: each ratio with its interval, and which factor moves the ordering."""
    ratios = sensitivity_ratios(sensitivity, block_nll, books, C)
    base = _side(ratios[SENSITIVITY_ROWS[0]])
    parts = [f"{name} {e.value:.4f} [{e.low:.4f}, {e.high:.4f}] ({_side(e)})" for name, e in ratios.items()]
    moved = [name for name, e in list(ratios.items())[1:] if _side(e) != base]
    verdict = (f"moves the ordering: {', '.join(moved)}" if moved else "no factor moves the ordering")
    return (f"sensitivity, PPL(TOVA)/PPL(H2O) on the first {sensitivity['passages']} passages (one per book): "
            + "; ".join(parts) + f". Of the factors tried, {verdict}")


def sensitivity_table(sensitivity: dict, block_nll: dict, books: list[str]) -> pd.DataFrame:
    """Rows of :data:`SENSITIVITY_ROWS` x C: ``ratio [low, high]`` of PPL(TOVA) / PPL(H2O)."""
    cols = {}
    for C in sensitivity["budgets"]:
        ratios = sensitivity_ratios(sensitivity, block_nll, books, C)
        cols[f"C = {C}"] = {name: f"{e.value:.4f} [{e.low:.4f}, {e.high:.4f}]" for name, e in ratios.items()}
    table = pd.DataFrame(cols).reindex(index=[r for r in SENSITIVITY_ROWS if any(r in c for c in cols.values())])
    table.index.name = "PPL(TOVA) / PPL(H2O)"
    return table
