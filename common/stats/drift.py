"""Distribution shift between sites from summaries: W1, Fréchet distance, PSI.

Sites send histograms on fixed, shared bins (or Gaussian moments), never voxels.

* :func:`fixed_histogram`: counts of values on given bin edges; values outside
  ``[edges[0], edges[-1]]`` are clipped into the end bins (as intensity
  windowing does); bins are ``[e_i, e_{i+1})``, the last closed.
* :func:`wasserstein_1`: earth mover's distance between two histograms on the
  same bins, with each bin's mass placed at its centre ``c_i``::

      W1 = sum_{i < B-1} |F_a(i) - F_b(i)| (c_{i+1} - c_i),   F = cumulative share

  which equals ``scipy.stats.wasserstein_distance(c, c, counts_a, counts_b)``.
  Symmetric, >= 0, 0 for proportional histograms; in the units of the bins.
* :func:`frechet_distance`: squared 2-Wasserstein distance between Gaussians
  (Dowson & Landau 1982; the FID formula of Heusel et al. 2017)::

      d^2 = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})

  computed with symmetric eigendecompositions (negative round-off eigenvalues
  set to 0, a tiny negative total set to 0). N(0, I) vs N(mu, I) gives ``||mu||^2``.
* :func:`population_stability_index`: ``PSI = sum_i (a_i - b_i) ln(a_i / b_i)``
  over bin shares ``a_i, b_i``; a share of exactly 0 (empty bin) is replaced by
  ``eps`` (default 1e-4) so the log stays finite. Every term is >= 0, so
  PSI >= 0, and PSI = 0 for identical shares. Common reading: < 0.1 stable,
  0.1-0.25 moderate shift, > 0.25 major shift.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from common.stats._checks import finite_1d

__all__ = [
    "fixed_histogram",
    "frechet_distance",
    "population_stability_index",
    "wasserstein_1",
]


def _edges(bin_edges: ArrayLike) -> np.ndarray:
    e = finite_1d(bin_edges, "bin_edges", min_len=2)
    if not (np.diff(e) > 0).all():
        raise ValueError("bin_edges must be strictly increasing")
    return e


def _counts(counts: ArrayLike, name: str) -> np.ndarray:
    c = finite_1d(counts, name)
    if (c < 0).any():
        raise ValueError(f"{name} must be >= 0")
    if c.sum() <= 0:
        raise ValueError(f"{name} is empty (total count 0)")
    return c


def _pair(counts_a: ArrayLike, counts_b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _counts(counts_a, "counts_a"), _counts(counts_b, "counts_b")
    if a.shape != b.shape:
        raise ValueError(f"counts_a {a.shape} and counts_b {b.shape} must use the same bins")
    return a, b


def fixed_histogram(values: ArrayLike, bin_edges: ArrayLike) -> np.ndarray:
    """Counts of ``values`` in the fixed bins (out-of-range values clipped into the end bins)."""
    e = _edges(bin_edges)
    v = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(v).all():
        raise ValueError("values contain NaN or Inf")
    counts, _ = np.histogram(np.clip(v, e[0], e[-1]), bins=e)
    return counts.astype(np.int64)


def wasserstein_1(counts_a: ArrayLike, counts_b: ArrayLike, bin_edges: ArrayLike) -> float:
    """Wasserstein-1 distance between two histograms on the same bins (mass at bin centres)."""
    a, b = _pair(counts_a, counts_b)
    e = _edges(bin_edges)
    if e.size != a.size + 1:
        raise ValueError(f"bin_edges needs {a.size + 1} entries for {a.size} bins, got {e.size}")
    centres = (e[:-1] + e[1:]) / 2
    cdf_gap = np.cumsum(a / a.sum() - b / b.sum())[:-1]
    return float(np.sum(np.abs(cdf_gap) * np.diff(centres)))


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return np.asarray((v * np.sqrt(np.clip(w, 0.0, None))) @ v.T)


def _gaussian(mu: ArrayLike, cov: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    m = np.atleast_1d(np.asarray(mu, dtype=float))
    s = np.atleast_2d(np.asarray(cov, dtype=float))
    if m.ndim != 1:
        raise ValueError(f"mu_{name} must be a vector, got shape {m.shape}")
    if s.shape != (m.size, m.size):
        raise ValueError(f"cov_{name} must be {m.size}x{m.size}, got shape {s.shape}")
    if not (np.isfinite(m).all() and np.isfinite(s).all()):
        raise ValueError(f"mu_{name} and cov_{name} must be finite")
    scale = max(1.0, float(np.abs(s).max()))
    if not np.allclose(s, s.T, rtol=1e-10, atol=1e-12 * scale):
        raise ValueError(f"cov_{name} must be symmetric")
    if np.linalg.eigvalsh(s).min() < -1e-10 * scale:
        raise ValueError(f"cov_{name} must be positive semi-definite")
    return m, (s + s.T) / 2


def frechet_distance(mu_a: ArrayLike, cov_a: ArrayLike, mu_b: ArrayLike, cov_b: ArrayLike) -> float:
    """Fréchet (squared 2-Wasserstein) distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    1-D inputs may be scalars (a mean and a variance). Raises ``ValueError``
    for mismatched dimensions, non-finite, asymmetric or indefinite covariances.
    """
    ma, sa = _gaussian(mu_a, cov_a, "a")
    mb, sb = _gaussian(mu_b, cov_b, "b")
    if ma.size != mb.size:
        raise ValueError(f"dimensions differ: {ma.size} and {mb.size}")
    ra = _sqrt_psd(sa)
    inner = ra @ sb @ ra
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_cross = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    d2 = float(np.sum((ma - mb) ** 2)) + float(np.trace(sa) + np.trace(sb)) - 2 * tr_cross
    return max(0.0, d2)


def population_stability_index(
    counts_a: ArrayLike, counts_b: ArrayLike, eps: float = 1e-4
) -> float:
    """PSI between two histograms on the same bins; empty-bin shares become ``eps``."""
    if not (math.isfinite(eps) and 0 < eps < 1):
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    a, b = _pair(counts_a, counts_b)
    pa = a / a.sum()
    pb = b / b.sum()
    pa = np.where(pa == 0, eps, pa)
    pb = np.where(pb == 0, eps, pb)
    return float(np.sum((pa - pb) * np.log(pa / pb)))
