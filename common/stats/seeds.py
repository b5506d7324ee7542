"""Training noise: one figure from several training seeds scored on the same test cases.

A site's AUC (or a pooled AUC, or an internal-external gap) measured after training
with seed s is ``a_s = theta + t_s + e_s``:

- ``theta``: the estimand, the figure the training *recipe* reaches on the site's patient
  population, averaged over training randomness (seed, data order, augmentation);
- ``t_s``: how far seed s's model lands from it (independent across seeds, variance
  ``sigma_t^2``: training noise);
- ``e_s``: test-sampling error of the site's finite test split, with variance ``u_s``
  (DeLong for an AUC). Every seed is scored on the *same* test cases, so the ``e_s``
  are positively correlated, up to perfectly.

The estimate is the mean over S seeds, ``mean_s a_s``, with variance
``sigma_t^2 / S + Var(mean_s e_s)``. Two observable quantities bound it:

- the within-seed variance ``U = mean_s u_s`` is at least ``Var(mean_s e_s)`` (the
  variance of a mean is at most the mean variance, with equality when the errors are
  perfectly correlated, as they nearly are on a shared test split);
- the between-seed variance ``B`` (sample variance of the ``a_s``) has expectation
  ``sigma_t^2`` plus the part of the test error that differs between seeds, so at
  least ``sigma_t^2``.

So ``T = U + B / S`` is an unbiased variance when the test errors are perfectly
correlated and conservative otherwise. The interval is ``mean +- t_df * sqrt(T)`` with
Satterthwaite's degrees of freedom, ``df = T^2 / ((B/S)^2 / (S - 1))`` (the test-sampling
part taken as known, as the DeLong interval does), which tends to the normal interval
as training noise vanishes. This is Rubin's (1987) rule for combining multiply-imputed
estimates with the between part scaled for a mean-over-seeds estimand;
``new_run_variance`` gives Rubin's own total ``U + (1 + 1/S) B`` (``mice::pool.scalar``'s
``t``), the variance of *one new* training run's figure around the mean, with Rubin's
degrees of freedom ``(S - 1)(1 + U / ((1 + 1/S) B))^2``.

Coverage of the 95 % interval by simulation (800 replicates each; the generator of the
test: a seed-to-seed AUC sd of 0.08, twice the test-sampling sd of 0.04 of its 100-case
split): 0.90 with 2 seeds, 0.92 with 3, 0.94-0.95 with 5 (a single seed's own DeLong
interval: 0.60); without training noise 0.97 with 3 seeds. With fewer than five seeds B
is itself too noisy for a reliable interval: report figures from five or more.

``tests/common/test_stats_seeds.py`` checks the interval's coverage by simulation on
binormal site data with a known estimand (see there), and that one seed's
test-sampling interval (what a single run reports) under-covers when training noise is
present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.stats._checks import check_level, t_crit, z_crit


@dataclass(frozen=True)
class SeedCombined:
    """One figure over S training seeds (see the module docstring)."""

    estimate: float  # the mean over seeds
    within: float  # U: mean test-sampling variance of one seed's figure
    between: float  # B: the sample variance of the figure across seeds
    seeds: int  # S

    @property
    def between_sd(self) -> float:
        """The seed-to-seed standard deviation of the figure, ``sqrt(B)``."""
        return math.sqrt(self.between)

    @property
    def variance(self) -> float:
        """``U + B / S``: the variance of the mean over seeds."""
        return self.within + self.between / self.seeds

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)

    @property
    def df(self) -> float:
        """Satterthwaite degrees of freedom of ``variance`` (inf without training noise)."""
        part = self.between / self.seeds
        if part <= 0.0:
            return math.inf
        return self.variance**2 / (part**2 / (self.seeds - 1))

    @property
    def new_run_variance(self) -> float:
        """Rubin's total variance ``U + (1 + 1/S) B``: one new training run's figure."""
        return self.within + (1.0 + 1.0 / self.seeds) * self.between

    @property
    def new_run_df(self) -> float:
        """Rubin's (1987) degrees of freedom ``(S - 1)(1 + U / ((1 + 1/S) B))^2``."""
        part = (1.0 + 1.0 / self.seeds) * self.between
        if part <= 0.0:
            return math.inf
        return (self.seeds - 1) * (1.0 + self.within / part) ** 2

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """``estimate +- t_df * se``; the normal quantile when df is infinite."""
        check_level(level)
        q = z_crit(level) if math.isinf(self.df) else t_crit(level, self.df)
        return self.estimate - q * self.se, self.estimate + q * self.se


def combine_seeds(estimates: Sequence[float], variances: Sequence[float]) -> SeedCombined:
    """Combine one figure's per-seed estimates and test-sampling variances (S >= 2)."""
    a = np.asarray(estimates, dtype=float)
    u = np.asarray(variances, dtype=float)
    if a.ndim != 1 or u.shape != a.shape:
        raise ValueError(
            f"estimates and variances must be 1-D and equally long, got {a.shape} and {u.shape}"
        )
    if a.size < 2:
        raise ValueError(f"training noise needs at least 2 seeds, got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(u))):
        raise ValueError("estimates and variances must be finite")
    if np.any(u < 0):
        raise ValueError("variances must be >= 0")
    return SeedCombined(
        estimate=float(a.mean()),
        within=float(u.mean()),
        between=float(a.var(ddof=1)),
        seeds=int(a.size),
    )
