"""One-vs-rest statistics for K-class classifiers (common.stats.multiclass).

References, named in each test:
- brute-force pairwise counts (every positive against every negative, ties 1/2)
  for the per-class AUCs and their macro / prevalence-weighted means: sklearn is
  not installed here, and ``roc_auc_score(..., multi_class="ovr", average=...)``
  is defined as exactly these means of binary OvR AUCs;
- :func:`common.stats.delong_auc` (checked against R pROC 1.18 in test_stats_auc.py)
  for the diagonal of the covariance;
- a brute-force case-level jackknife for the off-diagonal covariance;
- exact identities (A_1 = A_0 or A_1 = 1 - A_0 by construction) for its sign;
- a simulation with analytic AUCs for the coverage of the macro CI;
- :func:`common.stats.wilson_ci` (R ``prop.test(correct=FALSE)``) and hand values;
- :func:`common.stats.pool_auc` (R metafor, test_stats_meta.py) for the pooling.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from common.stats import AUCResult, delong_auc, pool_auc, wilson_ci
from common.stats.multiclass import macro_auc, ovr_auc, ovr_pooled
from common.stats.multiclass_counts import (
    argmax_rule,
    confusion_counts,
    confusion_matrix,
    per_class_accuracy,
    threshold_rule,
)

Z95 = 1.959963984540054


def brute_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC by counting all pairs, ties 1/2 (the definition sklearn computes)."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def brute_ovr(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.array([brute_auc(p[y == k, k], p[y != k, k]) for k in range(p.shape[1])])


def centred_scores(
    rng: np.random.Generator, shape: tuple[int, ...], n_classes: int, mu: float
) -> tuple[np.ndarray, np.ndarray]:
    """Labels uniform on 0..K-1 and scores ``s = x - mean_k(x)``, ``x ~ N(mu e_y, I_K)``.

    Column k: a class-k case has mean ``mu (1 - 1/K)``, a case of any other class
    ``-mu/K``, both with variance ``1 - 1/K``; so every OvR AUC is
    ``Phi(mu / sqrt(2 (K - 1) / K))``. Centring makes the columns compete, as a
    softmax does.
    """
    y = rng.integers(0, n_classes, size=shape)
    x = rng.standard_normal((*shape, n_classes)) + mu * (y[..., None] == np.arange(n_classes))
    return y, x - x.mean(axis=-1, keepdims=True)


# ---------------------------------------------------------------- AUCs and their means


def test_hand_computed_three_class_example() -> None:
    """Hand count, ties 1/2. Class 0: positives 0.6, 0.4 vs 0.3, 0.4, 0.2, 0.1 ->
    (4 + 3.5) / 8; class 1: 0.5, 0.2 vs 0.3, 0.4, 0.3, 0.6 -> 3 / 8; class 2:
    0.5, 0.3 vs 0.1, 0.2, 0.2, 0.4 -> 7 / 8. Equal prevalences: weighted = macro."""
    y = [0, 0, 1, 1, 2, 2]
    p = [
        [0.6, 0.3, 0.1],
        [0.4, 0.4, 0.2],
        [0.3, 0.5, 0.2],
        [0.4, 0.2, 0.4],
        [0.2, 0.3, 0.5],
        [0.1, 0.6, 0.3],
    ]
    res = ovr_auc(y, p)
    assert res.aucs == pytest.approx((7.5 / 8, 3 / 8, 7 / 8), abs=1e-15)
    assert (res.n_pos, res.n_neg) == ((2, 2, 2), (4, 4, 4))
    m = macro_auc(res)
    assert m.macro == pytest.approx((7.5 + 3 + 7) / 24, abs=1e-15)
    assert m.weighted == pytest.approx(m.macro, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aucs_and_means_equal_brute_force(seed: int) -> None:
    """Brute-force pair counts (sklearn's roc_auc_score(labels == k, probs[:, k]), and
    its multi_class="ovr" average="macro" / "weighted" = support-weighted mean).
    Scores rounded to 1 decimal so that ties occur; unequal class sizes."""
    rng = np.random.default_rng(seed)
    y = rng.choice(4, size=90, p=[0.4, 0.3, 0.2, 0.1])
    p = np.round(rng.dirichlet(np.ones(4), size=90) + 0.3 * np.eye(4)[y], 1)
    res = ovr_auc(y, p)
    expected = brute_ovr(y, p)
    assert np.array(res.aucs) == pytest.approx(expected, abs=1e-12)
    m = macro_auc(res)
    support = np.bincount(y, minlength=4)
    assert m.macro == pytest.approx(expected.mean(), abs=1e-12)
    assert m.weighted == pytest.approx(np.average(expected, weights=support), abs=1e-12)
    assert (m.classes, m.excluded) == ((0, 1, 2, 3), ())


@pytest.mark.parametrize("seed", [3, 4])
def test_diagonal_is_exactly_the_binary_delong_variance(seed: int) -> None:
    """delong_auc(labels == k, probs[:, k]) (pROC-checked), bit for bit, with ties."""
    rng = np.random.default_rng(seed)
    y, s = centred_scores(rng, (120,), 3, 1.0)
    s = np.round(s, 1)
    res = ovr_auc(y, s)
    for k in range(3):
        binary = delong_auc((y == k).astype(int), s[:, k])
        assert res.covariance[k][k] == binary.variance
        assert res.aucs[k] == binary.auc
        assert res.per_class(k) == binary


def test_macro_variance_and_ci_are_formed_as_the_binary_ci() -> None:
    """variance = 1' S 1 / K^2 and w' S w; CI as AUCResult.ci (Wald on the AUC scale,
    clipped to [0, 1], pROC ci.auc(method="delong")), at 95 % and 90 %."""
    rng = np.random.default_rng(5)
    y, s = centred_scores(rng, (200,), 3, 1.0)
    res = ovr_auc(y, s)
    cov = res.cov
    w = np.bincount(y, minlength=3) / len(y)
    for level in (0.95, 0.90):
        m = macro_auc(res, level)
        assert m.macro_variance == pytest.approx(cov.sum() / 9, rel=1e-12)
        assert m.weighted_variance == pytest.approx(w @ cov @ w, rel=1e-12)
        assert m.macro_ci == AUCResult(m.macro, m.macro_variance, 0, 0).ci(level)
        assert m.weighted_ci == AUCResult(m.weighted, m.weighted_variance, 0, 0).ci(level)
    half = Z95 * math.sqrt(cov.sum() / 9)
    assert macro_auc(res).macro_ci == pytest.approx((m.macro - half, m.macro + half), abs=1e-12)


def test_undefined_class_is_named_and_left_out_of_the_means() -> None:
    """Class 3 has no positive: its AUC is NaN, listed in ``undefined`` / ``excluded``,
    and the means are those of classes 0..2 (brute force)."""
    rng = np.random.default_rng(6)
    y, s3 = centred_scores(rng, (60,), 3, 1.0)
    s = np.column_stack([s3, rng.standard_normal(60)])
    res = ovr_auc(y, s)
    assert math.isnan(res.aucs[3]) and res.undefined == (3,)
    assert all(math.isnan(v) for v in res.covariance[3])
    m = macro_auc(res)
    assert (m.classes, m.excluded) == ((0, 1, 2), (3,))
    expected = brute_ovr(y, s3)
    assert m.macro == pytest.approx(expected.mean(), abs=1e-12)
    assert m.macro_variance == pytest.approx(res.cov[:3, :3].sum() / 9, rel=1e-12)


def test_single_positive_has_an_auc_but_no_variance() -> None:
    """As delong_auc (which refuses fewer than 2 positives): class 1 has one case, so
    its AUC (brute force) is reported, its covariance row is NaN, and so are the macro
    variance and CI; the means themselves still average all three classes."""
    y = np.array([0, 0, 0, 1, 2, 2, 2])
    p = np.random.default_rng(10).random((7, 3))
    res = ovr_auc(y, p)
    assert np.array(res.aucs) == pytest.approx(brute_ovr(y, p), abs=1e-12)
    assert np.isnan(res.cov[1]).all() and np.isnan(res.cov[:, 1]).all()
    assert not np.isnan(res.cov[np.ix_([0, 2], [0, 2])]).any()
    m = macro_auc(res)
    assert m.classes == (0, 1, 2) and m.macro == pytest.approx(np.mean(res.aucs), abs=1e-15)
    assert math.isnan(m.macro_variance) and all(math.isnan(v) for v in m.macro_ci)
    with pytest.raises(ValueError, match="variance"):
        res.per_class(1)


# ---------------------------------------------------------------- covariance


def test_off_diagonal_covariance_equals_the_jackknife() -> None:
    """Case-level jackknife: AUCs recomputed by brute force with each case left out,
    ``J = (N-1)/N sum_i (A_(-i) - mean)(A_(-i) - mean)'``.

    Tolerance, derived: leaving out a case of group size g (m_k or n_k) moves A_k by
    ``(A_k - phi_k(i)) / (g - 1)`` and these deviations sum to 0, so J's case-i term is
    the DeLong term times ``r_i = (N-1)/N sqrt(g_k g_l / ((g_k - 1)(g_l - 1)))``. Hence
    ``|J_kl - S_kl| <= eps sqrt(S_kk S_ll)`` (Cauchy-Schwarz on the Gram form) with
    ``eps = max|r_i - 1| <= max(1/N, (N-1)/N g/(g-1) - 1)``, g the smallest group:
    0.84 % here (N = 450, smallest class 95). Unequal class means per column make the
    negatives of a class a mixture of differently ranked classes, so the estimator must
    carry the between-class part (centring each negative class on its own mean, as if
    class counts were fixed, misses entry (0, 2) by 2.2 % of sd_0 sd_2).
    """
    rng = np.random.default_rng(7)
    means = np.array([[1.5, 0.0, 0.0], [0.0, 1.0, 0.8], [0.8, 0.0, 1.0]])
    y = rng.choice(3, size=450, p=[0.45, 0.35, 0.2])
    x = rng.standard_normal((450, 3)) + means[y]
    s = x - x.mean(axis=1, keepdims=True)
    n = len(y)
    res = ovr_auc(y, s)
    loo = np.array([brute_ovr(y[np.arange(n) != i], s[np.arange(n) != i]) for i in range(n)])
    dev = loo - loo.mean(axis=0)
    jack = (n - 1) / n * dev.T @ dev
    g = min(min(res.n_pos), min(res.n_neg))
    eps = max(1 / n, (n - 1) / n * g / (g - 1) - 1)
    sd = np.sqrt(np.diag(res.cov))
    bound = eps * np.outer(sd, sd) + 1e-15
    assert np.all(np.abs(jack - res.cov) <= bound)
    off = ~np.eye(3, dtype=bool)
    assert np.all(res.cov[off] > 0.1 * np.outer(sd, sd)[off])  # clearly non-zero, not noise
    # the macro variance too: |1'(J - S)1| <= eps (1' sd)^2
    assert abs(jack.sum() - res.cov.sum()) <= eps * sd.sum() ** 2


def test_covariance_sign_on_constructed_cases() -> None:
    """Exact identities, class 2 absent (so classes 0 and 1 are each other's negatives).

    - ``probs[:, 1] = 1 - probs[:, 0]``: ranking by column 1 reverses column 0, so
      ``A_1 = A_0`` on every sample: cov = +var (correlation +1).
    - ``probs[:, 1] = probs[:, 0]``: ``A_1 = 1 - A_0`` on every sample: cov = -var.
    Then centred scores: a confident case of class k is both a high positive of k and a
    low negative of l, so every case pushes A_k and A_l the same way: cov > 0.
    """
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, size=80)
    p0 = np.round(rng.random(80) * 0.5 + 0.3 * y, 2)
    mirror = ovr_auc(y, np.column_stack([p0, 1 - p0, np.zeros(80)]))
    var = mirror.covariance[0][0]
    assert mirror.aucs[1] == pytest.approx(mirror.aucs[0], abs=1e-15)
    assert mirror.covariance[0][1] == pytest.approx(var, rel=1e-12)
    assert mirror.covariance[1][1] == pytest.approx(var, rel=1e-12)
    shared = ovr_auc(y, np.column_stack([p0, p0, np.zeros(80)]))
    assert shared.aucs[1] == pytest.approx(1 - shared.aucs[0], abs=1e-15)
    assert shared.covariance[0][1] == pytest.approx(-shared.covariance[0][0], rel=1e-12)
    assert mirror.undefined == shared.undefined == (2,)

    y3, s3 = centred_scores(rng, (300,), 3, 1.0)
    cov = ovr_auc(y3, s3).cov
    assert np.all(cov[~np.eye(3, dtype=bool)] > 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(3, 5), st.integers(12, 60))
def test_covariance_is_symmetric_positive_semidefinite(seed: int, k: int, n: int) -> None:
    """Invariant of the Gram form C'C (and AUCs = brute force, ties on a coarse grid)."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.repeat(np.arange(k), 2), rng.integers(0, k, n)])
    p = np.round(rng.random((len(y), k)), 1)
    res = ovr_auc(y, p)
    cov = res.cov
    assert np.array_equal(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() >= -1e-12 * max(np.trace(cov), 1e-300)
    assert np.array(res.aucs) == pytest.approx(brute_ovr(y, p), abs=1e-12)


def test_macro_ci_coverage_by_simulation() -> None:
    """Coverage of the 95 % macro CI against a known macro AUC (``centred_scores``).

    K = 3, mu = 1: every OvR AUC, hence the macro AUC, is
    ``Phi(1 / sqrt(4/3)) = 0.8068``. 400 replicates of N = 150 (labels drawn per
    case). The full CI must cover 92-98 % (observed 94.75 % with this seed; 3000
    replicates gave 94.3 %, the usual slight shortfall of a Wald AUC interval at
    N = 150). The naive CI, ``sum_k var_k / K^2`` (covariances ignored), must
    under-cover: centring makes the OvR AUCs co-vary positively (about +0.23
    correlation), so ``1' S 1 > trace S`` and the naive interval is narrower in
    (nearly) every replicate (observed 89.0 %, narrower in 400 of 400; 3000
    replicates gave 88.7 %). The two intervals share their centre, so the 23
    replicates covered by one only are all covered by the full CI (sign test p = 2^-23).
    """
    true = float(norm.cdf(1.0 / math.sqrt(4 / 3)))
    rng = np.random.default_rng(2024)
    ys, ss = centred_scores(rng, (400, 150), 3, 1.0)
    full = naive = narrower = 0
    for y, s in zip(ys, ss, strict=True):
        res = ovr_auc(y, s)
        m = macro_auc(res)
        full += m.macro_ci[0] <= true <= m.macro_ci[1]
        naive_var = float(np.trace(res.cov)) / 9
        naive += abs(m.macro - true) <= Z95 * math.sqrt(naive_var)
        narrower += naive_var < m.macro_variance
    assert 0.92 <= full / 400 <= 0.98
    assert naive / 400 <= full / 400 - 0.03
    assert narrower >= 0.95 * 400


# ---------------------------------------------------------------- pooling


def test_ovr_pooled_equals_pool_auc_class_by_class() -> None:
    """common.stats.pool_auc (metafor-checked) on each class's site AUCs; a NaN
    (class undefined at that site) leaves the site out of that class only."""
    rng = np.random.default_rng(9)
    designs = [(80, 0.8), (120, 1.2), (60, 1.0), (100, 0.6)]
    sites = [ovr_auc(*centred_scores(rng, (n,), 3, mu)) for n, mu in designs]
    aucs = np.array([r.aucs for r in sites])
    variances = np.array([np.diag(r.cov) for r in sites])
    aucs[2, 1] = variances[2, 1] = np.nan
    for method in ("REML", "DL"):
        pooled = ovr_pooled(aucs, variances, method)
        for k in range(3):
            keep = [i for i in range(4) if not (k == 1 and i == 2)]
            ref = pool_auc([AUCResult(aucs[i, k], variances[i, k], 0, 0) for i in keep], method)
            got = pooled[k]
            assert got is not None
            assert got.estimate == ref.estimate and got.ci == ref.ci
            assert got.logit.tau2 == ref.logit.tau2 and got.logit.k == len(keep)
    aucs[:, 0] = np.nan
    assert ovr_pooled(aucs, variances)[0] is None


# ---------------------------------------------------------------- decision rules, counts


def test_argmax_and_threshold_rules_on_hand_made_inputs() -> None:
    """Hand-made: thresholds (0.5, 0.3, 0.2)."""
    p = np.array(
        [
            [0.6, 0.3, 0.1],  # argmax 0; above: 0 and 1 -> larger score: 0
            [0.4, 0.35, 0.25],  # argmax 0; above: 1, 2 -> larger score: 1
            [0.45, 0.25, 0.3],  # argmax 0; above: 2 only -> 2
            [0.45, 0.29, 0.19],  # argmax 0; none above -> argmax over all: 0
            [0.4, 0.4, 0.2],  # argmax tie 0/1 -> lowest index 0; above: 1, 2 -> 1
            [0.2, 0.4, 0.4],  # above: 1, 2 with equal scores -> lowest index 1
            [0.1, 0.48, 0.42],  # above: 1, 2 -> larger score 1 (not larger margin, 2)
        ]
    )
    assert argmax_rule(p).tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert threshold_rule(p, [0.5, 0.3, 0.2]).tolist() == [0, 1, 2, 0, 1, 1, 1]


def test_confusion_matrix_small_cell_rule() -> None:
    """min_cell 5: a cell of 3 is None, a cell of 0 stays 0 (docs/privacy.md: an empty
    cell discloses nothing), a cell of 5 shows; rows true, columns predicted."""
    full = np.array([[5, 3, 0], [0, 7, 1], [2, 0, 9]])
    y = np.repeat(np.repeat(np.arange(3), 3), full.ravel())
    yhat = np.repeat(np.tile(np.arange(3), 3), full.ravel())
    assert confusion_counts(y, yhat, 3).tolist() == full.tolist()
    cm = confusion_matrix(y, yhat, 3, min_cell=5)
    assert cm.counts == ((5, None, 0), (0, 7, None), (None, 0, 9))
    assert cm.suppressed and cm.min_cell == 5
    shown = confusion_matrix(y, yhat, 3, min_cell=1)
    assert shown.counts == tuple(tuple(r) for r in full.tolist()) and not shown.suppressed


def test_per_class_sensitivity_specificity_with_wilson() -> None:
    """Class 0: 8 of its 10 cases predicted 0; 27 of the 30 others not predicted 0.
    Hand-computed Wilson 95 % for 8/10: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10)
    = 0.7168, half-width 0.2266 -> [0.490, 0.943]; both equal wilson_ci (prop.test)."""
    counts = np.array([[8, 1, 1], [2, 15, 3], [1, 2, 7]])
    acc = per_class_accuracy(counts)
    c0 = acc[0]
    assert (c0.n_pos, c0.n_neg) == (10, 30)
    assert c0.sensitivity.value == 0.8
    assert (c0.sensitivity.lo, c0.sensitivity.hi) == pytest.approx((0.490, 0.943), abs=5e-4)
    assert c0.specificity == (0.9, *wilson_ci(27, 30))
    assert acc[1].sensitivity == (0.75, *wilson_ci(15, 20))
    assert acc[1].specificity == (17 / 20, *wilson_ci(17, 20))  # 20 others, 3 predicted 1
    assert acc[2].specificity == (26 / 30, *wilson_ci(26, 30, 0.95))
    lo90 = per_class_accuracy(counts, 0.90)[0].sensitivity
    assert (lo90.lo, lo90.hi) == wilson_ci(8, 10, 0.90)


# ---------------------------------------------------------------- bad input


def test_bad_input_names_what_is_wrong() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.full((6, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"probs has 5 rows .* labels has 6"):
        ovr_auc(y, p[:5])
    with pytest.raises(ValueError, match=r"probs must be 2-D"):
        ovr_auc(y, p[:, 0])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2 .* got \[3\]"):
        ovr_auc([0, 1, 2, 3, 1, 2], p)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2 .* got \[-1\]"):
        confusion_matrix([0, 1, -1], [0, 1, 2], 3, 5)
    with pytest.raises(ValueError, match=r"predicted must lie in 0\.\.2"):
        confusion_counts([0, 1, 2], [0, 1, 5], 3)
    with pytest.raises(ValueError, match=r"integer class indices"):
        ovr_auc([0, 1, 2, 0.5, 1, 2], p)
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        ovr_auc(y, np.where(np.eye(6, 3, dtype=bool), np.nan, p))
    two = ovr_auc([0, 0, 1, 1], [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    with pytest.raises(ValueError, match=r"K = 2: .*use the binary statistics"):
        macro_auc(two)
    with pytest.raises(ValueError, match=r"thresholds must be 3 finite values"):
        threshold_rule(p, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"same shape"):
        ovr_pooled(np.ones((2, 3)) / 2, np.ones((2, 2)))
