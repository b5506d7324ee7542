"""Logistic recalibration of a model's probabilities, fitted on validation summaries only.

A model that ranks well can still give probabilities that are too extreme or too
timid (calibration slope below or above 1) or systematically high or low
(calibration-in-the-large away from 0). Under ``eval.recalibrate = "logistic"`` the
server fits the map

    p' = expit(a + b logit p)

on the validation splits of the sites that trained the model, at the same time and from
the same summaries as the operating threshold (``common.operating_point``), and the test
evaluation sends ``(a, b)`` (``eval.recalibration``) so that every site reports its
calibration before and after (``client.evaluation``). The map is monotone (b > 0): the
AUC, the ROC curve and the ranking do not change, and the operating threshold stays on
the model's own probability scale.

**The fit.** Sites never send per-case probabilities. Their validation summaries carry
calibration bins under the small-cell rule: per group of probability bins, the count
``n_j``, the sum of probabilities and the positives ``y_j``. Each group is one binomial
observation, ``y_j`` positives of ``n_j`` at ``x_j = logit(mean p in the group)``, and
``(a, b)`` is the maximum-likelihood fit of ``logit P(y) = a + b x`` to all sites' groups
together: a grouped logistic regression (``glm(cbind(y, n - y) ~ x, binomial)`` in R),
computed by ``common.stats.calibration_glm`` on the groups written out as cases, which
is the same likelihood. The one approximation is the binning: every case of a group is
put at the group's mean probability. With ten bins the within-bin spread is small next
to the calibration errors this corrects; it is stated in the report.

When the groups' probabilities separate the classes or are all equal, the slope has no
finite estimate: only calibration-in-the-large is fitted (``b = 1``, ``a`` the shift)
and the record says so. With fewer than ``eval.min-cases`` validation cases, or one
class only, nothing is fitted or applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, logit

from common.config_sections import EvalConfig
from common.keys import RECALIBRATION_LIMIT, Recalibrate  # a fit beyond it is not applied
from common.stats import CalibrationFit, calibration_glm
from common.summary import SiteSummary

CLIP = 1e-12  # probabilities are kept this far from 0 and 1 before the logit


@dataclass(frozen=True)
class Recalibration:
    """The fitted map, or why there is none."""

    method: Recalibrate
    fitted: bool
    intercept: float | None  # a
    slope: float | None  # b
    reason: str
    sites: tuple[str, ...]  # whose validation bins were used
    n: int  # validation cases in those bins
    n_groups: int  # binomial observations (non-empty bin groups)

    @property
    def parameters(self) -> tuple[float, ...]:
        """``eval.recalibration`` for the test evaluation: (a, b), or () when not fitted."""
        if not self.fitted or self.intercept is None or self.slope is None:
            return ()
        return (self.intercept, self.slope)

    def to_record(self) -> dict[str, Any]:
        """The JSON form (inside a model's threshold-choice record)."""
        return {
            "method": self.method.value,
            "fitted": self.fitted,
            "intercept": self.intercept,
            "slope": self.slope,
            "reason": self.reason,
            "sites": list(self.sites),
            "n": self.n,
            "n_groups": self.n_groups,
        }


def apply_recalibration(p: np.ndarray, parameters: tuple[float, ...]) -> np.ndarray:
    """``expit(a + b logit p)`` for ``parameters = (a, b)``; ``p`` itself for ()."""
    if not parameters:
        return np.asarray(p, dtype=float)
    a, b = parameters
    return np.asarray(expit(a + b * logit(np.clip(np.asarray(p, float), CLIP, 1 - CLIP))))


def binomial_groups(
    summaries: Mapping[str, SiteSummary],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Every usable site's non-empty calibration groups: mean probability, positives and
    cases per group, and the sites used (sorted)."""
    mean_p, pos, count, sites = [], [], [], []
    for site, s in sorted(summaries.items()):
        if s.insufficient or not s.cal_count:
            continue
        used = False
        for n, sp, sy in zip(s.cal_count, s.cal_sum_p, s.cal_sum_y, strict=True):
            if n > 0:
                mean_p.append(sp / n)
                pos.append(sy)
                count.append(n)
                used = True
        if used:
            sites.append(site)
    return (
        np.asarray(mean_p, dtype=float),
        np.asarray(pos, dtype=int),
        np.asarray(count, dtype=int),
        tuple(sites),
    )


def grouped_fit(mean_p: np.ndarray, pos: np.ndarray, count: np.ndarray) -> CalibrationFit:
    """``glm(cbind(pos, count - pos) ~ qlogis(mean_p), binomial)`` and its CITL: each group
    written out as its cases (``pos`` ones and ``count - pos`` zeros at the group's mean
    probability), which is the same likelihood, through ``calibration_glm``."""
    p_cases = np.repeat(mean_p, count)
    y_cases = np.concatenate(
        [np.r_[np.ones(k), np.zeros(m - k)] for k, m in zip(pos, count, strict=True)]
    )
    return calibration_glm(y_cases.astype(int), p_cases, clip=CLIP)


def fit_recalibration(ev: EvalConfig, summaries: Mapping[str, SiteSummary]) -> Recalibration | None:
    """The logistic recalibration of ``ev.recalibrate`` from validation ``summaries``;
    None under ``eval.recalibrate = "none"``."""
    if ev.recalibrate is Recalibrate.NONE:
        return None
    mean_p, pos, count, sites = binomial_groups(summaries)
    n, n_pos = int(count.sum()), int(pos.sum())

    def unfitted(why: str) -> Recalibration:
        return Recalibration(ev.recalibrate, False, None, None, why, sites, n, len(count))

    if n < ev.min_cases or n_pos == 0 or n_pos == n:
        return unfitted(
            f"{n} validation cases ({n_pos} positive) from {len(sites)} site(s): a fit needs "
            f"at least eval.min-cases = {ev.min_cases} and both classes; nothing applied"
        )
    fit = grouped_fit(mean_p, pos, count)
    if fit.slope_estimable and fit.slope > 0:
        lim = RECALIBRATION_LIMIT
        if not (1 / lim <= fit.slope <= lim and abs(fit.intercept) <= lim):
            return unfitted(
                f"the fit (a = {fit.intercept:.3g}, b = {fit.slope:.3g}) lies beyond what sites "
                f"accept by default (1/{lim:g} <= b <= {lim:g}, |a| <= {lim:g}); nothing applied"
            )
        return Recalibration(
            ev.recalibrate, True, fit.intercept, fit.slope,
            f"grouped logistic fit on {len(count)} calibration groups",
            sites, n, len(count),
        )  # fmt: skip
    why = (
        "the slope has no finite estimate (the groups separate the classes or share one "
        "probability)"
        if not fit.slope_estimable
        else f"the fitted slope {fit.slope:.3g} is not positive (the ranking is reversed)"
    )
    if not math.isfinite(fit.citl) or abs(fit.citl) > RECALIBRATION_LIMIT:
        return unfitted(f"{why}, and the intercept {fit.citl:.3g} is not usable; nothing applied")
    return Recalibration(
        ev.recalibrate, True, fit.citl, 1.0,
        f"{why}: calibration-in-the-large only (b = 1)", sites, n, len(count),
    )  # fmt: skip
