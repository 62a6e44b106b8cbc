"""Claims as pre-registered tests (reproduce/claims.py): estimates, intervals, verdicts, and the
committed records' provenance and shape."""

import json
import math
import subprocess

import numpy as np
import pytest

from conftest import REPO_ROOT
from reproduce import claims, config, results
from reproduce.claims import Estimate, judge


def noisy(value, low, high):
    return Estimate(value, low, high, "test interval", 3)


# -------------------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize(
    "relation, estimate, threshold, verdict",
    [
        (">", noisy(2.0, 1.0, 3.0), 0.0, "holds"),
        (">", noisy(-2.0, -3.0, -1.0), 0.0, "contradicted"),
        (">", noisy(0.5, -1.0, 2.0), 0.0, "inconclusive"),
        ("<=", noisy(0.99, 0.98, 1.0), 1.0, "holds"),  # touching the threshold is still on the claim's side
        ("<=", noisy(1.004, 0.995, 1.010), 1.0, "inconclusive"),  # TOVA vs H2O at 188ab36
        ("<", noisy(1.02, 1.01, 1.03), 1.0, "contradicted"),
        (">=", Estimate(1.0, -math.inf, math.inf, "1 seed", 1), 0.0, "inconclusive"),  # one seed: no interval
        (">", claims.exact(0.1), 0.0, "holds"),
        (">", claims.exact(-0.1), 0.0, "contradicted"),
        ("<", claims.exact(None), 1.0, "inconclusive"),  # nothing measured
    ],
)
def test_verdicts_read_the_interval(relation, estimate, threshold, verdict):
    assert judge(relation, estimate, threshold) == verdict


@pytest.mark.parametrize(
    "estimate, tol, rel, verdict",
    [
        (noisy(1.01, 0.97, 1.04), 0.05, False, "holds"),
        (noisy(0.93, 0.90, 0.94), 0.05, False, "contradicted"),
        (noisy(0.96, 0.92, 1.00), 0.05, False, "inconclusive"),
        (claims.exact(105.0), 0.05, True, "holds"),  # relative to |threshold| = 100
        (claims.exact(106.0), 0.05, True, "contradicted"),
    ],
)
def test_equal_within_tolerance(estimate, tol, rel, verdict):
    threshold = 100.0 if rel else 1.0
    assert judge("~=", estimate, threshold, tol, rel) == verdict


def test_a_failed_precondition_makes_a_claim_not_testable():
    low_bleu = claims.Precondition("test BLEU", 0.9, ">=", 5.0, "ours: BLEU below 5 is seed noise here")
    assert not low_bleu.holds
    assert judge(">", noisy(2.0, 1.0, 3.0), 0.0, precondition=low_bleu) == "not testable"
    ok = claims.Precondition("test BLEU", 7.0, ">=", 5.0, "ours: BLEU below 5 is seed noise here")
    assert judge(">", noisy(2.0, 1.0, 3.0), 0.0, precondition=ok) == "holds"


@pytest.mark.parametrize("source", ["", "paper", "ours:", "our reason", "paper:  ", "ours: x"])
def test_a_threshold_needs_its_source(source):
    with pytest.raises(ValueError, match="source"):
        claims.Claim("c", "T", "s", "t", claims.exact(1.0), "<", 2.0, source)


# ------------------------------------------------------------------------------------- estimates
def test_paired_t_matches_the_textbook_interval():
    a, b = [10.0, 11.0, 12.5], [9.0, 9.5, 10.0]
    e = claims.paired_t(a, b)
    d = np.array(a) - np.array(b)
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert e.value == pytest.approx(d.mean()) and e.n == 3
    assert (e.low, e.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert e.units == pytest.approx(tuple(d))


def test_paired_t_ratio_is_symmetric_on_the_log_scale():
    e = claims.paired_t([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], stat="ratio")
    assert e.value == pytest.approx(2.0) and e.low == pytest.approx(2.0) and e.high == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same units"):
        claims.paired_t([1.0], [1.0, 2.0])


def test_pairing_removes_the_shared_noise():
    # The unit-to-unit spread (seeds, passages) is large; the paired difference is small and steady.
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 5, 40)
    a, b = 3.0 + shared + rng.normal(0, 0.01, 40), 3.05 + shared + rng.normal(0, 0.01, 40)
    e = claims.ppl_ratio(a, b, "blocks")
    assert e.high < 1.0, "paired: the 0.05-nat gap is resolved despite the shared spread"
    assert judge("<", e, 1.0) == "holds"


def test_bootstrap_is_deterministic_and_covers_the_value():
    rng = np.random.default_rng(1)
    a, b = rng.normal(2.0, 0.3, 64), rng.normal(2.0, 0.3, 64)
    e1, e2 = claims.ppl_ratio(a, b), claims.ppl_ratio(a, b)
    assert e1 == e2
    assert e1.low <= e1.value <= e1.high
    assert e1.value == pytest.approx(math.exp((a - b).mean()))


def test_estimates_survive_json():
    e = claims.paired_t([1.0], [0.5])
    back = Estimate.from_dict(json.loads(json.dumps(e.to_dict())))
    assert back == e and back.high == math.inf


# ---------------------------------------------------------------------------- committed records
def _committed_records():
    out = subprocess.run(["git", "ls-files", "results/*/cpu.json", "results/*/gpu.json"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    return [REPO_ROOT / p for p in out.stdout.split()]


@pytest.mark.parametrize("path", _committed_records(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_records_have_clean_provenance_and_full_claims(path):
    record = results.load_record(path)  # this schema
    prov = record["provenance"]
    assert prov["git_dirty"] is False, f"{path.name} was produced from a dirty tree"
    on_main = subprocess.run(["git", "merge-base", "--is-ancestor", prov["git_commit"], "HEAD"], cwd=REPO_ROOT)
    assert on_main.returncode == 0, f"{prov['git_commit']} is not an ancestor of HEAD"
    assert record["claims"], "a record without claims"
    for c in record["claims"]:
        assert c["relation"] in claims.RELATIONS and c["source"].startswith(claims.SOURCES), c["id"]
        assert c["verdict"] in claims.VERDICTS, c["id"]
        # a record made before the >= 3 seeds rule keeps its stored verdict; verdict_of applies the rule
        by_rule = claims.too_few_seeds(claims.Estimate.from_dict(c["ours"])) and c["verdict"] != "not testable"
        expected = "inconclusive" if by_rule else c["verdict"]
        assert results.verdict_of(c) == expected, f"{c['id']}: the stored verdict is not the one its numbers give"
        if "interval" in c["ours"]["method"] or "paired" in c["ours"]["method"] or "bootstrap" in c["ours"]["method"]:
            assert c["ours"]["low"] is not None and c["ours"]["high"] is not None, c["id"]
    assert config.get_spec(record["paper"])  # a known paper


def test_bootstrap_groups_resamples_each_group_and_flags_undefined_statistics():
    fast, slow = [1.0, 1.1, 0.9, 1.0, 1.05], [2.0, 2.1, 1.9, 2.05, 1.95]
    e = claims.bootstrap_groups([slow, fast], lambda g: float(g[0].mean() / g[1].mean()), "timed steps")
    assert e.low > 1.5 and e.high < 2.5 and e.n == 5 and e == claims.bootstrap_groups(
        [slow, fast], lambda g: float(g[0].mean() / g[1].mean()), "timed steps")  # fixed seed
    undefined = claims.bootstrap_groups([[1.0, 2.0]], lambda g: None if g[0].max() > 1.5 else 1.0, "calls")
    assert undefined.value is None and judge("<", undefined, 2.0) == "inconclusive"
    sometimes = claims.bootstrap_groups([[1.0, 2.0, 1.0]], lambda g: None if g[0].min() > 1.5 else 1.0, "calls")
    assert sometimes.value == 1.0 and sometimes.low == -math.inf and judge("<", sometimes, 2.0) == "inconclusive"
