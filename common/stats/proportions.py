"""Binomial proportions and 2x2 diagnostic accuracy with confidence intervals.

* :func:`wilson_ci`: Wilson (1927) score interval, exactly R's
  ``prop.test(k, n, correct = FALSE)$conf.int``::

      centre = (p + z^2 / 2n) / (1 + z^2 / n)
      half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)

  with the lower limit set to 0 when ``k = 0`` and the upper to 1 when ``k = n``
  (as ``prop.test`` does).
* :func:`diagnostic_accuracy`: from a 2x2 table (``tp, fp, fn, tn``)
  sensitivity, specificity, PPV and NPV with Wilson intervals; the likelihood
  ratios ``LR+ = sens / (1 - spec)`` and ``LR- = (1 - sens) / spec`` with the
  log-method interval of Simel, Samsa & Matchar (1991)::

      SE(ln LR+) = sqrt(1/tp - 1/(tp + fn) + 1/fp - 1/(fp + tn))
      SE(ln LR-) = sqrt(1/fn - 1/(tp + fn) + 1/tn - 1/(fp + tn))

  and the diagnostic odds ratio ``DOR = tp tn / (fp fn)`` with Woolf's log
  interval, ``SE(ln DOR) = sqrt(1/tp + 1/fp + 1/fn + 1/tn)``.

Zero-cell rule (Haldane-Anscombe): when any of the four cells is zero, 0.5 is
added to *every* cell for LR+, LR- and DOR only (their logs are otherwise
infinite); ``corrected`` is then True. Sensitivity, specificity, PPV and NPV
always use the raw counts, whose Wilson intervals are defined at 0 and n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from common.stats._checks import check_level, count, z_crit

__all__ = ["DiagnosticAccuracy", "Estimate", "diagnostic_accuracy", "wilson_ci"]


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (``prop.test(correct=FALSE)``).

    Raises ``ValueError`` unless ``0 <= k <= n`` are integers and ``n >= 1``.
    """
    kk, nn = count(k, "k"), count(n, "n")
    if nn == 0:
        raise ValueError("n must be >= 1 for a proportion")
    if kk > nn:
        raise ValueError(f"k ({kk}) must not exceed n ({nn})")
    z = z_crit(level)
    p = kk / nn
    z22n = z * z / (2 * nn)
    root = z * math.sqrt(p * (1 - p) / nn + z22n / (2 * nn))
    lo = 0.0 if p <= 0 else (p + z22n - root) / (1 + 2 * z22n)
    hi = 1.0 if p >= 1 else (p + z22n + root) / (1 + 2 * z22n)
    return lo, hi


class Estimate(NamedTuple):
    """A point estimate with its interval; unpacks as ``value, lo, hi``."""

    value: float
    lo: float
    hi: float


@dataclass(frozen=True)
class DiagnosticAccuracy:
    """Accuracy measures of a 2x2 table; see the module docstring for the formulas.

    ``ppv`` (``npv``) is ``Estimate(nan, nan, nan)`` when no case was called
    positive (negative). ``corrected`` tells whether the zero-cell rule applied
    to ``lr_pos``, ``lr_neg`` and ``dor``.
    """

    tp: int
    fp: int
    fn: int
    tn: int
    level: float
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    npv: Estimate
    lr_pos: Estimate
    lr_neg: Estimate
    dor: Estimate
    corrected: bool


def proportion(k: int, n: int, level: float) -> Estimate:
    """k of n with its Wilson interval; nan for n = 0."""
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    lo, hi = wilson_ci(k, n, level)
    return Estimate(k / n, lo, hi)


def _log_ci(value: float, se_log: float, z: float) -> Estimate:
    return Estimate(value, value * math.exp(-z * se_log), value * math.exp(z * se_log))


def diagnostic_accuracy(
    tp: int, fp: int, fn: int, tn: int, level: float = 0.95
) -> DiagnosticAccuracy:
    """Sensitivity, specificity, PPV, NPV (Wilson), LR+, LR- (Simel log), DOR (Woolf log).

    Raises ``ValueError`` for negative or non-integer cells, or when the table
    has no diseased (``tp + fn = 0``) or no healthy (``fp + tn = 0``) case.
    """
    a, b, c, d = count(tp, "tp"), count(fp, "fp"), count(fn, "fn"), count(tn, "tn")
    lv = check_level(level)
    if a + c == 0:
        raise ValueError("the table has no positive (diseased) case: tp + fn = 0")
    if b + d == 0:
        raise ValueError("the table has no negative (healthy) case: fp + tn = 0")
    z = z_crit(lv)
    corrected = min(a, b, c, d) == 0
    add = 0.5 if corrected else 0.0
    ca, cb, cc, cd = a + add, b + add, c + add, d + add
    sens, spec = ca / (ca + cc), cd / (cb + cd)
    lr_pos = sens / (1 - spec)
    lr_neg = (1 - sens) / spec
    dor = ca * cd / (cb * cc)
    se_pos = math.sqrt(1 / ca - 1 / (ca + cc) + 1 / cb - 1 / (cb + cd))
    se_neg = math.sqrt(1 / cc - 1 / (ca + cc) + 1 / cd - 1 / (cb + cd))
    se_dor = math.sqrt(1 / ca + 1 / cb + 1 / cc + 1 / cd)
    return DiagnosticAccuracy(
        tp=a,
        fp=b,
        fn=c,
        tn=d,
        level=lv,
        sensitivity=proportion(a, a + c, lv),
        specificity=proportion(d, b + d, lv),
        ppv=proportion(a, a + b, lv),
        npv=proportion(d, c + d, lv),
        lr_pos=_log_ci(lr_pos, se_pos, z),
        lr_neg=_log_ci(lr_neg, se_neg, z),
        dor=_log_ci(dor, se_dor, z),
        corrected=corrected,
    )
