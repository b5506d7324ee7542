"""Differential-privacy maths shared by sites and server: clipping, noise, exact accounting.

**Accounting.** A Gaussian mechanism whose output moves by at most ``sensitivity``
between neighbouring inputs and whose noise has standard deviation ``s`` is
``mu``-Gaussian-DP with ``mu = sensitivity / s``; ``k`` such releases compose to
``mu * sqrt(k)`` exactly (Dong, Roth & Su, "Gaussian Differential Privacy", JRSS-B
2022, arXiv:1905.02383, Cor. 3.3). A ``mu``-GDP mechanism is (epsilon, delta)-DP for
exactly the pairs on the curve

    delta(epsilon) = Phi(-epsilon / mu + mu / 2) - e^epsilon * Phi(-epsilon / mu - mu / 2)

(Dong et al. Cor. 2.13; Balle & Wang, "Improving the Gaussian mechanism", ICML 2018,
Thm. 8, the analytic Gaussian mechanism). ``gaussian_epsilon`` inverts it by
bisection. These numbers are tight; the server's budget is enforced with Flower's
RDP accountant (``server.privacy``), which is a slightly looser upper bound.

**Normalisation statistics.** BatchNorm's running mean and variance are averages of
the site's images, not trainable parameters: under any ``privacy.mode`` other than
``none`` they never travel (``running_statistics``, added to the hooks' local keys),
so noise never lands on a variance and they cost no privacy. Each site keeps its own,
and a site that never trained re-estimates them on its own images before scoring.

**Noise** is drawn from a generator seeded afresh from the operating system, never
from the run seed: the run config (and with it ``seed``) is sent to every site, so
noise derived from it could be regenerated and subtracted by anyone who holds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

if TYPE_CHECKING:
    from torch import nn

# normalisation buffers estimated from a site's images: never part of a DP update
RUNNING_STATISTICS = ("running_mean", "running_var")


class PrivacyMetric(StrEnum):
    """Metrics a site adds to its train reply under ``privacy.mode = local``."""

    EPSILON = "dp-epsilon"  # this release alone, at DELTA
    DELTA = "dp-delta"
    EPSILON_TOTAL = "dp-epsilon-total"  # all of this site's local-DP releases so far
    RELEASES = "dp-releases"  # how many noised updates this site has sent


def gaussian_delta(mu: float, epsilon: float) -> float:
    """The smallest delta for which a ``mu``-GDP mechanism is (epsilon, delta)-DP."""
    if mu <= 0:
        return 0.0
    value = norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)
    return float(max(value, 0.0))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon for which a ``mu``-GDP mechanism is (epsilon, delta)-DP.

    ``mu = 0`` (no release) costs nothing; ``delta(epsilon)`` decreases in epsilon,
    so the root is bracketed by doubling and found by Brent's method.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta = {delta!r}: must be in (0, 1)")
    if mu <= 0 or gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    high = max(1.0, mu * mu)
    while gaussian_delta(mu, high) > delta:
        high *= 2.0
    return float(brentq(lambda e: gaussian_delta(mu, e) - delta, 0.0, high, xtol=1e-12))


def composed_mu(noise_multiplier: float, releases: int, sensitivity: float = 1.0) -> float:
    """GDP ``mu`` of ``releases`` Gaussian releases with noise std ``noise_multiplier``
    times the clip norm and sensitivity ``sensitivity`` clip norms (``inf`` without noise)."""
    if releases <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return sensitivity * math.sqrt(releases) / noise_multiplier


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors of an update taken as one vector (float64 sums)."""
    total = 0.0
    for values in update.values():
        flat = np.asarray(values, dtype=np.float64).ravel()
        total += float(flat @ flat)
    return math.sqrt(total)


def clip_update(
    update: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], bool]:
    """``update`` scaled to L2 norm at most ``clip_norm`` (Flower's FlatClip, McMahan et al.
    2018), in float64; and whether it had to be scaled."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm = {clip_norm!r}: must be > 0")
    total = update_norm(update)
    scale = 1.0 if total <= clip_norm else clip_norm / total
    return {k: np.asarray(v, dtype=np.float64) * scale for k, v in update.items()}, scale < 1.0


def add_gaussian_noise(
    update: Mapping[str, np.ndarray], std: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``update`` plus independent N(0, std^2) noise on every entry (float64)."""
    return {
        k: np.asarray(v, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(v))
        for k, v in update.items()
    }


def noise_rng() -> np.random.Generator:
    """A generator seeded from the operating system's entropy, for one release.

    Deliberately not reproducible: see the module docstring. (NumPy's PCG64 is not a
    cryptographic generator; a fresh OS seed per release keeps its state unknown.)
    """
    return np.random.default_rng()


def running_statistics(model: nn.Module) -> set[str]:
    """State-dict keys of ``model``'s normalisation running statistics (BatchNorm's
    ``running_mean`` / ``running_var``): what DP keeps at the site instead of noising."""
    return {
        name for name, _ in model.named_buffers() if name.rsplit(".", 1)[-1] in RUNNING_STATISTICS
    }
