"""What a site computes about one monitoring window: a frozen model's outputs on the
cases it acquired in that window, reduced to aggregates under its small-cell rule.

Monitoring a deployed model (issue 15) runs the model over the cases of each time window
(``common.dates.cases_in_window``); a case's label counts only if it was known on the
window's as-of date (``common.dates.labelled_by``), and the caller passes NaN for the
others. ``window_summary`` turns the model's probabilities (and optionally its inputs and
projected embeddings) into a ``WindowSummary``. Nothing per case leaves: every list has a
length fixed by the run config (``eval.*``), never by the number of cases.

The numbers, all over the window's ``n`` cases unless said otherwise:

- ``n``, ``n_labelled`` (labels known as of the as-of date) and, only with the actual
  figures below, ``n_labelled_pos`` (0 and not sent otherwise: a few labelled cases, or
  too few of one class, would show their labels);
  ``insufficient`` when ``n < eval.min-cases`` (or ``n < 2``): then only these counts
  and the flags are sent;
- ``score_count``: cases per equal-width probability bin (``eval.calibration-bins`` over
  [0, 1]), each bin of fewer than ``min_cell`` cases merged into its neighbours and the
  group's count put in its fullest bin (``small_cell_groups`` / ``pool_cells``, as the
  count row of ``client.evaluation.small_cell_calibration``): the counts sum to ``n``;
- ``hist_counts``, ``emb_mean``, ``emb_cov``: the model input's intensity histograms and
  the embedding's mean and covariance (``client.evaluation.intensity_histograms`` /
  ``embedding_moments``), as in an evaluation summary, when the caller passes them;
- ``est_auc``, ``est_sens``, ``est_spec`` (at ``threshold``; called malignant when
  p >= threshold) with their ``_lo`` / ``_hi`` interval at ``level`` (``eval.level``):
  the label-free estimate (``common.stats.label_free.label_free_performance``) on *all*
  the window's cases, labels unused. It assumes the probabilities are calibrated on these
  cases (each label a Bernoulli draw with its probability): the recalibration chosen on
  validation data (``eval.recalibration``) must be applied by the caller before. The
  interval is where the realised figure falls *if* that holds; it does not cover a
  broken calibration, which is what the drift figures above are watched for. A figure
  that cannot be estimated (every probability 0 or 1) is None and not sent;
- on the labelled cases only, when they are at least ``eval.min-cases`` with at least
  ``eval.min-per-class`` of each class (``client.evaluation.sufficient``): ``auc`` with
  its DeLong variance ``auc_var`` (``common.stats.delong_auc``) and the 2x2 table at
  ``threshold`` (``tp``, ``fp``, ``fn``, ``tn``); otherwise ``actual_insufficient``.

``WindowSummary.to_record`` / ``from_record`` are its encoding (numbers and lists of
numbers, a Flower ``MetricRecord``'s content), exact both ways.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from client.evaluation import embedding_moments, intensity_histograms, sufficient
from common.config_sections import EvalConfig
from common.stats import delong_auc
from common.stats.label_free import label_free_performance
from common.summary import pool_cells, small_cell_groups
from common.window_summary import WindowSummary

LABEL_FREE_DRAWS = 2000  # label sets drawn for the label-free intervals (parametric bootstrap)


def _finite(value: float) -> float | None:
    """None for a figure that cannot be estimated (nan), so it is left out of the record."""
    return float(value) if math.isfinite(value) else None


def _inputs(
    probs: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities and labels as flat float arrays, checked (named errors)."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=float)
    if p.ndim != 1 or y.shape != p.shape:
        raise ValueError(
            f"probs and labels must be 1-d arrays of the same length, got shapes "
            f"{p.shape} and {y.shape}"
        )
    if not np.isfinite(p).all() or (p.size and (p.min() < 0 or p.max() > 1)):
        raise ValueError("probs must be finite and in [0, 1]")
    known = y[np.isfinite(y)]
    if np.isinf(y).any() or not np.isin(known, (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN (not known as of the window's date)")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return p, y


def score_counts(p: np.ndarray, n_bins: int, min_cell: int) -> tuple[int, ...]:
    """Cases per equal-width probability bin over [0, 1], bins of fewer than ``min_cell``
    cases merged with their neighbours (the count row of ``small_cell_calibration``)."""
    idx = np.minimum(np.floor(p * n_bins).astype(int), n_bins - 1)  # calibration_bins' rule
    counts = np.bincount(idx, minlength=n_bins).astype(float)
    present = np.zeros((len(p), n_bins), dtype=bool)
    present[np.arange(len(p)), idx] = True
    pooled = pool_cells(counts[None, :], small_cell_groups(present, min_cell), counts)[0]
    return tuple(round(v) for v in pooled)


def _label_free(
    p: np.ndarray, threshold: float, level: float, seed: int, draws: int
) -> dict[str, Any]:
    """The label-free fields: expected figures and their intervals (None: not estimable)."""
    est = label_free_performance(p, threshold, level=level, draws=draws, seed=seed)
    out: dict[str, Any] = {"level": level}
    for name, e in (("auc", est.auc), ("sens", est.sensitivity), ("spec", est.specificity)):
        out[f"est_{name}"] = _finite(e.value)
        out[f"est_{name}_lo"] = _finite(e.lo)
        out[f"est_{name}_hi"] = _finite(e.hi)
    return out


def _actual(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC with DeLong variance and the 2x2 table at ``threshold`` on labelled cases."""
    auc = delong_auc(y, p)
    called = p >= threshold
    return {
        "actual_insufficient": False,
        "auc": auc.auc,
        "auc_var": auc.variance,
        "tp": int((called & (y == 1)).sum()),
        "fp": int((called & (y == 0)).sum()),
        "fn": int((~called & (y == 1)).sum()),
        "tn": int((~called & (y == 0)).sum()),
    }


def window_summary(
    probs: np.ndarray,
    labels: np.ndarray,
    ev: EvalConfig,
    threshold: float,
    images: torch.Tensor | None,
    embedding: np.ndarray | None,
    min_cell: int,
    rng_seed: int,
    *,
    draws: int = LABEL_FREE_DRAWS,
) -> WindowSummary:
    """The window's aggregates (module docstring) from the model's probabilities of its
    ``N`` cases, their labels (NaN where not known as of the as-of date), the model inputs
    and projected embeddings of the same cases (or None), the site's ``min_cell`` and the
    seed of the label-free intervals."""
    p, y = _inputs(probs, labels, threshold)
    n = len(p)
    for name, arr in (("images", images), ("embedding", embedding)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} cases for {n} probabilities")
    known = np.isfinite(y)
    y_known = y[known].astype(int)
    n_labelled, n_pos = int(known.sum()), int(y_known.sum())
    # the labelled cases' class counts go out only with the actual figures: a few labelled
    # cases, or too few of one class, would show their labels
    counts: dict[str, Any] = {"n": n, "n_labelled": n_labelled}
    if n < max(ev.min_cases, 2):  # the label-free estimate needs two cases
        return WindowSummary(**counts, insufficient=True)
    actual: dict[str, Any] = {}
    n_neg = n_labelled - n_pos
    if sufficient(n_pos, n_neg, ev) and min(n_pos, n_neg) >= 2:  # DeLong needs 2 per class
        actual = {**_actual(y_known, p[known], threshold), "n_labelled_pos": n_pos}
    mean, cov = embedding_moments(embedding)
    hist = intensity_histograms(images, ev.histogram_bins, min_cell) if images is not None else ()
    return WindowSummary(
        **counts,
        **actual,
        **_label_free(p, threshold, ev.level, rng_seed, draws),
        threshold=float(threshold),
        score_count=score_counts(p, ev.calibration_bins, min_cell),
        hist_counts=hist,
        emb_mean=mean,
        emb_cov=cov,
    )
