"""Logistic recalibration fitted on validation summaries (``common.recalibration``) and the
site's calibration after it (``client.evaluation.recalibrated``).

References: the grouped fit is checked against the beetle-mortality data of Bliss (1935),
the worked example of Dobson & Barnett, *An Introduction to Generalized Linear Models*
(logistic model, Table 7.3: b0 = -60.72, SE 5.18; b1 = 34.27, SE 2.91), whose estimates R
``glm(cbind(killed, n - killed) ~ dose, binomial)`` and glmlab reproduce
(-60.717455, 34.270326).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from client.evaluation import classification_summary
from common.config import RunConfig
from common.config_sections import EvalConfig
from common.keys import Recalibrate
from common.operating_point import choose_on_validation, evaluation_config
from common.recalibration import (
    apply_recalibration,
    binomial_groups,
    fit_recalibration,
    grouped_fit,
)
from common.stats import calibration_glm, ece_from_bins
from common.summary import SiteSummary
from server.report.site_statistics import calibration_bins

DOSE = [1.6907, 1.7242, 1.7552, 1.7842, 1.8113, 1.8369, 1.8610, 1.8839]
BEETLES = [59, 60, 62, 56, 63, 59, 62, 60]
KILLED = [6, 13, 18, 28, 52, 53, 61, 60]
LOGISTIC = EvalConfig(recalibrate=Recalibrate.LOGISTIC)


def _bins_summary(mean_p: list[float], pos: list[int], count: list[int]) -> SiteSummary:
    """A validation summary whose calibration groups hold ``count`` cases at ``mean_p``."""
    return SiteSummary(
        n=sum(count), n_pos=sum(pos), n_neg=sum(count) - sum(pos),
        cal_count=tuple(count), cal_sum_p=tuple(p * n for p, n in zip(mean_p, count, strict=True)),
        cal_sum_y=tuple(pos),
    )  # fmt: skip


def test_the_grouped_fit_equals_the_published_beetle_example_across_sites() -> None:
    """Groups at logit(mean p) = dose: the fit is glm(cbind(killed, alive) ~ dose), SEs
    included; the eight groups split over two sites are the same eight groups. (A slope of
    34 is far beyond what a site accepts as a recalibration: it is not applied.)"""
    p = [float(expit(d)) for d in DOSE]
    sites = {
        "a": _bins_summary(p[:4], KILLED[:4], BEETLES[:4]),
        "b": _bins_summary(p[4:], KILLED[4:], BEETLES[4:]),
    }
    mean_p, pos, count, used = binomial_groups(sites)
    assert used == ("a", "b") and int(count.sum()) == sum(BEETLES)
    fit = grouped_fit(mean_p, pos, count)
    assert fit.intercept == pytest.approx(-60.717455, abs=5e-5)
    assert fit.slope == pytest.approx(34.270326, abs=5e-5)
    assert (fit.intercept_se, fit.slope_se) == pytest.approx((5.180701, 2.912134), abs=5e-4)
    applied = fit_recalibration(LOGISTIC, sites)
    assert applied is not None and not applied.fitted and "beyond" in applied.reason


def test_the_fit_recovers_a_known_miscalibration_and_corrects_it_on_new_cases() -> None:
    """Cases whose true risk is expit(0.5 + 0.6 logit p): the fit from binned validation
    summaries recovers a = 0.5, b = 0.6 up to binning and sampling, and on fresh test
    cases the recalibrated probabilities have a calibration slope near 1 and a smaller
    ECE, with the ranking (the AUC) untouched."""
    rng = np.random.default_rng(7)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        p = expit(rng.normal(0.0, 2.0, n))
        return rng.binomial(1, expit(0.5 + 0.6 * logit(p))), p

    ev = EvalConfig(recalibrate=Recalibrate.LOGISTIC, min_per_class=1)
    val = {f"s{i}": classification_summary(*draw(4000), ev, min_cell=5) for i in range(2)}
    fit = fit_recalibration(ev, val)
    assert fit is not None and fit.fitted
    assert fit.intercept == pytest.approx(0.5, abs=0.1)
    assert fit.slope == pytest.approx(0.6, abs=0.05)
    y, p = draw(8000)
    q = apply_recalibration(p, fit.parameters)
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(q, kind="stable"))
    assert calibration_glm(y, p).slope == pytest.approx(0.6, abs=0.05)
    assert calibration_glm(y, q).slope == pytest.approx(1.0, abs=0.08)
    after = classification_summary(y, p, EvalConfig(recalibration=fit.parameters), min_cell=5)
    before_ece = ece_from_bins(calibration_bins(after))
    assert after.recal_slope == pytest.approx(calibration_glm(y, q).slope)
    assert after.recal_brier == pytest.approx(float(np.mean((q - y) ** 2)))
    groups = calibration_bins(after)
    after_ece = ece_from_bins(
        type(groups)(groups.count, after.recal_sum_p, groups.sum_y, after.recal_sum_sq)
    )
    assert before_ece > 0.05 and after_ece < before_ece / 3


def test_the_site_reports_the_recalibrated_sums_on_its_own_groups_only() -> None:
    """After the recalibration the site sends per calibration group of the raw
    probabilities the sums of the recalibrated ones: the same groups, counts and
    positives (nothing new is partitioned); the identity map leaves every figure as is."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 60)
    y = rng.binomial(1, p)
    raw = classification_summary(y, p, EvalConfig(), min_cell=5)
    same = classification_summary(y, p, EvalConfig(recalibration=(0.0, 1.0)), min_cell=5)
    assert same.recal_sum_p == pytest.approx(raw.cal_sum_p, abs=1e-9)
    assert same.recal_sum_sq == pytest.approx(raw.cal_sum_sq, abs=1e-9)
    assert (same.recal_brier, same.recal_slope) == pytest.approx((raw.brier, raw.cal_slope))
    shifted = classification_summary(y, p, EvalConfig(recalibration=(1.0, 0.5)), min_cell=5)
    assert shifted.cal_count == raw.cal_count and shifted.cal_sum_y == raw.cal_sum_y
    assert [bool(v) for v in shifted.recal_sum_p] == [c > 0 for c in raw.cal_count]
    q = apply_recalibration(p, (1.0, 0.5))
    assert sum(shifted.recal_sum_p) == pytest.approx(q.sum())
    back = SiteSummary.from_record(shifted.to_record())
    assert back.recal_sum_p == shifted.recal_sum_p and back.recal_citl == shifted.recal_citl
    assert raw.recal_sum_p == () and "recal-sum-p" not in raw.to_record()


def test_without_enough_validation_or_with_separation_it_says_what_it_did() -> None:
    few = fit_recalibration(LOGISTIC, {"a": _bins_summary([0.2, 0.8], [1, 4], [5, 5])})
    assert few is not None and not few.fitted and few.parameters == ()
    assert "10 validation cases (5 positive)" in few.reason and "eval.min-cases = 20" in few.reason
    # every positive in the high group, every negative in the low: no finite slope
    separated = fit_recalibration(LOGISTIC, {"a": _bins_summary([0.3, 0.6], [0, 12], [12, 12])})
    assert separated is not None and separated.fitted and separated.slope == 1.0
    assert "calibration-in-the-large only" in separated.reason
    assert fit_recalibration(EvalConfig(), {"a": _bins_summary([0.5], [6], [24])}) is None


def test_the_test_evaluation_carries_the_fit_and_the_choice_records_it() -> None:
    """Two groups, a perfect fit: logit(0.2) = a + b logit(0.4) and logit(0.8) = a + b
    logit(0.6), so a = 0 and b = logit(0.8) / logit(0.6) = 3.419."""
    ev = RunConfig().replace({"eval.recalibrate": "logistic", "eval.threshold-rule": "fixed"}).eval
    choice = choose_on_validation(ev, {"a": _bins_summary([0.4, 0.6], [4, 16], [20, 20])})
    assert not choice.chosen and choice.recalibration is not None
    overrides = evaluation_config(ev, choice)
    assert overrides == {"eval.recalibration": choice.recalibration.parameters}
    record = choice.to_record("global")
    assert record["recalibration"]["slope"] == pytest.approx(3.4190, abs=1e-4)
    assert RunConfig().replace(overrides).eval.recalibration == choice.recalibration.parameters


def test_a_fit_beyond_what_sites_accept_is_not_applied() -> None:
    """Groups that call for a slope above the default max-recalibration (5) fit nothing:
    the map a site would refuse is never sent."""
    steep = _bins_summary([0.45, 0.55], [1, 29], [30, 30])  # logit 0.2 apart, rates 1/30, 29/30
    fit = fit_recalibration(LOGISTIC, {"a": steep})
    assert fit is not None and not fit.fitted and fit.parameters == ()
    assert "beyond what sites accept by default" in fit.reason
