"""Statistics for site-level performance: a documented public API of pure functions.

Every number equals a named reference implementation (R pROC 1.18, R metafor 3.8,
R ``stats``, scipy, MONAI); the module docstrings give the formulas. Functions
take plain sequences/arrays, return frozen dataclasses or floats, never mutate
their input, and raise ``ValueError`` with a clear message on bad input (length
mismatch, labels other than 0/1, NaN/Inf, negative variances or counts, k = 0).
Many work from site summaries only, so a server never needs per-case data.

AUC and ROC (:mod:`common.stats.auc`, :mod:`common.stats.roc`), pROC ``direction="<"``:

- ``delong_auc(y_true, y_score) -> AUCResult``: AUC (ties 1/2) with DeLong variance.
- ``AUCResult(auc, variance, n_pos, n_neg)``: also built from a site's summary;
  ``.se``, ``.ci(level=0.95)`` (Wald, clipped to [0, 1], pROC ``ci.auc(method="delong")``).
- ``delong_test(y_true, score_a, score_b) -> DeLongTestResult``: paired test
  (``.z``, ``.p``, ``.difference``, ``.ci(level)``), pROC ``roc.test(paired=TRUE)``.
- ``compare_auc(a, b) -> AUCComparison``: unpaired test of two AUCResults
  (``.statistic`` = ``.z`` = D, ``.df`` Welch-Satterthwaite as pROC, ``.p``).
- ``roc_at_fpr(y_true, y_score, fpr_grid=DEFAULT_FPR_GRID) -> RocGrid``:
  sensitivity at fixed false-positive rates (step interpolation).

Proportions (:mod:`common.stats.proportions`):

- ``wilson_ci(k, n, level=0.95) -> (lo, hi)``: ``prop.test(correct=FALSE)``.
- ``diagnostic_accuracy(tp, fp, fn, tn, level=0.95) -> DiagnosticAccuracy``:
  sensitivity, specificity, PPV, NPV (Wilson), LR+, LR- (Simel log method), DOR
  (Woolf) as ``Estimate(value, lo, hi)``; Haldane-Anscombe 0.5 for LR/DOR on a zero cell.

Meta-analysis (:mod:`common.stats.meta`), metafor ``rma()`` + ``predict()``:

- ``random_effects(estimates, variances, method="REML"|"DL"|"PM", hartung_knapp=False,
  level=0.95) -> MetaResult`` (``.estimate``, ``.se``, ``.ci``, ``.tau2``, ``.i2`` (%),
  ``.h2``, ``.q``, ``.q_p``, ``.prediction_interval``, ``.statistic``, ``.p``, ``.weights``).
- ``pool_auc(aucs, ...)`` and ``pool_proportions(events, totals, ..., correction=0.5)
  -> PooledEstimate``: logit-scale pooling, back-transformed estimate/CI/PI.

Calibration (:mod:`common.stats.calibration`):

- ``calibration_glm(y_true, y_prob) -> CalibrationFit``: slope, intercept and
  calibration-in-the-large with GLM standard errors (R ``glm``), computed at a site;
  ``pool_calibration(fits, ...) -> PooledCalibration`` on the server.
- ``brier_score``, ``expected_calibration_error(y_true, y_prob, n_bins=10)``.
- Summary form: ``calibration_bins(y_true, y_prob, n_bins=10) -> CalibrationBins``,
  ``merge_bins(bins)``, ``ece_from_bins``, ``brier_from_bins``,
  ``reliability_from_bins -> Reliability``.

Segmentation (:mod:`common.stats.segmentation`):

- ``dice_coefficient(pred, truth)``, ``dice_summary(values, level=0.95) -> DiceSummary``
  (mean, sd, n, t interval, median, quartiles), ``hd95(pred, truth, spacing=None)`` (MONAI).

Drift (:mod:`common.stats.drift`):

- ``fixed_histogram(values, bin_edges)``, ``wasserstein_1(counts_a, counts_b, bin_edges)``,
  ``frechet_distance(mu_a, cov_a, mu_b, cov_b)``,
  ``population_stability_index(counts_a, counts_b, eps=1e-4)``.

Training noise (:mod:`common.stats.seeds`), Rubin's (1987) combining rules:

- ``combine_seeds(estimates, variances) -> SeedCombined``: one figure from several
  training seeds on the same test cases: mean, within (test-sampling) and between-seed
  variance, ``.ci(level)`` with Satterthwaite df, Rubin's ``.new_run_variance``.
"""

from common.stats.auc import (
    AUCComparison,
    AUCResult,
    DeLongTestResult,
    compare_auc,
    delong_auc,
    delong_test,
)
from common.stats.calibration import (
    CalibrationBins,
    CalibrationFit,
    PooledCalibration,
    Reliability,
    brier_from_bins,
    brier_score,
    calibration_bins,
    calibration_glm,
    ece_from_bins,
    expected_calibration_error,
    merge_bins,
    pool_calibration,
    reliability_from_bins,
)
from common.stats.drift import (
    fixed_histogram,
    frechet_distance,
    population_stability_index,
    wasserstein_1,
)
from common.stats.meta import (
    MetaResult,
    PooledEstimate,
    pool_auc,
    pool_proportions,
    random_effects,
)
from common.stats.proportions import (
    DiagnosticAccuracy,
    Estimate,
    diagnostic_accuracy,
    wilson_ci,
)
from common.stats.roc import DEFAULT_FPR_GRID, RocGrid, roc_at_fpr
from common.stats.seeds import SeedCombined, combine_seeds
from common.stats.segmentation import DiceSummary, dice_coefficient, dice_summary, hd95

__all__ = [
    "DEFAULT_FPR_GRID",
    "AUCComparison",
    "AUCResult",
    "CalibrationBins",
    "CalibrationFit",
    "DeLongTestResult",
    "DiagnosticAccuracy",
    "DiceSummary",
    "Estimate",
    "MetaResult",
    "PooledCalibration",
    "PooledEstimate",
    "Reliability",
    "RocGrid",
    "SeedCombined",
    "brier_from_bins",
    "brier_score",
    "calibration_bins",
    "calibration_glm",
    "combine_seeds",
    "compare_auc",
    "delong_auc",
    "delong_test",
    "diagnostic_accuracy",
    "dice_coefficient",
    "dice_summary",
    "ece_from_bins",
    "expected_calibration_error",
    "fixed_histogram",
    "frechet_distance",
    "hd95",
    "merge_bins",
    "pool_auc",
    "pool_calibration",
    "pool_proportions",
    "population_stability_index",
    "random_effects",
    "reliability_from_bins",
    "roc_at_fpr",
    "wasserstein_1",
    "wilson_ci",
]
