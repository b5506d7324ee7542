"""Sequential change detection on a site's monitoring statistics, window by window.

A deployed model is watched month by month: each window gives a statistic per site
(an input-drift distance, an estimated AUC). A control chart says when the series
has moved, at a false-alarm rate fixed in advance: with ``alpha`` the acceptable
share of in-control windows that raise an alarm, the chart is tuned to an in-control
average run length ``ARL0 = 1 / alpha`` (windows until a false alarm).

The in-control level and spread, ``mu0`` and ``sigma0``, come from a **reference
period** (the first windows after deployment, or the validation data): each value is
standardised, ``z_t = (x_t - mu0) / sigma0``. Parameters estimated from few reference
windows make false alarms more frequent than planned (the estimate's own error adds
to every window's): ``reference_level`` says how many windows were used, and the
monitoring reports that number next to every alarm.

Two charts:

- **CUSUM** (Page 1954), one-sided: ``S_t = max(0, S_{t-1} + z_t - k)`` upwards (and
  ``max(0, S_{t-1} - z_t - k)`` downwards), alarm when ``S_t > h``. ``k`` is half the
  shift (in sigma units) the chart is tuned to detect fastest (0.5 for a one-sigma
  shift). ``h`` for a target ARL0 is found from the ARL computed by the Markov-chain
  method of Brook & Evans (1972).
- **EWMA** (Roberts 1959): ``w_t = lam z_t + (1 - lam) w_{t-1}``, ``w_0 = 0``, alarm
  when ``|w_t| > L sigma_w(t)`` with the exact time-varying
  ``sigma_w(t) = sqrt(lam / (2 - lam) (1 - (1 - lam)^(2t)))``; ``L`` for a target
  ARL0 from the same Markov-chain method on the asymptotic limits (Lucas &
  Saccucci 1990).

Checked against the published ARL tables (Montgomery, *Introduction to Statistical
Quality Control*: the tabular CUSUM with k = 1/2, h = 4 and 5; the EWMA schemes of
Lucas & Saccucci with ARL0 = 500) and by simulation (tests/common/test_stats_change_detection.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

Side = Literal["upper", "lower", "both"]
_STATES = 201  # Markov-chain discretisation (odd: a state centred on 0 for the EWMA)


@dataclass(frozen=True)
class Reference:
    """The in-control level and spread of a statistic, from ``n`` reference windows."""

    mu0: float
    sigma0: float
    n: int


def reference_level(values: ArrayLike) -> Reference:
    """``mu0`` (mean) and ``sigma0`` (sample sd) of the reference windows' values."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        raise ValueError(f"a reference period needs at least 2 finite windows, got {x.size}")
    sd = float(np.std(x, ddof=1))
    if sd <= 0:
        raise ValueError("the reference windows do not vary (sd 0): no scale to chart against")
    return Reference(float(np.mean(x)), sd, int(x.size))


# ---- average run lengths (Brook & Evans 1972) ------------------------------------------------


def cusum_arl(h: float, k: float, shift: float = 0.0, states: int = _STATES) -> float:
    """ARL of the one-sided upper CUSUM ``S_t = max(0, S_{t-1} + z_t - k)``, alarm when
    ``S_t > h``, for N(shift, 1) observations, starting at 0 (Markov chain on [0, h])."""
    if h <= 0:
        raise ValueError(f"h must be positive, got {h}")
    w = h / (states - 0.5)  # state 0 is [0, w/2): the atom at zero; state i centred i*w
    centres = np.arange(states) * w
    upper = centres[None, :] + w / 2 - centres[:, None] + k - shift
    lower = centres[None, :] - w / 2 - centres[:, None] + k - shift
    p = stats.norm.cdf(upper) - stats.norm.cdf(lower)
    p[:, 0] = stats.norm.cdf(w / 2 - centres + k - shift)  # to zero (or just above)
    arl = np.linalg.solve(np.eye(states) - p, np.ones(states))
    return float(arl[0])


def two_sided_arl(arl_upper: float, arl_lower: float) -> float:
    """ARL of an upper and a lower chart run together (``1/ARL = 1/ARL+ + 1/ARL-``,
    exact for the CUSUM when the two cannot signal together, Lucas & Crosier 1982)."""
    return 1.0 / (1.0 / arl_upper + 1.0 / arl_lower)


def cusum_chart_arl(h: float, k: float, shift: float = 0.0, side: Side = "both") -> float:
    """ARL of a CUSUM chart watching one side or both."""
    up = cusum_arl(h, k, shift)
    if side == "upper":
        return up
    down = cusum_arl(h, k, -shift)
    return down if side == "lower" else two_sided_arl(up, down)


def ewma_arl(lam: float, limit: float, shift: float = 0.0, states: int = _STATES) -> float:
    """ARL of the EWMA chart with asymptotic limits ``+-L sigma_w`` for N(shift, 1)
    observations, starting at 0 (Markov chain on the in-control band)."""
    if not 0 < lam <= 1:
        raise ValueError(f"lambda must be in (0, 1], got {lam}")
    bound = limit * math.sqrt(lam / (2 - lam))
    w = 2 * bound / states
    centres = -bound + w * (np.arange(states) + 0.5)
    # from centre c_i, w' = lam z + (1 - lam) c_i lands in state j when z is in a band
    base = (1 - lam) * centres[:, None]
    hi = (centres[None, :] + w / 2 - base) / lam - shift
    lo = (centres[None, :] - w / 2 - base) / lam - shift
    p = stats.norm.cdf(hi) - stats.norm.cdf(lo)
    arl = np.linalg.solve(np.eye(states) - p, np.ones(states))
    return float(arl[states // 2])


def cusum_limit(arl0: float, k: float = 0.5, side: Side = "both") -> float:
    """The decision interval ``h`` whose in-control ARL is ``arl0``."""
    if arl0 <= 1:
        raise ValueError(f"the in-control ARL must exceed 1 window, got {arl0}")
    return float(optimize.brentq(lambda h: cusum_chart_arl(h, k, 0.0, side) - arl0, 1e-3, 50.0))


def ewma_limit(arl0: float, lam: float) -> float:
    """The limit multiplier ``L`` whose in-control ARL is ``arl0``."""
    if arl0 <= 1:
        raise ValueError(f"the in-control ARL must exceed 1 window, got {arl0}")
    return float(optimize.brentq(lambda lim: ewma_arl(lam, lim) - arl0, 0.5, 6.0))


# ---- the charts on a series -------------------------------------------------------------------


@dataclass(frozen=True)
class ChartResult:
    """A chart run over a series: its statistic and limit per window, and the alarms."""

    method: str
    statistic: tuple[float, ...]  # CUSUM: the larger side's S_t; EWMA: w_t (sigma units)
    limit: tuple[float, ...]  # the alarm limit at each window
    alarms: tuple[int, ...]  # indices of the windows that raised an alarm
    direction: tuple[str, ...]  # "up" / "down" per alarm

    @property
    def first_alarm(self) -> int | None:
        return self.alarms[0] if self.alarms else None


def _standardise(values: ArrayLike, ref: Reference) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(x).all():
        raise ValueError("every window needs a finite value (leave out windows without one)")
    return (x - ref.mu0) / ref.sigma0


def cusum(values: Sequence[float] | ArrayLike, ref: Reference, k: float, h: float,
          side: Side = "both", restart: bool = True) -> ChartResult:  # fmt: skip
    """The CUSUM chart over ``values``; after an alarm the sums restart from 0 when
    ``restart`` (each alarm is then a new signal, not the same one repeated)."""
    z = _standardise(values, ref)
    up = down = 0.0
    stat, alarms, direction = [], [], []
    for t, zt in enumerate(z):
        up = max(0.0, up + zt - k) if side != "lower" else 0.0
        down = max(0.0, down - zt - k) if side != "upper" else 0.0
        stat.append(up if up >= down else -down)
        if up > h or down > h:
            alarms.append(t)
            direction.append("up" if up > h else "down")
            if restart:
                up = down = 0.0
    return ChartResult("cusum", tuple(stat), tuple(h for _ in z), tuple(alarms), tuple(direction))


def ewma(values: Sequence[float] | ArrayLike, ref: Reference, lam: float, limit: float,
         side: Side = "both") -> ChartResult:  # fmt: skip
    """The EWMA chart over ``values`` with the exact time-varying limits."""
    z = _standardise(values, ref)
    w = 0.0
    stat, lims, alarms, direction = [], [], [], []
    for t, zt in enumerate(z, start=1):
        w = lam * zt + (1 - lam) * w
        lim = limit * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * t)))
        stat.append(w)
        lims.append(lim)
        if (w > lim and side != "lower") or (w < -lim and side != "upper"):
            alarms.append(t - 1)
            direction.append("up" if w > 0 else "down")
    return ChartResult("ewma", tuple(stat), tuple(lims), tuple(alarms), tuple(direction))
