"""Input validation shared by the statistics modules (private).

Every public function validates its input and raises ``ValueError`` with a
message naming the argument; nothing is silently dropped or coerced.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


def check_level(level: float) -> float:
    """Confidence level as a float strictly between 0 and 1."""
    lv = float(level)
    if not 0.0 < lv < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    return lv


def z_crit(level: float) -> float:
    """Two-sided standard-normal quantile ``qnorm(1 - (1 - level) / 2)``."""
    return float(stats.norm.ppf(0.5 + check_level(level) / 2))


def t_crit(level: float, df: float) -> float:
    """Two-sided Student-t quantile ``qt(1 - (1 - level) / 2, df)``."""
    return float(stats.t.ppf(0.5 + check_level(level) / 2, df))


def labels(y_true: ArrayLike, name: str = "y_true") -> np.ndarray:
    """1-D array of 0/1 labels as int."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric 0/1 labels, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1")
    return y.astype(int)


def finite_1d(x: ArrayLike, name: str, min_len: int = 1) -> np.ndarray:
    """1-D float array with only finite values and at least ``min_len`` entries."""
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size < min_len:
        raise ValueError(f"{name} needs at least {min_len} value(s), got {a.size}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def matched(y: np.ndarray, x: ArrayLike, name: str, y_name: str = "y_true") -> np.ndarray:
    """``x`` as a finite 1-D float array of the same length as ``y``."""
    a = np.asarray(x, dtype=float)
    if a.shape != y.shape:
        raise ValueError(f"{y_name} {y.shape} and {name} {a.shape} must be 1-D and equal in length")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def finite_scalar(x: float, name: str) -> float:
    """``x`` as a finite float."""
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {x}")
    return v


def ratio(num: float, den: float, zero_over_zero: float) -> float:
    """``num / den`` (``den >= 0``); ``+-inf`` if only ``den`` is 0; ``zero_over_zero`` for 0/0."""
    if den > 0:
        return num / den
    return zero_over_zero if num == 0 else math.copysign(math.inf, num)


def count(x: float, name: str) -> int:
    """A non-negative integer count (``3.0`` accepted, ``2.5`` rejected)."""
    v = float(x)
    if not math.isfinite(v) or v < 0 or v != int(v):
        raise ValueError(f"{name} must be a non-negative integer, got {x}")
    return int(v)
