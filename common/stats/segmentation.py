"""Segmentation quality: Dice per case, a site's Dice summary, and HD95.

* :func:`dice_coefficient`: ``2 |A & B| / (|A| + |B|)`` for binary masks; 1.0
  when both are empty (MONAI ``compute_dice(..., ignore_empty=False)``).
* :func:`dice_summary`: what a site sends about its per-case Dice values:
  n, mean, sample SD (divisor n - 1), the t-based interval of the mean
  ``mean -/+ t(n-1) sd / sqrt(n)`` (R ``t.test(x)$conf.int``), and the median
  and quartiles by linear interpolation (R ``quantile(type = 7)``, numpy's
  default). With n = 1 the SD and interval are undefined and reported as NaN.
* :func:`hd95`: the 95th-percentile symmetric Hausdorff distance in physical
  units, computed by MONAI ``compute_hausdorff_distance(percentile=95)`` (the
  larger of the two directed 95th percentiles of surface-to-surface Euclidean
  distances, voxel spacing applied). Empty masks are decided here, not by
  MONAI (which returns NaN with a warning): both empty gives 0.0, exactly one
  empty gives ``inf``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from common.stats._checks import check_level, finite_1d, t_crit

__all__ = ["DiceSummary", "dice_coefficient", "dice_summary", "hd95"]


def _mask(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "b":
        return a
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a binary mask, got dtype {a.dtype}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must be binary (only 0 and 1, or bool)")
    return a.astype(bool)


def _pair(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _mask(pred, "pred"), _mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and truth {t.shape} must have the same shape")
    if p.ndim == 0:
        raise ValueError("masks must have at least one dimension")
    return p, t


def dice_coefficient(pred: ArrayLike, truth: ArrayLike) -> float:
    """Dice ``2 |pred & truth| / (|pred| + |truth|)``; 1.0 when both masks are empty."""
    p, t = _pair(pred, truth)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


@dataclass(frozen=True)
class DiceSummary:
    """Per-site summary of per-case Dice values (see module docstring)."""

    n: int
    mean: float
    sd: float
    ci: tuple[float, float]
    median: float
    q1: float
    q3: float
    level: float

    @property
    def iqr(self) -> float:
        """Interquartile range ``q3 - q1``."""
        return self.q3 - self.q1


def dice_summary(values: ArrayLike, level: float = 0.95) -> DiceSummary:
    """Mean, SD, t interval of the mean, median and quartiles of per-case Dice values.

    Raises ``ValueError`` for no values, NaN/Inf (drop or score empty cases
    first) or values outside [0, 1].
    """
    x = finite_1d(values, "values")
    if (x < 0).any() or (x > 1).any():
        raise ValueError("Dice values must lie in [0, 1]")
    lv = check_level(level)
    n = int(x.size)
    mean = float(x.mean())
    if n > 1:
        sd = float(x.std(ddof=1))
        half = t_crit(lv, n - 1) * sd / math.sqrt(n)
        ci = (mean - half, mean + half)
    else:
        sd, ci = math.nan, (math.nan, math.nan)
    q1, med, q3 = (float(v) for v in np.quantile(x, [0.25, 0.5, 0.75]))
    return DiceSummary(n=n, mean=mean, sd=sd, ci=ci, median=med, q1=q1, q3=q3, level=lv)


def hd95(pred: ArrayLike, truth: ArrayLike, spacing: ArrayLike | None = None) -> float:
    """95th-percentile Hausdorff distance between two binary masks (2-D or 3-D).

    ``spacing`` is the voxel size per axis (a number for isotropic voxels; None
    means 1). Wraps MONAI ``compute_hausdorff_distance(pred, truth,
    include_background=True, percentile=95, spacing=spacing)``; MONAI and torch
    are imported on first use only. MONAI works in float32, so the result is
    exact to about 1e-7 relative. Empty masks: see the module docstring.
    """
    p, t = _pair(pred, truth)
    if p.ndim not in (2, 3):
        raise ValueError(f"masks must be 2-D or 3-D, got {p.ndim}-D")
    if spacing is None:
        sp = [1.0] * p.ndim
    else:
        arr = np.asarray(spacing, dtype=float)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.size != p.ndim):
            raise ValueError(f"spacing must be a number or have {p.ndim} entries, got {arr}")
        sp = [float(v) for v in np.broadcast_to(arr, (p.ndim,))]
    if not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing must be finite and > 0, got {sp}")
    p_empty, t_empty = not p.any(), not t.any()
    if p_empty and t_empty:
        return 0.0
    if p_empty or t_empty:
        return math.inf

    import torch
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        # MONAI 1.5-1.6 warns about its own internal use of a deprecated argument.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd = compute_hausdorff_distance(
            torch.as_tensor(p[None, None]),
            torch.as_tensor(t[None, None]),
            include_background=True,
            percentile=95,
            spacing=sp,
        )
    return float(hd.reshape(-1)[0])
