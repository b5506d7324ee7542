"""Random-effects meta-analysis against R metafor 3.8 ``rma()`` + ``predict()``.

References (tests/common/reference/metafor_reference.json, from make_reference.R):
- ``dat.bcg`` (metadat; ``escalc(measure="RR")``, stored in dat_bcg.csv) and
  synthetic sets in meta_synthetic.csv (k = 5, k = 2, a homogeneous k = 4 with
  tau^2 = 0, k = 1), each with ``rma(yi, vi, method=M, test=T)`` for
  M in REML (``control=list(threshold=1e-12)``), DL, PM (``control=list(tol=1e-12)``)
  and T in "z", "knha", then ``predict()``;
- logit pooling: ``rma(qlogis(auc), var/(auc(1-auc))^2)`` and
  ``escalc("PLO", xi, ni)`` + ``rma`` with ``predict(transf=plogis)``;
- the dat.bcg table published in shared/REFERENCES.md (4 decimals).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.stats import AUCResult, pool_auc, pool_proportions, random_effects

REF_DIR = Path(__file__).parent / "reference"
REF = json.loads((REF_DIR / "metafor_reference.json").read_text())
TOL = 1e-9


def _datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    with (REF_DIR / "meta_synthetic.csv").open() as fh:
        for r in csv.DictReader(fh):
            ys, vs = out.setdefault(r["dataset"], ([], []))
            ys.append(float(r["yi"]))
            vs.append(float(r["vi"]))
    with (REF_DIR / "dat_bcg.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    out["bcg"] = ([float(r["yi"]) for r in rows], [float(r["vi"]) for r in rows])
    return {k: (np.array(y), np.array(v)) for k, (y, v) in out.items()}


DATA = _datasets()
BCG = DATA["bcg"]


def test_bcg_data_is_escalc_rr() -> None:
    """dat_bcg.csv yi/vi are escalc(measure="RR"): log RR and 1/a - 1/n1 + 1/c - 1/n2."""
    with (REF_DIR / "dat_bcg.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 13
    for r in rows:
        a, b, c, d = (float(r[k]) for k in ("tpos", "tneg", "cpos", "cneg"))
        assert float(r["yi"]) == pytest.approx(math.log((a / (a + b)) / (c / (c + d))), abs=1e-12)
        assert float(r["vi"]) == pytest.approx(1 / a - 1 / (a + b) + 1 / c - 1 / (c + d), abs=1e-12)


@pytest.mark.parametrize("name", sorted(REF["cases"]))
def test_random_effects_equals_metafor(name: str) -> None:
    """metafor 3.8: rma(yi, vi, method, test) and predict(); the call is stored in the case."""
    case = REF["cases"][name]
    y, v = DATA[case["dataset"]]
    res = random_effects(y, v, case["method"], case["hartung_knapp"], case.get("level", 0.95))
    assert res.k == case["k"]
    assert res.estimate == pytest.approx(case["estimate"], abs=TOL)
    assert res.se == pytest.approx(case["se"], abs=TOL)
    assert res.ci == pytest.approx(tuple(case["ci"]), abs=TOL)
    assert res.tau2 == pytest.approx(case["tau2"], abs=TOL)
    assert res.i2 == pytest.approx(case["i2"], abs=TOL)
    assert res.h2 == pytest.approx(case["h2"], abs=TOL)
    assert res.q == pytest.approx(case["q"], abs=TOL)
    assert res.q_p == pytest.approx(case["q_p"], abs=TOL)
    assert res.statistic == pytest.approx(case["statistic"], abs=TOL)
    assert res.p == pytest.approx(case["p"], abs=TOL)
    assert res.prediction_interval == pytest.approx(tuple(case["pi"]), abs=TOL)
    assert res.df == (case["k"] - 1 if case["hartung_knapp"] else None)


def test_reml_with_metafors_default_threshold_follows_the_same_path() -> None:
    """metafor 3.8 rma(yi, vi, data=dat.bcg, method="REML") with its default threshold 1e-5.

    Same Fisher-scoring path and stopping rule, so even the not-fully-converged
    tau^2 matches to round-off.
    """
    ref = REF["bcg_default_control"]["REML"]
    res = random_effects(*BCG, "REML", threshold=1e-5)
    assert res.tau2 == pytest.approx(ref["tau2"], abs=1e-12)
    assert res.estimate == pytest.approx(ref["estimate"], abs=1e-12)
    assert res.i2 == pytest.approx(ref["i2"], abs=1e-10)


def test_pm_against_metafors_default_tolerance() -> None:
    """metafor 3.8 rma(..., method="PM") uses uniroot(tol = 1.2e-4): equal to that tolerance."""
    ref = REF["bcg_default_control"]["PM"]
    res = random_effects(*BCG, "PM")
    assert res.tau2 == pytest.approx(ref["tau2"], abs=1.2e-4)
    assert res.estimate == pytest.approx(ref["estimate"], abs=1e-5)


@pytest.mark.parametrize(
    ("method", "hk", "est", "se", "lo", "hi", "tau2", "i2"),
    [
        ("REML", False, -0.7145, 0.1798, -1.0669, -0.3622, 0.3132, 92.22),
        ("DL", False, -0.7141, 0.1787, -1.0644, -0.3638, 0.3088, 92.12),
        ("REML", True, -0.7145, 0.1808, -1.1084, -0.3206, None, None),
    ],
)
def test_published_bcg_table(
    method: Literal["REML", "DL", "PM"],
    hk: bool,
    est: float,
    se: float,
    lo: float,
    hi: float,
    tau2: float | None,
    i2: float | None,
) -> None:
    """shared/REFERENCES.md: metafor dat.bcg, k = 13, Q = 152.2330, df = 12."""
    res = random_effects(*BCG, method, hartung_knapp=hk)
    assert res.k == 13
    assert res.q == pytest.approx(152.2330, abs=5e-5)
    assert (res.estimate, res.se) == pytest.approx((est, se), abs=5e-5)
    assert res.ci == pytest.approx((lo, hi), abs=5e-5)
    if tau2 is not None:
        assert res.tau2 == pytest.approx(tau2, abs=5e-5)
        assert res.i2 == pytest.approx(i2, abs=5e-3)
    if hk:
        assert res.df == 12


def test_i2_uses_typical_within_study_variance() -> None:
    """I^2 = tau^2/(tau^2 + s^2), s^2 = (k-1) sum w / ((sum w)^2 - sum w^2), w = 1/v."""
    y, v = BCG
    res = random_effects(y, v, "DL")
    w = 1 / v
    s2 = (len(y) - 1) * w.sum() / (w.sum() ** 2 - (w**2).sum())
    assert res.i2 == pytest.approx(100 * res.tau2 / (res.tau2 + s2), rel=1e-12)
    assert res.h2 == pytest.approx((res.tau2 + s2) / s2, rel=1e-12)
    assert sum(res.weights) == pytest.approx(100.0)
    assert res.tau == pytest.approx(math.sqrt(res.tau2))


def test_k1_is_the_single_estimate() -> None:
    """metafor with k = 1: tau^2 = 0, Q = 0, QEp = 1, I^2 = 0, H^2 = 1; knha falls back to z."""
    res = random_effects([0.3], [0.02])
    assert (res.estimate, res.tau2, res.q, res.q_p, res.i2, res.h2) == (0.3, 0, 0, 1, 0, 1)
    assert res.ci == res.prediction_interval
    with pytest.warns(UserWarning, match="k = 1"):
        hk = random_effects([0.3], [0.02], hartung_knapp=True)
    assert not hk.hartung_knapp and hk.ci == res.ci and hk.df is None


def test_identical_estimates_give_zero_tau2() -> None:
    for method in ("REML", "DL", "PM"):
        res = random_effects([0.2, 0.2, 0.2], [0.01, 0.02, 0.03], method)
        assert res.tau2 == 0.0 and res.i2 == 0.0 and res.h2 == 1.0
        assert res.estimate == pytest.approx(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hk = random_effects([0.2, 0.2, 0.2], [0.01, 0.02, 0.03], hartung_knapp=True)
    assert hk.se == 0.0  # metafor: s2w = 0 when the weighted RSS is below machine epsilon


def test_pool_auc_equals_metafor_logit() -> None:
    """metafor 3.8: rma(qlogis(auc), var/(auc(1-auc))^2, ...); predict(transf=plogis)."""
    ref = REF["pool_auc"]
    sites = [AUCResult(a, v, 0, 0) for a, v in zip(ref["auc"], ref["variance"], strict=True)]
    for fit in ref["fits"]:
        res = pool_auc(sites, fit["method"], fit["hartung_knapp"])
        assert res.estimate == pytest.approx(fit["estimate"], abs=TOL)
        assert res.ci == pytest.approx(tuple(fit["ci"]), abs=TOL)
        assert res.prediction_interval == pytest.approx(tuple(fit["pi"]), abs=TOL)
        assert res.logit.estimate == pytest.approx(fit["logit_estimate"], abs=TOL)
        assert res.logit.se == pytest.approx(fit["logit_se"], abs=TOL)
        assert res.logit.tau2 == pytest.approx(fit["tau2"], abs=TOL)


def test_pool_proportions_equals_metafor_plo() -> None:
    """metafor 3.8: escalc("PLO", xi, ni) (add=1/2, to="only0"), rma(), then
    predict(transf=transf.ilogit)."""
    ref = REF["pool_proportions"]
    for fit in ref["fits"]:
        res = pool_proportions(ref["events"], ref["totals"], fit["method"], fit["hartung_knapp"])
        assert res.estimate == pytest.approx(fit["estimate"], abs=TOL)
        assert res.ci == pytest.approx(tuple(fit["ci"]), abs=TOL)
        assert res.prediction_interval == pytest.approx(tuple(fit["pi"]), abs=TOL)
        assert res.logit.se == pytest.approx(fit["logit_se"], abs=TOL)
        assert res.logit.tau2 == pytest.approx(fit["tau2"], abs=1e-8)


def test_pool_proportions_continuity_correction_only_on_zero_sites() -> None:
    """escalc PLO: 0/25 -> log(0.5/25.5), var 1/0.5 + 1/25.5; 12/40 untouched."""
    events, totals = [12, 0], [40, 25]
    res = pool_proportions(events, totals, "DL")
    y = np.array([math.log(12 / 28), math.log(0.5 / 25.5)])
    v = np.array([1 / 12 + 1 / 28, 1 / 0.5 + 1 / 25.5])
    direct = random_effects(y, v, "DL")
    assert res.logit.estimate == pytest.approx(direct.estimate, abs=1e-12)
    assert res.logit.tau2 == pytest.approx(direct.tau2, abs=1e-12)
    assert REF["pool_proportions"]["logit_yi"][1] == pytest.approx(y[1], abs=1e-12)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k = 0"):
        random_effects([], [])
    with pytest.raises(ValueError, match="equal length"):
        random_effects([0.1, 0.2], [0.01])
    with pytest.raises(ValueError, match="NaN"):
        random_effects([0.1, math.nan], [0.01, 0.02])
    with pytest.raises(ValueError, match="negative"):
        random_effects([0.1, 0.2], [0.01, -0.02])
    with pytest.raises(ValueError, match="zero variance"):
        random_effects([0.1, 0.2], [0.01, 0.0])
    with pytest.raises(ValueError, match="method"):
        random_effects([0.1, 0.2], [0.01, 0.02], "SJ")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        random_effects([0.1, 0.2], [0.01, 0.02], level=0)
    with pytest.raises(ValueError, match="k = 0"):
        pool_auc([])
    with pytest.raises(ValueError, match="infinite logit"):
        pool_auc([AUCResult(1.0, 0.0, 5, 5), AUCResult(0.8, 0.01, 5, 5)])
    with pytest.raises(ValueError, match="variance"):
        pool_auc([AUCResult(0.7, 0.0, 5, 5)])
    with pytest.raises(ValueError, match="exceeds"):
        pool_proportions([5], [4])
    with pytest.raises(ValueError, match="correction"):
        pool_proportions([0, 3], [10, 10], correction=0)
    with pytest.raises(ValueError, match="totals"):
        pool_proportions([0], [0])
    with pytest.raises(ValueError, match="k = 0"):
        pool_proportions([], [])


finite = st.floats(-3, 3, allow_nan=False)
variance = st.floats(1e-3, 2.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(finite, variance), min_size=2, max_size=12),
    st.sampled_from(["REML", "DL", "PM"]),
    st.booleans(),
)
def test_invariants(rows: list[tuple[float, float]], method: str, hk: bool) -> None:
    y = np.array([r[0] for r in rows])
    v = np.array([r[1] for r in rows])
    res = random_effects(y, v, method, hk)  # type: ignore[arg-type]
    assert res.tau2 >= 0
    assert 0 <= res.i2 <= 100
    assert res.h2 >= 1
    assert 0 <= res.q_p <= 1 and res.q >= 0
    assert y.min() - 1e-9 <= res.estimate <= y.max() + 1e-9
    assert res.ci[0] <= res.estimate <= res.ci[1]
    assert res.prediction_interval[0] <= res.ci[0] + 1e-12
    assert res.prediction_interval[1] >= res.ci[1] - 1e-12
    # shifting every estimate shifts the pooled estimate and leaves tau^2 alone
    shifted = random_effects(y + 1.5, v, method, hk)  # type: ignore[arg-type]
    assert shifted.estimate == pytest.approx(res.estimate + 1.5, abs=1e-8)
    assert shifted.tau2 == pytest.approx(res.tau2, abs=1e-8)


def test_reml_solves_the_score_equation_when_fisher_scoring_oscillates() -> None:
    """Four equal sites and one precise outlier: Fisher scoring oscillates (found by
    hypothesis); the estimate must still be the restricted-likelihood maximum."""
    from common.stats.tau2 import _reml_loglik

    y = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    v = np.array([1.0, 1.0, 1.0, 1.0, 0.125])
    with pytest.warns(UserWarning, match="did not converge"):
        fit = random_effects(y, v, method="REML")
    grid = np.linspace(0.0, 1.0, 200_001)
    best = grid[int(np.argmax([_reml_loglik(y, v, t) for t in grid]))]
    assert fit.tau2 == pytest.approx(best, abs=1e-5)
    assert _reml_loglik(y, v, fit.tau2) >= _reml_loglik(y, v, best) - 1e-12
