"""One-vs-rest (OvR) statistics for a K-class probabilistic classifier, computed at a site.

Labels are integers ``0..K-1``; ``probs`` is ``(N, K)``, column ``k`` the score of
class k (probabilities, or any score where higher means "more likely k": only the
order within a column matters for the AUCs).

**OvR AUCs and their covariance** (:func:`ovr_auc`). Class k's AUC ``A_k`` is the
binary AUC of ``probs[:, k]`` for ``labels == k`` (m_k positives) against the rest
(n_k = N - m_k negatives), ties 1/2, exactly :func:`common.stats.auc.delong_auc`.
Each case i has one DeLong placement per class: as a positive of its own class,
``V10_k(i)`` (share of class-k negatives scored below it on column k), and as a
negative of every other class, ``V01_k(i)`` (share of class-k positives scored above
it). Write ``phi_k(i)`` for that placement and ``g_k(i)`` for the size of the group
it belongs to for class k (m_k if ``y_i = k``, else n_k).

*Derivation.* With cases drawn i.i.d. (class included), ``A_k`` is a ratio of
U-statistics whose influence function (delta method) is
``IF_k(i) = N (phi_k(i) - A_k) / g_k(i)``: the known AUC influence
``(V10 - A) / pi`` for a positive and ``(V01 - A) / (1 - pi)`` for a negative.
Hence ``cov(A_k, A_l) ~ (1/N^2) sum_i IF_k(i) IF_l(i)``, i.e. the sum over cases of
``(phi_k(i) - A_k)(phi_l(i) - A_l) / (g_k(i) g_l(i))``. A case of class k enters
as (positive of k) x (negative of l), one of class l the other way round, and a
case of any third class as a negative of both. For ``l = k`` this is DeLong's
``S10/m + S01/n`` with divisors m, n instead of m - 1, n - 1; giving every factor
the small-sample correction of its own AUC's variance,

    c_k(i) = (phi_k(i) - A_k) / sqrt(g_k(i) (g_k(i) - 1)),    Sigma = C' C,

makes the diagonal exactly DeLong's (pROC ``var(roc, method="delong")``), makes
``Sigma`` positive semi-definite (a Gram matrix), and reduces to DeLong et al.
(1988)'s paired covariance ``S10^{kl}/m + S01^{kl}/n`` when two AUCs share their
positives and negatives (Sun & Xu 2014 compute the placements from midranks, as
here). A case-level jackknife agrees to a relative O(1/min g).

A class with no positive or no negative has an undefined AUC (NaN; listed in
``undefined``); one with a single positive or negative has an AUC but no variance
(NaN row/column, as :func:`delong_auc` refuses it).

**Means** (:func:`macro_auc`, K >= 3): the unweighted mean of the defined AUCs,
``variance = 1' Sigma 1 / K_d^2`` over those K_d classes; the prevalence-weighted
mean ``sum w_k A_k`` with ``w_k = m_k / sum m`` (sklearn's ``average="weighted"``)
and ``variance = w' Sigma w`` (weights held at the observed prevalences). Both CIs
are Wald on the AUC scale clipped to [0, 1], as the binary AUC's (pROC
``ci.auc(method="delong")``; no logit transform). Pooling across sites is on the
logit scale, as for binary AUCs (:func:`ovr_pooled` calls
:func:`common.stats.meta.pool_auc` class by class).

**Confusion matrix** (rows: true class, columns: predicted): :func:`confusion_counts`
stays at the site; :func:`confusion_matrix` is what may leave it under the small-cell
rule (k = ``policy.min-cell``): a cell with 1..k-1 cases is suppressed (None), a
zero stays 0 (an empty cell discloses nothing, docs/privacy.md "Disclosure model").
:func:`per_class_accuracy` gives OvR sensitivity and specificity with Wilson
intervals from the full counts. The decision rules and the counts are in
:mod:`common.stats.multiclass_counts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from common.stats._checks import check_level, z_crit
from common.stats.auc import AUCResult, _placements
from common.stats.meta import Method, PooledEstimate, pool_auc

__all__ = [
    "MacroAUC",
    "OvRAUCResult",
    "macro_auc",
    "ovr_auc",
    "ovr_pooled",
]


# ---- input checks ------------------------------------------------------------------------


def _class_labels(labels: ArrayLike, n_classes: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be integer class indices, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise ValueError(f"{name} must be integer class indices, got NaN, Inf or a fraction")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise ValueError(
            f"{name} must lie in 0..{n_classes - 1} (K = {n_classes} classes), "
            f"got {sorted({int(v) for v in y[bad]})[:5]}"
        )
    return y.astype(int)


def _scores(probs: ArrayLike) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (N cases, K classes), got shape {p.shape}")
    if p.shape[1] < 2:
        raise ValueError(f"probs needs K >= 2 class columns, got {p.shape[1]}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or Inf")
    return p


# ---- OvR AUCs with their DeLong covariance -------------------------------------------------


@dataclass(frozen=True)
class OvRAUCResult:
    """Per-class OvR AUCs, their K x K DeLong covariance and class counts (module docstring).

    Built by :func:`ovr_auc` at a site, or from a site's summary on the server.
    ``undefined`` lists classes with no positive or no negative (AUC NaN).
    """

    aucs: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    n_pos: tuple[int, ...]
    n_neg: tuple[int, ...]

    def __post_init__(self) -> None:
        k = len(self.aucs)
        if k < 2 or len(self.n_pos) != k or len(self.n_neg) != k:
            raise ValueError(f"aucs, n_pos, n_neg need one entry per class (K >= 2), got {k}")
        if len(self.covariance) != k or any(len(row) != k for row in self.covariance):
            raise ValueError(f"covariance must be {k} x {k}")
        for a in self.aucs:
            if not (math.isnan(a) or 0.0 <= a <= 1.0):
                raise ValueError(f"each AUC must lie in [0, 1] or be NaN, got {a}")

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return len(self.aucs)

    @property
    def undefined(self) -> tuple[int, ...]:
        """Classes whose AUC is undefined (no positive or no negative)."""
        return tuple(k for k, a in enumerate(self.aucs) if math.isnan(a))

    @property
    def cov(self) -> np.ndarray:
        """The covariance as a (K, K) array."""
        return np.array(self.covariance, dtype=float)

    def per_class(self, k: int) -> AUCResult:
        """Class ``k``'s AUC as a binary :class:`AUCResult` (for ``.ci`` or pooling).

        Raises ``ValueError`` for a class without an AUC or without a variance.
        """
        return AUCResult(self.aucs[k], self.covariance[k][k], self.n_pos[k], self.n_neg[k])


def ovr_auc(labels: ArrayLike, probs: ArrayLike) -> OvRAUCResult:
    """OvR AUC of every class and their K x K DeLong covariance on the same cases.

    ``cov[k][k]`` equals ``delong_auc(labels == k, probs[:, k]).variance``; the
    off-diagonal follows the derivation in the module docstring. Raises
    ``ValueError`` when probs is not ``(N, K)`` with K >= 2, labels leave ``0..K-1``,
    or a value is NaN/Inf.
    """
    p = _scores(probs)
    y = _class_labels(labels, p.shape[1])
    if p.shape[0] != len(y):
        raise ValueError(f"probs has {p.shape[0]} rows (cases) but labels has {len(y)}")
    n_cases, n_classes = p.shape
    aucs = np.full(n_classes, np.nan)
    diag = np.full(n_classes, np.nan)
    comp = np.full((n_cases, n_classes), np.nan)  # c_k(i) of the module docstring
    m_all = np.bincount(y, minlength=n_classes)
    for k in range(n_classes):
        is_pos = y == k
        m, n = int(m_all[k]), n_cases - int(m_all[k])
        if m == 0 or n == 0:
            continue
        auc, v10, v01 = _placements(p[is_pos, k], p[~is_pos, k])
        aucs[k] = auc
        if m < 2 or n < 2:
            continue
        diag[k] = v10.var(ddof=1) / m + v01.var(ddof=1) / n  # exactly delong_auc's
        comp[is_pos, k] = (v10 - auc) / math.sqrt(m * (m - 1))
        comp[~is_pos, k] = (v01 - auc) / math.sqrt(n * (n - 1))
    cov = comp.T @ comp
    np.fill_diagonal(cov, diag)
    no_var = np.isnan(diag)  # also when N = 0, where the product above has no NaN to carry
    cov[no_var, :] = cov[:, no_var] = np.nan
    return OvRAUCResult(
        aucs=tuple(float(a) for a in aucs),
        covariance=tuple(tuple(float(v) for v in row) for row in cov),
        n_pos=tuple(int(v) for v in m_all),
        n_neg=tuple(n_cases - int(v) for v in m_all),
    )


@dataclass(frozen=True)
class MacroAUC:
    """Macro (unweighted) and prevalence-weighted means of the defined OvR AUCs.

    ``classes`` are the classes averaged, ``excluded`` those left out (undefined
    AUC). A variance is NaN when an averaged class has none (one positive or negative).
    """

    macro: float
    macro_variance: float
    macro_ci: tuple[float, float]
    weighted: float
    weighted_variance: float
    weighted_ci: tuple[float, float]
    classes: tuple[int, ...]
    excluded: tuple[int, ...]
    level: float


def _wald(est: float, var: float, level: float) -> tuple[float, float]:
    if math.isnan(var):
        return math.nan, math.nan
    half = z_crit(level) * math.sqrt(max(var, 0.0))
    return max(0.0, est - half), min(1.0, est + half)


def macro_auc(result: OvRAUCResult, level: float = 0.95) -> MacroAUC:
    """Macro and prevalence-weighted OvR AUC with variances and Wald CIs (module docstring).

    Equal to sklearn ``roc_auc_score(labels, probs, multi_class="ovr",
    average="macro" / "weighted")`` when every class is defined. Raises
    ``ValueError`` for K < 3 (two classes: use the binary statistics,
    :func:`common.stats.auc.delong_auc`) or when no class has a defined AUC.
    """
    lv = check_level(level)
    if result.n_classes < 3:
        raise ValueError(
            f"macro AUC needs K >= 3 classes, got K = {result.n_classes}: for two classes "
            "use the binary statistics (common.stats.delong_auc)"
        )
    excluded = result.undefined
    keep = [k for k in range(result.n_classes) if k not in excluded]
    if not keep:
        raise ValueError("no class has a defined AUC (each needs a positive and a negative)")
    a = np.array([result.aucs[k] for k in keep])
    sigma = result.cov[np.ix_(keep, keep)]
    ones = np.full(len(keep), 1.0 / len(keep))
    w = np.array([result.n_pos[k] for k in keep], dtype=float)
    w /= w.sum()
    macro, weighted = float(ones @ a), float(w @ a)
    var_macro, var_weighted = float(ones @ sigma @ ones), float(w @ sigma @ w)
    return MacroAUC(
        macro=macro,
        macro_variance=var_macro,
        macro_ci=_wald(macro, var_macro, lv),
        weighted=weighted,
        weighted_variance=var_weighted,
        weighted_ci=_wald(weighted, var_weighted, lv),
        classes=tuple(keep),
        excluded=excluded,
        level=lv,
    )


def ovr_pooled(
    per_site_aucs: ArrayLike,
    per_site_variances: ArrayLike,
    method: Method = "REML",
    hartung_knapp: bool = False,
    level: float = 0.95,
) -> tuple[PooledEstimate | None, ...]:
    """Random-effects pooling of each class's OvR AUC across sites.

    ``per_site_aucs`` and ``per_site_variances`` are ``(sites, K)``; class k is
    :func:`common.stats.meta.pool_auc` of the sites where its AUC and variance are
    defined (NaN marks a site without them), None if there is no such site.
    Raises ``ValueError`` on a shape mismatch, and as ``pool_auc`` does.
    """
    a = np.asarray(per_site_aucs, dtype=float)
    v = np.asarray(per_site_variances, dtype=float)
    if a.ndim != 2 or a.shape != v.shape:
        raise ValueError(
            f"per_site_aucs {a.shape} and per_site_variances {v.shape} must both be "
            "(sites, K) arrays of the same shape"
        )
    out: list[PooledEstimate | None] = []
    for k in range(a.shape[1]):
        ok = np.isfinite(a[:, k]) & np.isfinite(v[:, k])
        pairs = zip(a[ok, k], v[ok, k], strict=True)
        sites = [AUCResult(float(x), float(s), 0, 0) for x, s in pairs]
        out.append(pool_auc(sites, method, hartung_knapp, level) if sites else None)
    return tuple(out)
