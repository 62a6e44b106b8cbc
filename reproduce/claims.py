"""Claims as pre-registered tests: a relation, a threshold with its source, an estimate, a verdict.

A claim is written in code before the run (``sections.py`` of each paper): what is compared, the
relation it must satisfy, the threshold and where the threshold comes from (``paper: Table 3`` or
``ours: <reason>``). The run supplies the estimate. Noisy estimates carry a 95 % interval over
their natural units (seeds of a training run; token blocks or passages of an evaluation over
text), computed on a *paired* statistic (both rows on the same seeds, the same tokens), and the
verdict reads the interval:

- ``holds``: the whole interval lies on the claim's side of the threshold;
- ``contradicted``: the whole interval lies on the other side;
- ``inconclusive``: the interval straddles the threshold (the data cannot tell);
- ``not testable``: a precondition measured in the same run failed (e.g. "BLEU >= 5" for a claim
  about BLEU differences); the measured precondition is reported with it.

Exact estimates (float64 equalities, FLOP-count exponents, byte counts) have no interval: they
hold or are contradicted by the point value, within the claim's tolerance.

Usage (``sections.py``)::

    diff = claims.paired_t(ppl_small, ppl_base)             # per-seed values, same seeds
    run.claim("t3_small_dk_hurts", artifact="Table 3 (B)", section="4. Table 3",
              text="smaller d_k raises dev PPL (paired difference over seeds)",
              ours=diff, relation=">", threshold=0.0, source="paper: Table 3 row B",
              paper="4.92 -> 5.16/5.01 dev PPL")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

RELATIONS = ("<", "<=", ">", ">=", "~=")
VERDICTS = ("holds", "contradicted", "inconclusive", "not testable")
SOURCES = ("paper:", "ours:")
CONFIDENCE = 0.95
MIN_SEEDS = 3  # design.md: a seed-level interval rests on >= 3 seeds; fewer is inconclusive by rule
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same measurements always give the same interval


# ------------------------------------------------------------------------------------- estimates
@dataclass(frozen=True)
class Estimate:
    """A measured value, with a 95 % interval when it is noisy (``low``/``high`` None when exact)."""

    value: float | None
    low: float | None = None
    high: float | None = None
    method: str = "exact"  # "paired t over 3 seeds", "paired block bootstrap over 64 blocks of 128 tokens"
    n: int | None = None  # number of units behind the interval
    units: tuple[float, ...] = ()  # the paired per-unit values (per-seed differences), where few

    @property
    def noisy(self) -> bool:
        return self.low is not None or self.high is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["units"] = list(self.units)
        return {k: _plain(v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        return cls(value=from_json(d.get("value")), low=from_json(d.get("low")), high=from_json(d.get("high")),
                   method=d.get("method", "exact"), n=d.get("n"), units=tuple(d.get("units") or ()))


def exact(value: float | None) -> Estimate:
    """A deterministic measurement (an equality in float64, a count, an exponent of FLOP counts)."""
    return Estimate(value=_float(value))


def t_interval(values: Sequence[float], what: str = "seeds") -> Estimate:
    """Mean of paired per-unit values with a Student-t 95 % interval (few units: seeds).

    One unit gives no interval: ``low``/``high`` are ``-inf``/``inf`` and the verdict is inconclusive.
    Seeds need at least ``MIN_SEEDS``: a t interval on 2 seeds (1 degree of freedom) is narrow only
    when two numbers happen to agree, so fewer seeds give no interval either (inconclusive by rule).
    """
    from scipy import stats

    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = math.fsum(xs) / n
    if n == 1:
        return Estimate(mean, -math.inf, math.inf, f"1 {what.rstrip('s')}: no interval", 1, tuple(xs))
    if what == "seeds" and n < MIN_SEEDS:
        return Estimate(mean, -math.inf, math.inf, f"{n} seeds: fewer than {MIN_SEEDS}, no interval by rule", n, tuple(xs))
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, f"paired t over {n} {what}", n, tuple(xs))


def paired_t(a: Sequence[float], b: Sequence[float], stat: str = "difference", what: str = "seeds") -> Estimate:
    """``a - b`` (or ``a / b`` with ``stat="ratio"``, interval on the log scale) unit by unit.

    ``a[i]`` and ``b[i]`` must come from the same unit (the same seed).
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need the same units: {len(a)} vs {len(b)}")
    if stat == "difference":
        return t_interval([x - y for x, y in zip(a, b)], what)
    if stat == "ratio":
        logs = t_interval([math.log(x / y) for x, y in zip(a, b)], what)
        return Estimate(math.exp(logs.value), _exp(logs.low), _exp(logs.high), logs.method + " (log ratio)",
                        logs.n, tuple(x / y for x, y in zip(a, b)))
    raise ValueError(f"stat must be 'difference' or 'ratio', got {stat!r}")


def paired_bootstrap(units: Sequence[Sequence[float]], statistic: Callable[..., Any], what: str) -> Estimate:
    """``statistic(*columns)`` with a percentile-bootstrap 95 % interval, resampling whole units.

    ``units`` holds one sequence per row compared, each with one value per unit (a token block, a
    passage); the units are resampled together, so the comparison stays paired. ``statistic``
    takes the columns as NumPy arrays and reduces along the last axis (``axis=-1``).
    """
    import numpy as np
    from scipy import stats

    columns = [np.asarray(u, dtype=np.float64) for u in units]
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError("paired_bootstrap: every row needs one value per unit")
    value = float(statistic(*columns))
    if n < 2:
        return Estimate(value, -math.inf, math.inf, f"1 {what}: no interval", n)
    res = stats.bootstrap(columns, lambda *c, axis=-1: statistic(*c, axis=axis), paired=True, vectorized=True,
                          confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                          rng=np.random.default_rng(BOOTSTRAP_SEED))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Estimate(value, lo, hi, f"paired bootstrap over {n} {what}", n)


def cluster_bootstrap(units: Sequence[Sequence[float]], clusters: Sequence[Any], statistic: Callable[..., Any],
                      what: str) -> Estimate:
    """``statistic(*columns)`` with a two-level percentile-bootstrap 95 % interval: resample the
    clusters (books), then the units (token blocks) inside each drawn cluster, all rows together.

    For blocks that sit inside passages (design.md): the blocks of one book are not independent, so
    resampling them as if they were gives an interval that is too narrow. ``clusters[i]`` names the
    cluster of unit ``i``; ``statistic`` reduces along the last axis (``axis=-1``) as in
    :func:`paired_bootstrap`. The interval's ``n`` is the number of clusters.
    """
    import numpy as np

    columns = [np.asarray(u, dtype=np.float64) for u in units]
    n = len(columns[0])
    if any(len(c) != n for c in columns) or len(clusters) != n:
        raise ValueError("cluster_bootstrap: every row and the cluster labels need one value per unit")
    names = list(dict.fromkeys(clusters))
    members = [np.flatnonzero(np.asarray([c == name for c in clusters])) for name in names]
    k = len(members)
    value = float(statistic(*columns))
    method = f"clustered bootstrap over {k} {what} (then their blocks)"
    if k < 2:
        return Estimate(value, -math.inf, math.inf, f"1 {what.rstrip('s')}: no interval", k)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = np.empty(BOOTSTRAP_RESAMPLES)
    for r in range(BOOTSTRAP_RESAMPLES):
        picked = rng.integers(0, k, k)
        idx = np.concatenate([members[c][rng.integers(0, len(members[c]), len(members[c]))] for c in picked])
        draws[r] = statistic(*(c[idx] for c in columns))
    lo, hi = np.quantile(draws, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(value, float(lo), float(hi), method, k)


def seeds_and_items(a: Sequence[Any], b: Sequence[Any], score: Callable[[Any], float], stat: str = "difference",
                    what: str = "dev sentences", resamples: int = 1_000) -> Estimate:
    """``score(a) - score(b)`` (or ``/`` with ``stat="ratio"``) over seeds, with a 95 % interval that
    covers both sources of variation: the seeds (training) and the evaluation items (the dev set).

    ``a[s]``, ``b[s]``: per-item additive statistics of seed ``s`` (items x k arrays, the same items in
    the same order for every seed and both rows: e.g. each sentence's summed NLL and token count);
    ``score`` maps their sum over items (a k-vector, or one resample's weighted sum) to the metric
    (perplexity, corpus BLEU). Per seed, d_s = score(a_s) - score(b_s) (the log ratio for
    ``"ratio"``). The seed part of the variance is the t interval's s^2 / k; the item part is the
    variance of the seed-mean d over paired resamples of the items (the same draw for every seed and
    both rows). Seeds see the same items, so the two are independent and add; the interval is
    mean +- t_(k-1) * sqrt(s^2/k + var_items): the seeds' quantile for both parts, so the interval is
    never narrower than the seeds-only t interval (conservative: Welch-Satterthwaite's degrees of
    freedom would shrink it when the items dominate). Fewer than ``MIN_SEEDS`` seeds: no interval
    (as :func:`t_interval`).
    """
    import numpy as np
    from scipy import stats

    if len(a) != len(b) or not a:
        raise ValueError(f"seeds_and_items needs the same seeds for both rows, got {len(a)} and {len(b)}")
    if stat not in ("difference", "ratio"):
        raise ValueError(f"stat must be 'difference' or 'ratio', got {stat!r}")
    A = [np.asarray(x, dtype=np.float64) for x in a]
    B = [np.asarray(x, dtype=np.float64) for x in b]
    n = len(A[0])
    if any(len(x) != n for x in A + B):
        raise ValueError("seeds_and_items: every seed and row needs one row of statistics per item")

    def d(sa, sb) -> float:
        return math.log(score(sa) / score(sb)) if stat == "ratio" else score(sa) - score(sb)

    per_seed = [d(x.sum(0), y.sum(0)) for x, y in zip(A, B)]
    k = len(per_seed)
    mean = math.fsum(per_seed) / k
    back = math.exp if stat == "ratio" else (lambda v: v)
    units = tuple(back(v) for v in per_seed)
    if k < MIN_SEEDS:
        return Estimate(back(mean), -math.inf, math.inf, f"{k} seed(s): fewer than {MIN_SEEDS}, no interval by rule", k,
                        units)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])  # resamples, items
    sums_a, sums_b = [draws @ x for x in A], [draws @ y for y in B]  # per seed: resamples x k
    item_means = [math.fsum(d(sa[r], sb[r]) for sa, sb in zip(sums_a, sums_b)) / k for r in range(resamples)]
    var_items = float(np.var(item_means, ddof=1))
    var_seeds = math.fsum((v - mean) ** 2 for v in per_seed) / (k - 1) / k
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, k - 1)) * math.sqrt(var_seeds + var_items)
    method = f"paired over {k} seeds (t) and {n} {what} (bootstrap){' (log ratio)' if stat == 'ratio' else ''}"
    return Estimate(back(mean), back(mean - half), back(mean + half), method, k, units)


def bootstrap_groups(groups: Sequence[Sequence[float]], statistic: Callable[[list], float | None], what: str,
                     resamples: int = 2_000) -> Estimate:
    """``statistic(groups)`` with a percentile-bootstrap 95 % interval, each group resampled on its own.

    For measurements that are not paired unit by unit: the repeated timings of each point of a
    curve (every (layer, n) of a cost curve; each of two kernels timed in its own process).
    ``statistic`` takes a list of NumPy arrays, one per group, and may return None (e.g. curves that
    do not cross); if any resample does, the interval is unbounded (the claim is inconclusive).
    """
    import numpy as np

    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    value = statistic(arrays)
    n = min(len(a) for a in arrays)
    if value is None or n < 2:
        return Estimate(_float(value), -math.inf, math.inf, f"{n} {what}: no interval", n)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = [statistic([a[rng.integers(0, len(a), len(a))] for a in arrays]) for _ in range(resamples)]
    if any(d is None for d in draws):
        return Estimate(float(value), -math.inf, math.inf, f"bootstrap over {what}: some resamples undefined", n)
    lo, hi = np.quantile(draws, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(float(value), float(lo), float(hi), f"bootstrap over {what} ({n} per group)", n)


def ppl_ratio(nll_a: Sequence[float], nll_b: Sequence[float], what: str = "token blocks",
              clusters: Sequence[Any] | None = None) -> Estimate:
    """PPL(a) / PPL(b) = exp(mean NLL_a - mean NLL_b) from per-unit mean NLLs of equal-size units.

    With ``clusters`` (the book of each block), the unit is the cluster: the mean NLL difference of
    each book's blocks, a Student-t interval over books, on the log scale (``what`` names the
    clusters). A percentile bootstrap over 3-7 books would be too narrow (few distinct resamples)."""
    import numpy as np

    def ratio(a, b, axis=-1):
        return np.exp(np.mean(a - b, axis=axis))

    if clusters is not None:
        a, b = np.asarray(nll_a, dtype=np.float64), np.asarray(nll_b, dtype=np.float64)
        labels = np.asarray(list(clusters), dtype=object)
        if not len(a) == len(b) == len(labels):
            raise ValueError("ppl_ratio: every row and the cluster labels need one value per block")
        names = list(dict.fromkeys(clusters))
        logs = t_interval([float(np.mean((a - b)[labels == name])) for name in names], what)
        method = logs.method.replace("paired t over", "paired t over the per-cluster mean NLL differences of") + " (log ratio)"
        return Estimate(math.exp(logs.value), _exp(logs.low), _exp(logs.high), method, logs.n,
                        tuple(math.exp(u) for u in logs.units))
    return paired_bootstrap([nll_a, nll_b], ratio, what)


# ---------------------------------------------------------------------------------------- claims
@dataclass
class Precondition:
    """What must hold in the same run for a claim to be testable at all (e.g. BLEU >= 5)."""

    text: str
    value: float | None
    relation: str
    threshold: float
    source: str
    holds: bool = field(default=False)

    def __post_init__(self) -> None:
        _check_relation(self.relation, self.text)
        _check_source(self.source, self.text)
        self.value = _float(self.value)
        self.holds = self.value is not None and _inside(self.relation, self.value, self.threshold, 0.0, False)


@dataclass
class Claim:
    """One pre-registered claim and its verdict."""

    id: str
    artifact: str  # "Table 5", "Figure 3", "§6.2"
    section: str  # the notebook section that measures it
    text: str  # the claim in words, naming what ``ours`` measures
    ours: Estimate
    relation: str  # one of RELATIONS: ``ours <relation> threshold``
    threshold: float
    source: str  # "paper: Table 3" or "ours: <reason>"
    tol: float = 0.0  # for "~=": |ours - threshold| <= tol (relative to |threshold| when rel)
    rel: bool = False
    paper: Any = None  # what the paper reports (number or short text)
    note: str = ""  # the scale caveat, or why the verdict is what it is
    precondition: Precondition | None = None
    kind: str = ""  # paper / control / check, from the paper's claims ledger (reproduce.ledger)
    status: str = "registered"  # or "exploratory": written after the numbers it judges had been seen
    verdict: str = field(default="")

    def __post_init__(self) -> None:
        _check_relation(self.relation, self.id)
        _check_source(self.source, self.id)
        if not isinstance(self.ours, Estimate):
            self.ours = exact(self.ours)
        self.threshold = float(self.threshold)
        if self.tol < 0:
            raise ValueError(f"claim {self.id!r}: tol must be >= 0, got {self.tol}")
        self.verdict = judge(self.relation, self.ours, self.threshold, self.tol, self.rel, self.precondition)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("id", "artifact", "section", "text", "relation", "threshold", "source",
                                           "tol", "rel", "paper", "note", "kind", "status", "verdict")}
        d["ours"] = self.ours.to_dict()
        d["precondition"] = None if self.precondition is None else asdict(self.precondition)
        return {k: _plain(v) for k, v in d.items()}


def judge(relation: str, ours: Estimate, threshold: float, tol: float = 0.0, rel: bool = False,
          precondition: Precondition | None = None) -> str:
    """The verdict of ``ours <relation> threshold`` (see the module docstring)."""
    if precondition is not None and not precondition.holds:
        return "not testable"
    if too_few_seeds(ours):
        return "inconclusive"  # also for records made before the rule: their stored interval is not used
    if ours.value is None:
        return "inconclusive"  # nothing was measured (e.g. a crossover outside the measured range)
    if not ours.noisy:
        return "holds" if _inside(relation, ours.value, threshold, tol, rel) else "contradicted"
    lo = -math.inf if ours.low is None else ours.low
    hi = math.inf if ours.high is None else ours.high
    if _inside(relation, lo, threshold, tol, rel) and _inside(relation, hi, threshold, tol, rel):
        return "holds"  # the claim's region is an interval (a half-line or a band): both ends inside
    if relation == "~=":
        bound = tol * abs(threshold) if rel else tol
        outside = hi < threshold - bound or lo > threshold + bound
    else:  # a half-line: both ends outside means the whole interval is outside
        outside = not _inside(relation, lo, threshold, tol, rel) and not _inside(relation, hi, threshold, tol, rel)
    return "contradicted" if outside else "inconclusive"


def too_few_seeds(ours: Estimate) -> bool:
    """An interval over fewer than ``MIN_SEEDS`` seeds (design.md): inconclusive by rule."""
    return ours.noisy and ours.n is not None and ours.n < MIN_SEEDS and "seed" in ours.method


def relation_text(claim: Mapping[str, Any]) -> str:
    """``> 0``, ``≈ 1 ± 5%`` for tables."""
    relation, threshold = claim["relation"], claim["threshold"]
    if relation == "~=":
        tol = f"{claim['tol'] * 100:g}%" if claim.get("rel") else f"{claim['tol']:g}"
        return f"≈ {threshold:g} ± {tol}"
    return f"{relation} {threshold:g}"


def counts(claims: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many claims got each verdict (every verdict listed, zeros included)."""
    out = dict.fromkeys(VERDICTS, 0)
    for c in claims:
        out[c["verdict"]] += 1
    return out


def counts_text(claims: Sequence[Mapping[str, Any]]) -> str:
    """``"9 hold, 2 contradicted, 4 inconclusive"`` (verdicts with no claim left out)."""
    words = {"holds": "hold", "contradicted": "contradicted", "inconclusive": "inconclusive", "not testable": "not testable"}
    n = counts(claims)
    return ", ".join(f"{v} {words[k]}" for k, v in n.items() if v) or "no claims"


# --------------------------------------------------------------------------------------- helpers
def _inside(relation: str, x: float, threshold: float, tol: float, rel: bool) -> bool:
    if relation == "<":
        return x < threshold
    if relation == "<=":
        return x <= threshold
    if relation == ">":
        return x > threshold
    if relation == ">=":
        return x >= threshold
    bound = tol * abs(threshold) if rel else tol
    return abs(x - threshold) <= bound


def _check_relation(relation: str, who: str) -> None:
    if relation not in RELATIONS:
        raise ValueError(f"claim {who!r}: relation {relation!r} is not one of {RELATIONS}")


def _check_source(source: str, who: str) -> None:
    if not isinstance(source, str) or not source.startswith(SOURCES) or len(source.split(":", 1)[1].strip()) < 2:
        raise ValueError(f"claim {who!r}: source must say where the threshold comes from, as 'paper: <where>' "
                         f"or 'ours: <reason>', got {source!r}")


def _float(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _exp(x: float | None) -> float | None:
    return None if x is None else math.exp(x) if math.isfinite(x) else (math.inf if x > 0 else 0.0)


def _plain(v: Any) -> Any:
    """JSON-safe: infinities as the strings "inf"/"-inf"."""
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def from_json(x: Any) -> float | None:
    """Inverse of the JSON encoding of a bound: "inf"/"-inf" strings back to floats."""
    if x in ("inf", "-inf"):
        return math.inf if x == "inf" else -math.inf
    return _float(x)


def estimate_text(ours: Mapping[str, Any]) -> str:
    """``1.004 [0.995, 1.01]`` or ``3e-13``: a claim's estimate and its interval, for text tables."""
    value = ours.get("value")
    if value is None:
        return "–"
    text = short_text(float(value))
    low, high = from_json(ours.get("low")), from_json(ours.get("high"))
    if low is not None or high is not None:
        text += f" [{short_text(low)}, {short_text(high)}]"
    return text


def short_text(value: Any) -> str:
    """A number in 4 significant digits (infinities as ∞), mappings item by item: for text tables."""
    if isinstance(value, float):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {short_text(v)}" for k, v in value.items()) + "}"
    return str(value)
