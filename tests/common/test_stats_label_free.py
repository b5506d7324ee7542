"""Performance estimated without labels from calibrated probabilities
(``common.stats.label_free``).

References: the expected-count ratios are checked by hand on a three-case example and
by brute-force enumeration of every label set of six cases (the exact expectation the
ratio estimator approximates); the AUC against NannyML CBPE's construction (the
trapezoidal area under the expected ROC curve, self-pairs included) to which it
converges; the intervals by simulation with labels drawn from the probabilities.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.stats.label_free import expected_auc, expected_rates, label_free_performance


def test_hand_computed_three_cases() -> None:
    """p = 0.9, 0.6, 0.2. Pairs (i malignant, j benign, i != j), weight p_i (1 - p_j):
    ranked right: (0.9,0.6) 0.36, (0.9,0.2) 0.72, (0.6,0.2) 0.48 -> 1.56; ranked
    wrong: (0.6,0.9) 0.06, (0.2,0.9) 0.02, (0.2,0.6) 0.08 -> 0.16; AUC 1.56 / 1.72.
    At t = 0.5: sensitivity (0.9 + 0.6) / 1.7, specificity 0.8 / 1.3."""
    p = [0.9, 0.6, 0.2]
    assert expected_auc(p) == pytest.approx(1.56 / 1.72, abs=1e-12)
    sens, spec, prev = expected_rates(p, 0.5)
    assert (sens, spec, prev) == pytest.approx((1.5 / 1.7, 0.8 / 1.3, 1.7 / 3), abs=1e-12)


def test_ties_count_half_and_the_case_itself_is_never_its_own_pair() -> None:
    """Two cases with the same score: the pair counts 1/2 whichever is malignant."""
    assert expected_auc([0.5, 0.5]) == pytest.approx(0.5)
    p = np.array([0.3, 0.3, 0.8, 0.1])
    brute_num = brute_den = 0.0
    for i, j in itertools.permutations(range(4), 2):
        w = p[i] * (1 - p[j])
        brute_den += w
        brute_num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    assert expected_auc(p) == pytest.approx(brute_num / brute_den, abs=1e-12)
    # scores other than the probabilities rank the cases
    assert expected_auc([0.9, 0.6, 0.2], scores=[1, 2, 3]) == pytest.approx(0.16 / 1.72)


def test_the_ratios_match_the_exact_expectation_over_every_label_set() -> None:
    """Six cases: enumerate all 64 label sets with their probabilities; the ratio of
    expected counts equals E[TP] / E[n_pos] exactly, and E[AUC | both classes] is close
    to the ratio of expectations (they differ by the correlation of numerator and
    denominator: here by less than 0.01)."""
    p = np.array([0.95, 0.8, 0.55, 0.4, 0.15, 0.05])
    e_tp = e_pos = e_auc = w_both = 0.0
    for bits in itertools.product([0, 1], repeat=6):
        y = np.array(bits)
        w = float(np.prod(np.where(y == 1, p, 1 - p)))
        e_tp += w * int(((p >= 0.5) & (y == 1)).sum())
        e_pos += w * int(y.sum())
        if 0 < y.sum() < 6:
            pos, neg = p[y == 1], p[y == 0]
            auc = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
            e_auc += w * auc
            w_both += w
    sens, _, prev = expected_rates(p, 0.5)
    assert sens == pytest.approx(e_tp / e_pos, abs=1e-12)
    assert prev == pytest.approx(e_pos / 6, abs=1e-12)
    assert expected_auc(p) == pytest.approx(e_auc / w_both, abs=0.01)


def test_large_samples_agree_with_the_trapezoid_of_the_expected_roc_curve() -> None:
    """CBPE's area (self-pairs included as ties) differs by O(1/n): below 0.002 at n =
    2000, and the self-pair correction accounts for the difference exactly."""
    rng = np.random.default_rng(11)
    p = rng.beta(2, 3, 2000)
    order = np.argsort(-p)
    tpr = np.concatenate([[0], np.cumsum(p[order]) / p.sum()])
    fpr = np.concatenate([[0], np.cumsum(1 - p[order]) / (1 - p).sum()])
    trapezoid = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ours = expected_auc(p)
    assert abs(ours - trapezoid) < 0.002
    pairs_all = p.sum() * (1 - p).sum()
    self_pairs = float(np.sum(p * (1 - p)))
    assert trapezoid * pairs_all - 0.5 * self_pairs == pytest.approx(
        ours * (pairs_all - self_pairs), rel=1e-9
    )


def test_the_interval_covers_the_realised_figures_of_a_calibrated_model() -> None:
    """Labels drawn from the probabilities (a calibrated model, the stated assumption):
    the realised AUC, sensitivity and specificity fall inside the 95 % interval in
    93-97 % of 300 replicates of 150 cases each."""
    rng = np.random.default_rng(5)
    hits = np.zeros(3)
    reps = 300
    for r in range(reps):
        p = rng.beta(1.2, 2.0, 150)
        est = label_free_performance(p, 0.35, draws=400, seed=r)
        y = rng.random(150) < p
        pos, neg = p[y], p[~y]
        auc = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
        sens = np.mean(pos >= 0.35)
        spec = np.mean(neg < 0.35)
        for k, (value, e) in enumerate(
            [(auc, est.auc), (sens, est.sensitivity), (spec, est.specificity)]
        ):
            hits[k] += e.lo <= value <= e.hi
    coverage = hits / reps
    assert ((coverage >= 0.93) & (coverage <= 0.97)).all(), coverage


def test_a_miscalibrated_model_is_estimated_wrongly_which_is_why_drift_is_watched() -> None:
    """Probabilities twice as confident as the truth (logit doubled): the label-free AUC
    overstates the realised one, outside its interval: the method's stated limit."""
    rng = np.random.default_rng(9)
    true = 1 / (1 + np.exp(-rng.normal(0, 1, 3000)))
    shown = 1 / (1 + np.exp(-2 * np.log(true / (1 - true))))
    est = label_free_performance(shown, 0.5, draws=200)
    y = rng.random(3000) < true
    pos, neg = shown[y], shown[~y]
    realised = np.mean(pos[:, None] > neg[None, :])
    assert est.auc.value > realised + 0.05 and est.auc.lo > realised


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="at least 2 cases"):
        expected_auc([0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        expected_rates([0.5, 1.2], 0.5)
    with pytest.raises(ValueError, match="threshold must be in"):
        label_free_performance([0.2, 0.7], 1.0)
    with pytest.raises(ValueError, match="draws must be at least 100"):
        label_free_performance([0.2, 0.7], 0.5, draws=10)
    with pytest.raises(ValueError, match="scores has 2 values for 3"):
        expected_auc([0.1, 0.2, 0.3], scores=[1, 2])
