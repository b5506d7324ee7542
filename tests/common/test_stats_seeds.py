"""Training noise over seeds (``common.stats.seeds``).

Reference: Rubin (1987), *Multiple Imputation for Nonresponse in Surveys*, the rules for
combining estimates (as ``mice::pool.scalar(Q, U, rule = "rubin1987")`` computes them:
``qbar``, ``ubar``, ``b``, ``t = ubar + (1 + 1/m) b`` and ``df = (m - 1)(1 + 1/r)^2``,
``r = (1 + 1/m) b / ubar``); the worked example below is computed by hand from those
formulas. The mean-over-seeds interval is checked by simulation with a known estimand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from common.stats import delong_auc
from common.stats.seeds import combine_seeds


def test_hand_worked_example() -> None:
    # five seeds: AUC 0.80, 0.84, 0.78, 0.82, 0.81 with DeLong variance 0.0016 each
    c = combine_seeds([0.80, 0.84, 0.78, 0.82, 0.81], [0.0016] * 5)
    assert c.estimate == pytest.approx(0.81)
    # B: squared deviations 1e-4, 9e-4, 9e-4, 1e-4, 0 over S - 1 = 4
    assert c.between == pytest.approx(5e-4)
    assert c.between_sd == pytest.approx(math.sqrt(5e-4))
    assert c.within == pytest.approx(0.0016)
    assert c.variance == pytest.approx(0.0016 + 1e-4)  # U + B/S
    assert c.df == pytest.approx(0.0017**2 / (1e-4**2 / 4))  # 1156
    # Rubin: t = ubar + (1 + 1/5) b = 0.0022; r = 0.0006 / 0.0016; df = 4 (1 + 1/r)^2
    assert c.new_run_variance == pytest.approx(0.0022)
    assert c.new_run_df == pytest.approx(4 * (1 + 0.0016 / 0.0006) ** 2)  # 53.78
    lo, hi = c.ci(0.95)
    half = stats.t.ppf(0.975, c.df) * math.sqrt(0.0017)
    assert (lo, hi) == pytest.approx((0.81 - half, 0.81 + half))


def test_no_training_noise_gives_the_normal_interval() -> None:
    c = combine_seeds([0.75, 0.75, 0.75], [0.0025, 0.0025, 0.0025])
    assert c.between == 0.0 and math.isinf(c.df) and math.isinf(c.new_run_df)
    assert c.ci(0.95) == pytest.approx((0.75 - 1.959964 * 0.05, 0.75 + 1.959964 * 0.05))


@pytest.mark.parametrize(
    ("estimates", "variances", "match"),
    [
        ([0.8], [0.001], "at least 2 seeds"),
        ([0.8, 0.7], [0.001], "equally long"),
        ([0.8, float("nan")], [0.001, 0.001], "finite"),
        ([0.8, 0.7], [0.001, -0.001], ">= 0"),
    ],
)
def test_bad_input_is_named(estimates: list[float], variances: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        combine_seeds(estimates, variances)


def _coverage(tau: float, seeds: int, replicates: int, rng: np.random.Generator) -> tuple:
    """Coverage of the combined interval, and of the first seed's own DeLong interval (what
    a single run reports), for the recipe's AUC.

    Generator (binormal): a site's test split, drawn once per replicate, has latent
    values x ~ N(mu, 1) for positives and N(0, 1) for negatives. Seed s's model scores
    case i as x_i + u_is + c_s y_i: u_is ~ N(0, sigma^2) is per-case training noise,
    c_s ~ N(0, tau^2) moves the model's separation. Seed s's population AUC is
    Phi((mu + c_s) / sqrt(2 + 2 sigma^2)), so the estimand, its mean over training, is
    theta = Phi(mu / sqrt(2 + 2 sigma^2 + tau^2)) (E Phi(a + bZ) = Phi(a / sqrt(1 + b^2))).
    """
    mu, sigma, n_pos, n_neg = 1.5, 0.5, 40, 60
    theta = stats.norm.cdf(mu / math.sqrt(2 + 2 * sigma**2 + tau**2))
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    hits = hits_single = 0
    for _ in range(replicates):
        x = np.r_[rng.normal(mu, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
        aucs, variances = [], []
        for _ in range(seeds):
            score = x + rng.normal(0.0, sigma, x.size) + rng.normal(0.0, tau) * y
            r = delong_auc(y, score)
            aucs.append(r.auc)
            variances.append(r.variance)
        c = combine_seeds(aucs, variances)
        lo, hi = c.ci(0.95)
        hits += lo <= theta <= hi
        half = 1.959964 * math.sqrt(variances[0])
        hits_single += aucs[0] - half <= theta <= aucs[0] + half
    return hits / replicates, hits_single / replicates


def test_coverage_with_training_noise_and_shared_test_cases() -> None:
    """tau = 0.5 gives a seed-to-seed AUC sd of 0.08, twice the test-sampling sd (0.04) of
    the 100-case split: the combined interval covers, one seed's own interval does not."""
    rng = np.random.default_rng(20261205)
    covered, covered_single = _coverage(tau=0.5, seeds=5, replicates=800, rng=rng)
    # 800 replicates: a binomial sd of 0.008 around 0.95
    assert 0.93 <= covered <= 0.99
    assert covered_single < 0.85


def test_coverage_without_training_noise_is_not_wasteful() -> None:
    rng = np.random.default_rng(7)
    covered, covered_single = _coverage(tau=0.0, seeds=3, replicates=600, rng=rng)
    assert 0.93 <= covered <= 0.995
    assert 0.92 <= covered_single <= 0.98
