"""Wilson intervals and 2x2 diagnostic accuracy against R.

References (tests/common/reference/proportions_reference.json, from make_reference.R):
- R 4.2 ``prop.test(k, n, correct=FALSE)$conf.int`` at 95% and 90%;
- 2x2 tables: sensitivity/specificity/PPV/NPV with the same prop.test intervals,
  LR+/LR- by the log method of Simel, Samsa & Matchar (1991), DOR with Woolf's
  log interval, 0.5 added to every cell for LR/DOR when a cell is zero,
  written out in R;
- the Wilson intervals published in shared/REFERENCES.md (4 decimals).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.stats import diagnostic_accuracy, wilson_ci

REF = json.loads((Path(__file__).parent / "reference" / "proportions_reference.json").read_text())
TOL = 1e-9


@pytest.mark.parametrize("case", REF["wilson"], ids=lambda c: f"{c['k']}/{c['n']}")
def test_wilson_equals_prop_test(case: dict) -> None:
    """R: prop.test(k, n, correct=FALSE)$conf.int, conf.level 0.95 and 0.90."""
    assert wilson_ci(case["k"], case["n"]) == pytest.approx(tuple(case["ci95"]), abs=TOL)
    assert wilson_ci(case["k"], case["n"], 0.90) == pytest.approx(tuple(case["ci90"]), abs=TOL)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_published_wilson(k: int, n: int, lo: float, hi: float) -> None:
    """shared/REFERENCES.md Wilson intervals (prop.test(correct = FALSE)), 4 decimals."""
    assert wilson_ci(k, n) == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_edges_are_exact() -> None:
    assert wilson_ci(0, 20)[0] == 0.0
    assert wilson_ci(20, 20)[1] == 1.0


@pytest.mark.parametrize(
    "case", REF["diagnostic"], ids=lambda c: f"{c['tp']}-{c['fp']}-{c['fn']}-{c['tn']}"
)
def test_diagnostic_accuracy_equals_r(case: dict) -> None:
    res = diagnostic_accuracy(case["tp"], case["fp"], case["fn"], case["tn"], case["level"])
    assert res.corrected is case["corrected"]
    for name in ("sensitivity", "specificity", "ppv", "npv", "lr_pos", "lr_neg", "dor"):
        got = getattr(res, name)
        assert tuple(got) == pytest.approx(tuple(case[name]), rel=1e-9), name


def test_zero_cell_rule_by_hand() -> None:
    """Haldane-Anscombe: with fp = 0, 0.5 is added to all four cells for LR+/LR-/DOR only."""
    res = diagnostic_accuracy(20, 0, 3, 30)
    assert res.corrected
    a, b, c, d = 20.5, 0.5, 3.5, 30.5
    assert res.lr_pos.value == pytest.approx((a / (a + c)) / (b / (b + d)), rel=1e-12)
    assert res.lr_neg.value == pytest.approx((c / (a + c)) / (d / (b + d)), rel=1e-12)
    assert res.dor.value == pytest.approx(a * d / (b * c), rel=1e-12)
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    z = 1.959963984540054
    assert res.dor.lo == pytest.approx(a * d / (b * c) * math.exp(-z * se), rel=1e-12)
    # proportions keep the raw counts
    assert res.specificity.value == 1.0 and res.specificity.hi == 1.0
    assert res.sensitivity.value == pytest.approx(20 / 23)
    assert not diagnostic_accuracy(20, 1, 3, 30).corrected


def test_no_positive_calls_gives_nan_ppv() -> None:
    res = diagnostic_accuracy(0, 0, 5, 10)
    assert all(math.isnan(v) for v in res.ppv)
    assert res.npv.value == pytest.approx(10 / 15)
    assert res.corrected  # zero cells: LR and DOR use +0.5
    value, lo, hi = res.sensitivity  # Estimate unpacks
    assert (value, lo) == (0.0, 0.0) and hi > 0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        wilson_ci(0, 0)
    with pytest.raises(ValueError, match="exceed"):
        wilson_ci(5, 4)
    with pytest.raises(ValueError, match="non-negative integer"):
        wilson_ci(-1, 4)
    with pytest.raises(ValueError, match="non-negative integer"):
        wilson_ci(1.5, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        wilson_ci(1, 4, level=95)
    with pytest.raises(ValueError, match="no positive"):
        diagnostic_accuracy(0, 3, 0, 4)
    with pytest.raises(ValueError, match="no negative"):
        diagnostic_accuracy(3, 0, 4, 0)
    with pytest.raises(ValueError, match="non-negative integer"):
        diagnostic_accuracy(3, math.nan, 4, 5)  # type: ignore[arg-type]


@given(st.integers(1, 10_000), st.data(), st.floats(0.5, 0.999))
def test_wilson_contains_estimate_and_is_nested(n: int, data: st.DataObject, level: float) -> None:
    k = data.draw(st.integers(0, n))
    lo, hi = wilson_ci(k, n, level)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    lo2, hi2 = wilson_ci(k, n, min(0.9999, level + 0.0005))
    assert lo2 <= lo + 1e-12 and hi <= hi2 + 1e-12
    # symmetry: k successes <-> n - k failures
    flo, fhi = wilson_ci(n - k, n, level)
    assert (flo, fhi) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)


@given(st.integers(0, 200), st.integers(0, 200), st.integers(0, 200), st.integers(0, 200))
def test_diagnostic_intervals_contain_estimates(tp: int, fp: int, fn: int, tn: int) -> None:
    if tp + fn == 0 or fp + tn == 0:
        return
    res = diagnostic_accuracy(tp, fp, fn, tn)
    for est in (res.sensitivity, res.specificity, res.lr_pos, res.lr_neg, res.dor):
        assert est.lo <= est.value <= est.hi
    assert res.lr_pos.lo > 0 and res.dor.lo > 0
