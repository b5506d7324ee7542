"""Calibration: logistic recalibration against R glm, binned ECE/Brier, federated bin summaries.

References (tests/common/reference/calibration_reference.json, from make_reference.R,
data in calibration.csv, n = 300):
- R 4.2 ``glm(y ~ qlogis(p), family=binomial)`` (slope, intercept, summary() SEs) and
  ``glm(y ~ offset(qlogis(p)), family=binomial)`` (calibration-in-the-large),
  both with ``glm.control(epsilon=1e-14)``;
- Brier ``mean((p - y)^2)``; ECE on 10 and 15 equal-width bins
  (``floor(p * B)``, last bin closed) and the 10-bin counts/sums, written out in R.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.stats import (
    CalibrationBins,
    CalibrationFit,
    brier_from_bins,
    brier_score,
    calibration_bins,
    calibration_glm,
    ece_from_bins,
    expected_calibration_error,
    merge_bins,
    pool_calibration,
    random_effects,
    reliability_from_bins,
)

REF_DIR = Path(__file__).parent / "reference"
REF = json.loads((REF_DIR / "calibration_reference.json").read_text())
with (REF_DIR / "calibration.csv").open() as fh:
    _rows = list(csv.DictReader(fh))
Y = np.array([int(r["y"]) for r in _rows])
P = np.array([float(r["p"]) for r in _rows])


def test_glm_slope_and_citl_equal_r() -> None:
    """R glm(y ~ qlogis(p)) and glm(y ~ offset(qlogis(p))), binomial: coefficients and SEs."""
    fit = calibration_glm(Y, P)
    assert fit.n == 300
    assert fit.slope == pytest.approx(REF["slope"], abs=1e-9)
    assert fit.intercept == pytest.approx(REF["intercept"], abs=1e-9)
    assert fit.citl == pytest.approx(REF["citl"], abs=1e-9)
    assert fit.citl_se == pytest.approx(REF["citl_se"], abs=1e-9)
    # R's summary() uses the weights of glm's last IRLS step (deviance criterion), which
    # sit ~1e-7 from the optimum in beta: its SEs differ from the exact ones by ~1e-9.
    assert fit.slope_se == pytest.approx(REF["slope_se"], abs=1e-7)
    assert fit.intercept_se == pytest.approx(REF["intercept_se"], abs=1e-7)


def test_perfectly_calibrated_probabilities_by_construction() -> None:
    """When y follows p on the logit scale exactly in expectation, slope ~ 1 and CITL ~ 0."""
    rng = np.random.default_rng(7)
    p = rng.uniform(0.05, 0.95, 20_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    fit = calibration_glm(y, p)
    assert abs(fit.slope - 1) < 4 * fit.slope_se
    assert abs(fit.citl) < 4 * fit.citl_se


def test_brier_and_ece_equal_r() -> None:
    assert brier_score(Y, P) == pytest.approx(REF["brier"], abs=1e-12)
    assert expected_calibration_error(Y, P) == pytest.approx(REF["ece_10"], abs=1e-12)
    assert expected_calibration_error(Y, P, n_bins=15) == pytest.approx(REF["ece_15"], abs=1e-12)


def test_bin_summaries_equal_r_and_reproduce_the_metrics() -> None:
    bins = calibration_bins(Y, P, 10)
    assert bins.count == tuple(REF["bins_10"]["count"])
    assert bins.sum_p == pytest.approx(tuple(REF["bins_10"]["sum_p"]), abs=1e-9)
    assert bins.sum_y == pytest.approx(tuple(REF["bins_10"]["sum_y"]), abs=0)
    assert bins.n == 300 and bins.n_bins == 10
    assert ece_from_bins(bins) == pytest.approx(REF["ece_10"], abs=1e-12)
    assert brier_from_bins(bins) == pytest.approx(REF["brier"], abs=1e-12)
    rel = reliability_from_bins(bins)
    assert rel.edges == pytest.approx(tuple(np.linspace(0, 1, 11)))
    c = np.array(REF["bins_10"]["count"])
    assert rel.observed_rate == pytest.approx(tuple(np.array(REF["bins_10"]["sum_y"]) / c))
    assert rel.mean_predicted == pytest.approx(tuple(np.array(REF["bins_10"]["sum_p"]) / c))


def test_bin_edges_and_empty_bins() -> None:
    bins = calibration_bins([0, 1, 1, 0], [0.0, 0.5, 1.0, 0.25], n_bins=4)
    assert bins.count == (1, 1, 1, 1)  # 0 -> [0, .25), .25 -> [.25, .5), .5 -> [.5, .75), 1 -> last
    rel = reliability_from_bins(calibration_bins([0, 1], [0.05, 0.95], n_bins=4))
    assert math.isnan(rel.mean_predicted[1]) and rel.count == (1, 0, 0, 1)


def test_sites_merge_to_the_pooled_numbers() -> None:
    """Summing site bins gives exactly the ECE/Brier of the pooled per-case data."""
    a, b, c = slice(0, 90), slice(90, 200), slice(200, 300)
    merged = merge_bins([calibration_bins(Y[s], P[s], 10) for s in (a, b, c)])
    assert merged.count == calibration_bins(Y, P, 10).count
    assert ece_from_bins(merged) == pytest.approx(REF["ece_10"], abs=1e-12)
    assert brier_from_bins(merged) == pytest.approx(REF["brier"], abs=1e-12)


def test_slope_not_estimable_still_gives_citl() -> None:
    """Separation (R glm: no convergence) or constant p: slope +-inf / nan, CITL still fitted."""
    y = [0, 0, 1, 1]
    for p, slope in (
        ([0.1, 0.2, 0.8, 0.9], math.inf),  # complete separation
        ([0.1, 0.5, 0.5, 0.9], math.inf),  # quasi-complete: a tie at the boundary
        ([0.9, 0.8, 0.2, 0.1], -math.inf),  # reversed ranking
    ):
        fit = calibration_glm(y, p)
        assert not fit.slope_estimable and fit.slope == slope
        assert math.isnan(fit.intercept) and math.isnan(fit.slope_se)
        assert math.isfinite(fit.citl) and fit.citl_se > 0
    const = calibration_glm([0, 1, 1, 0], [0.3, 0.3, 0.3, 0.3])
    assert math.isnan(const.slope) and not const.slope_estimable
    # with constant p the CITL is closed-form: logit(mean y) - logit(p)
    assert const.citl == pytest.approx(0.0 - math.log(0.3 / 0.7), abs=1e-10)
    assert const.citl_se == pytest.approx(math.sqrt(1 / (4 * 0.25)), abs=1e-10)
    pooled = pool_calibration([const, calibration_glm(Y, P)])
    assert pooled.slope is not None and pooled.slope.k == 1 and pooled.citl.k == 2
    assert pool_calibration([const]).slope is None


def test_pool_calibration_uses_site_ses() -> None:
    fits = [calibration_glm(Y[s], P[s]) for s in (slice(0, 150), slice(150, 300))]
    pooled = pool_calibration(fits, "DL")
    direct = random_effects([f.slope for f in fits], [f.slope_se**2 for f in fits], "DL")
    assert pooled.slope == direct
    assert pooled.citl.k == 2


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        brier_score([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="equal in length"):
        expected_calibration_error([0, 1], [0.2])
    with pytest.raises(ValueError, match="NaN"):
        calibration_bins([0, 1], [0.2, math.nan])
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins([0, 1], [0.2, 0.3], n_bins=0)
    with pytest.raises(ValueError, match="single class"):
        calibration_glm([1, 1, 1], [0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="same number of bins"):
        merge_bins([calibration_bins([0], [0.1], 5), calibration_bins([0], [0.1], 10)])
    with pytest.raises(ValueError, match="N = 0"):
        ece_from_bins(CalibrationBins((0, 0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)))
    with pytest.raises(ValueError, match="exceed"):
        CalibrationBins((1,), (0.5,), (2.0,), (0.1,))
    with pytest.raises(ValueError, match="k = 0"):
        pool_calibration([])
    assert isinstance(calibration_glm(Y, P), CalibrationFit)
    # a site without cases still sends (all-zero) bins; probabilities 0 and 1 are clipped
    assert calibration_bins([], [], 5).count == (0,) * 5
    fit = calibration_glm([0, 1, 0, 1, 1], [0.0, 1.0, 0.6, 0.4, 0.7])
    assert math.isfinite(fit.slope) and fit.slope > 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=1, max_size=80),
    st.integers(1, 20),
    st.integers(0, 79),
)
def test_ece_bounds_and_split_invariance(
    rows: list[tuple[int, float]], n_bins: int, cut: int
) -> None:
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows])
    ece = expected_calibration_error(y, p, n_bins)
    assert 0 <= ece <= 1
    assert ece <= np.mean(np.abs(p - y)) + 1e-12  # binning can only average errors away
    assert 0 <= brier_score(y, p) <= 1
    cut = min(cut, len(rows))
    parts = [calibration_bins(y[s], p[s], n_bins) for s in (slice(0, cut), slice(cut, None))]
    merged = merge_bins(parts)
    assert ece_from_bins(merged) == pytest.approx(ece, abs=1e-12)
    assert brier_from_bins(merged) == pytest.approx(brier_score(y, p), abs=1e-12)
