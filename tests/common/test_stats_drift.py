"""Drift measures: W1 between histograms, Fréchet distance between Gaussians, PSI.

References:
- ``scipy.stats.wasserstein_distance(centres, centres, counts_a, counts_b)``;
- Fréchet closed forms: N(0, I) vs N(mu, I) = ||mu||^2 (shared/REFERENCES.md),
  1-D ``(m_a - m_b)^2 + (s_a - s_b)^2``, commuting (diagonal) covariances
  ``sum (sqrt(a) - sqrt(b))^2``, and the FID formula with ``scipy.linalg.sqrtm``;
- PSI of identical distributions = 0 (shared/REFERENCES.md) and a hand example.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg
from scipy.stats import wasserstein_distance

from common.stats import (
    fixed_histogram,
    frechet_distance,
    population_stability_index,
    wasserstein_1,
)

EDGES = np.linspace(-150.0, 250.0, 41)  # a CT window in 10 HU bins
CENTRES = (EDGES[:-1] + EDGES[1:]) / 2


def test_w1_equals_scipy_with_mass_at_bin_centres() -> None:
    rng = np.random.default_rng(0)
    a = fixed_histogram(rng.normal(40, 30, 5000), EDGES)
    b = fixed_histogram(rng.normal(60, 45, 3000), EDGES)
    expected = wasserstein_distance(CENTRES, CENTRES, a, b)
    assert wasserstein_1(a, b, EDGES) == pytest.approx(expected, abs=1e-9)
    # uneven bins too
    edges = np.array([0.0, 1.0, 3.0, 4.0, 10.0])
    c = (edges[:-1] + edges[1:]) / 2
    u, v = [1, 0, 3, 2], [0, 4, 1, 1]
    assert wasserstein_1(u, v, edges) == pytest.approx(wasserstein_distance(c, c, u, v), abs=1e-12)


def test_w1_of_a_shift_is_the_shift() -> None:
    counts = np.zeros(40)
    counts[5:10] = [1, 4, 6, 4, 1]
    shifted = np.roll(counts, 3)
    assert wasserstein_1(counts, shifted, EDGES) == pytest.approx(30.0, abs=1e-9)
    assert wasserstein_1(counts, 2 * counts, EDGES) == 0.0


def test_fixed_histogram_clips_into_end_bins() -> None:
    counts = fixed_histogram([-1000, -150, 0, 249.9, 250, 3000], EDGES)
    assert counts.sum() == 6
    assert counts[0] == 2 and counts[-1] == 3


def test_frechet_closed_forms() -> None:
    mu = np.array([1.0, -2.0, 0.5])
    eye = np.eye(3)
    assert frechet_distance(np.zeros(3), eye, mu, eye) == pytest.approx(float(mu @ mu), abs=1e-12)
    assert frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(2.0**2 + (2.0 - 3.0) ** 2)
    da, db = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = float(np.sum((np.sqrt(da) - np.sqrt(db)) ** 2))
    assert frechet_distance(np.zeros(3), np.diag(da), np.zeros(3), np.diag(db)) == pytest.approx(
        expected, abs=1e-12
    )
    assert frechet_distance(mu, eye, mu, eye) == 0.0


def _fid_sqrtm(mu_a: np.ndarray, s_a: np.ndarray, mu_b: np.ndarray, s_b: np.ndarray) -> float:
    cross = linalg.sqrtm(s_a @ s_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * cross))


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    m = rng.normal(size=(d, d))
    return np.asarray(m @ m.T + 0.1 * np.eye(d))


def test_frechet_equals_sqrtm_formula() -> None:
    rng = np.random.default_rng(5)
    for d in (2, 5, 16):
        mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
        s_a, s_b = _spd(rng, d), _spd(rng, d)
        assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(
            _fid_sqrtm(mu_a, s_a, mu_b, s_b), rel=1e-8
        )


def test_psi_hand_example_and_identity() -> None:
    a, b = [50, 30, 20], [30, 30, 40]
    pa, pb = np.array(a) / 100, np.array(b) / 100
    expected = float(np.sum((pa - pb) * np.log(pa / pb)))
    assert population_stability_index(a, b) == pytest.approx(expected, abs=1e-12)
    assert population_stability_index(a, a) == 0.0
    assert population_stability_index(a, [100, 60, 40]) == pytest.approx(0.0, abs=1e-15)


def test_psi_empty_bin_uses_eps() -> None:
    a, b = [10, 0, 10], [5, 5, 10]
    pa = np.array([0.5, 1e-4, 0.5])
    pb = np.array([0.25, 0.25, 0.5])
    expected = float(np.sum((pa - pb) * np.log(pa / pb)))
    assert population_stability_index(a, b) == pytest.approx(expected, abs=1e-12)
    assert population_stability_index(a, b, eps=1e-3) < expected  # larger floor, smaller PSI


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same bins"):
        wasserstein_1([1, 2], [1, 2, 3], [0, 1, 2])
    with pytest.raises(ValueError, match="entries"):
        wasserstein_1([1, 2], [1, 2], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="increasing"):
        wasserstein_1([1, 2], [1, 2], [0, 2, 1])
    with pytest.raises(ValueError, match=">= 0"):
        population_stability_index([1, -2], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        population_stability_index([0, 0], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        population_stability_index([1, math.nan], [1, 2])
    with pytest.raises(ValueError, match="eps"):
        population_stability_index([1, 2], [1, 2], eps=0)
    with pytest.raises(ValueError, match="NaN"):
        fixed_histogram([1.0, math.nan], EDGES)
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="2x2"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


hist = st.lists(st.integers(0, 1000), min_size=5, max_size=5).filter(lambda c: sum(c) > 0)


@settings(max_examples=80)
@given(hist, hist)
def test_w1_and_psi_invariants(a: list[int], b: list[int]) -> None:
    edges = np.array([0.0, 1.0, 2.5, 3.0, 7.0, 8.0])
    w_ab, w_ba = wasserstein_1(a, b, edges), wasserstein_1(b, a, edges)
    assert w_ab >= 0 and w_ab == pytest.approx(w_ba, abs=1e-12)
    assert w_ab <= 7.5 - 0.5 + 1e-12  # at most the distance between the extreme centres
    assert wasserstein_1(a, a, edges) == 0.0
    assert population_stability_index(a, b) >= 0
    assert population_stability_index(a, a) == 0.0
    c = np.array([0.5, 1.75, 2.75, 5.0, 7.5])
    assert w_ab == pytest.approx(wasserstein_distance(c, c, a, b), abs=1e-9)


@settings(max_examples=40)
@given(st.integers(0, 2**31), st.integers(1, 6))
def test_frechet_symmetric_and_nonnegative(seed: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    s_a, s_b = _spd(rng, d), _spd(rng, d)
    ab = frechet_distance(mu_a, s_a, mu_b, s_b)
    assert ab >= 0
    assert ab == pytest.approx(frechet_distance(mu_b, s_b, mu_a, s_a), rel=1e-7, abs=1e-9)
    assert frechet_distance(mu_a, s_a, mu_a, s_a) == pytest.approx(0.0, abs=1e-8)
