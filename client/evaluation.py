"""Site-side evaluation: a model's predictions on local cases -> a ``SiteSummary``.

Per-case probabilities, labels, masks and embeddings exist only inside these
functions; what they return is the aggregate summary of ``common.summary``.
The ClientApp, the local-only and the pooled baselines all evaluate through
``summarize``, so every number in a report is computed the same way.

The small-cell rule (``min_cell``, the site's ``policy.min-cell`` = k): calibration
bins and intensity-histogram bins holding fewer than k cases are merged with their
neighbours (``common.summary.small_cell_groups``), and the ROC grid moves in steps of
k negatives and k positives (``coarse_rates``). With ``eval.saliency``, a classification
summary adds the Grad-CAM shares of ``client.explain``, over at least k cases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance
from torch import nn

from client.explain import saliency_fields
from client.policy import simulated_policy
from common.badcases import listed
from common.config import RunConfig
from common.config_sections import EvalConfig
from common.data import SplitTensors
from common.device import Compute
from common.keys import Task
from common.recalibration import apply_recalibration
from common.stats import (
    brier_score,
    calibration_bins,
    calibration_glm,
    delong_auc,
    dice_summary,
    roc_at_fpr,
)
from common.summary import (
    SiteSummary,
    Table2x2,
    coarse_rates,
    fpr_grid,
    histogram_edges,
    pool_cells,
    small_cell_groups,
)
from common.tasks import probabilities

EPS = 1e-7


def summarize(
    model: nn.Module,
    data: SplitTensors,
    cfg: RunConfig,
    compute: Compute,
    drift_images: torch.Tensor | None = None,
    min_cell: int | None = None,
) -> SiteSummary:
    """Evaluate ``model`` on ``data`` and keep only the aggregate summary (with the count
    and first ids of the cases ``data.on-bad-case = skip`` left out of ``data``), under
    the small-cell rule ``min_cell`` (default: a simulated site's, so that baselines and
    federated models are summarised alike).

    Intensity histograms describe ``drift_images`` (default: the model input);
    a site with a harmonisation hook passes its windowed images before the hook,
    so drift measures the acquisition, the same whichever method is evaluated.
    """
    hist_images = data.images if drift_images is None else drift_images
    k = simulated_policy(cfg).min_cell if min_cell is None else min_cell
    if cfg.task == Task.MALIGNANCY:
        probs, embedding = predict(model, data.images, compute, cfg.seed, cfg.eval.embedding_dims)
        summary = classification_summary(
            data.labels.numpy(), probs.numpy(), cfg.eval, hist_images, embedding, k
        )
    elif cfg.task == Task.LESION_TYPE:
        # imported here: client.evaluation_multiclass builds on this module's functions
        from client.evaluation_multiclass import lesion_type_summary

        probs, embedding = predict(model, data.images, compute, cfg.seed, cfg.eval.embedding_dims)
        summary = lesion_type_summary(
            data.labels.numpy(), probs.numpy(), cfg.eval, hist_images, embedding, k
        )
    else:
        probs, _ = predict(model, data.images, compute, cfg.seed, 0)
        summary = segmentation_summary(
            probs, data.masks, cfg.eval, hist_images, cfg.data.spacing_mm, k
        )
    if cfg.eval.saliency and not summary.insufficient:  # Grad-CAM shares (client.explain)
        summary = replace(summary, **saliency_fields(model, data, cfg, compute, k))
    # cases left out under data.on-bad-case = skip: their count and first ids reach the report
    return replace(summary, skipped=len(data.skipped), skipped_ids=listed(data.skipped))


def sufficient(n_pos: int, n_neg: int, ev: EvalConfig) -> bool:
    """The minimum-size guard: enough cases, and of each class, for meaningful statistics."""
    return n_pos + n_neg >= ev.min_cases and min(n_pos, n_neg) >= ev.min_per_class


def classification_summary(
    labels: np.ndarray,
    probs: np.ndarray,
    ev: EvalConfig,
    images: torch.Tensor | None = None,
    embedding: np.ndarray | None = None,
    min_cell: int = 1,
) -> SiteSummary:
    """Counts, AUC and DeLong variance, 2x2 tables, ROC grid, calibration, drift inputs;
    bins and ROC points under the small-cell rule ``min_cell``."""
    y = labels.astype(int)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if not sufficient(n_pos, n_neg, ev):
        return SiteSummary(n=len(y), n_pos=n_pos, n_neg=n_neg, insufficient=True)
    # ranks, tables, bins and Brier use the probabilities as they are (clipping would tie
    # a confident model's scores); only the log loss needs them kept off 0 and 1, and the
    # calibration GLM clips on its own
    p = probs.astype(float)
    p_log = np.clip(p, EPS, 1 - EPS)
    auc = delong_auc(y, p)
    tables = []
    for t in ev.thresholds:
        called = p >= t
        tables.append(
            Table2x2(
                t,
                tp=int((called & (y == 1)).sum()),
                fp=int((called & (y == 0)).sum()),
                fn=int((~called & (y == 1)).sum()),
                tn=int((~called & (y == 0)).sum()),
            )
        )
    # after eval.recalibration: the recalibrated probabilities, binned in the same groups
    q = apply_recalibration(p, ev.recalibration) if ev.recalibration else None
    bins = small_cell_calibration(y, p, ev.calibration_bins, min_cell, after=q)
    recal = calibration_glm(y, p)
    after = recalibrated(y, q, bins) if q is not None else {}
    mean, cov = embedding_moments(embedding)
    return SiteSummary(
        n=len(y),
        n_pos=n_pos,
        n_neg=n_neg,
        loss=float(-np.mean(y * np.log(p_log) + (1 - y) * np.log(1 - p_log))),
        auc=auc.auc,
        auc_var=auc.variance,
        tables=tuple(tables),
        roc_tpr=coarse_roc(y, p, ev.roc_points, min_cell),
        cal_count=tuple(round(v) for v in bins[0]),
        cal_sum_p=tuple(float(v) for v in bins[1]),
        cal_sum_y=tuple(round(v) for v in bins[2]),
        cal_sum_sq=tuple(float(v) for v in bins[3]),
        brier=brier_score(y, p),
        cal_citl=recal.citl,
        cal_citl_se=recal.citl_se,
        cal_slope=recal.slope,
        cal_slope_se=recal.slope_se,
        cal_intercept=recal.intercept,
        cal_intercept_se=recal.intercept_se,
        **after,
        hist_counts=_histograms(images, ev.histogram_bins, min_cell),
        emb_mean=mean,
        emb_cov=cov,
    )


def segmentation_summary(
    probs: torch.Tensor,
    masks: torch.Tensor,
    ev: EvalConfig,
    images: torch.Tensor | None = None,
    spacing_mm: float = 1.0,
    min_cell: int = 1,
) -> SiteSummary:
    """Per-case Dice (MONAI ``DiceMetric``) and HD95, summarised; intensity histograms
    under the small-cell rule ``min_cell``."""
    n = len(masks)
    if n < ev.min_cases:
        return SiteSummary(n=n, insufficient=True)
    pred = (probs >= 0.5).float()
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    d = torch.as_tensor(dice(pred, masks)).view(-1).double().numpy()
    spacing = [spacing_mm] * (masks.ndim - 2)
    hd_cases = compute_hausdorff_distance(pred, masks, percentile=95, spacing=spacing)
    hd = hd_cases.view(-1).double().numpy()
    finite = hd[np.isfinite(hd)]  # inf/nan where a predicted or true mask is empty
    p = probs.clamp(EPS, 1 - EPS)
    bce = -(masks * p.log() + (1 - masks) * (1 - p).log()).mean()
    ds = dice_summary(d, ev.level)
    return SiteSummary(
        n=n,
        loss=float(bce),
        dice_mean=ds.mean,
        dice_sd=ds.sd,
        dice_median=ds.median,
        dice_q1=ds.q1,
        dice_q3=ds.q3,
        hd95_mean=float(finite.mean()) if finite.size else None,
        hd95_n=int(finite.size),
        hist_counts=_histograms(images, ev.histogram_bins, min_cell),
    )


def intensity_histograms(
    images: torch.Tensor, bins: int, min_cell: int = 1
) -> tuple[tuple[int, ...], ...]:
    """Per-channel counts of the model input's voxels on ``bins`` equal bins over [0, 1];
    bins with voxels of fewer than ``min_cell`` cases are merged with their neighbours."""
    edges = histogram_edges(bins)
    if not len(images):
        return tuple(tuple(0 for _ in range(bins)) for _ in range(images.shape[1]))
    out = []
    for c in range(images.shape[1]):
        values = np.clip(images[:, c].reshape(len(images), -1).float().numpy(), 0.0, 1.0)
        per_case = np.stack([np.histogram(v, bins=edges)[0] for v in values]).reshape(-1, bins)
        counts = per_case.sum(axis=0)
        groups = small_cell_groups(per_case > 0, min_cell)
        pooled = pool_cells(counts[None, :], groups, counts)[0]
        out.append(tuple(round(v) for v in pooled))
    return tuple(out)


def _histograms(
    images: torch.Tensor | None, bins: int, min_cell: int
) -> tuple[tuple[int, ...], ...]:
    return intensity_histograms(images, bins, min_cell) if images is not None else ()


def small_cell_calibration(
    y: np.ndarray, p: np.ndarray, n_bins: int, min_cell: int, after: np.ndarray | None = None
) -> np.ndarray:
    """Calibration bins (rows: count, sum of p, positives, sum of squared errors) with each
    bin of fewer than ``min_cell`` cases merged into its neighbours (``pool_cells``).

    ``after``: other probabilities of the same cases (recalibrated); two more rows, their
    sum and their sum of squared errors, on the bins and groups of ``p``."""
    bins = calibration_bins(y, p, n_bins)
    rows = np.array([bins.count, bins.sum_p, bins.sum_y, bins.sum_sq_error], dtype=float)
    idx = np.minimum(np.floor(p * n_bins).astype(int), n_bins - 1)  # calibration_bins' rule
    if after is not None:
        extra = [np.bincount(idx, weights=w, minlength=n_bins) for w in (after, (after - y) ** 2)]
        rows = np.vstack([rows, *extra])
    present = np.zeros((len(p), n_bins), dtype=bool)
    present[np.arange(len(p)), idx] = True
    return pool_cells(rows, small_cell_groups(present, min_cell), rows[0])


def recalibrated(y: np.ndarray, q: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """The calibration summary of the recalibrated probabilities ``q`` (``eval.recalibration``;
    ``common.recalibration``) as ``SiteSummary`` fields: per calibration group of the raw
    probabilities (``rows`` 4 and 5 of ``small_cell_calibration(..., after=q)``: the same
    groups, so the same counts, nothing new partitioned), the sums of the recalibrated
    probabilities and of their squared errors, their Brier score and their logistic fit."""
    fit = calibration_glm(y, q)
    return {
        "recal_sum_p": tuple(float(v) for v in rows[4]),
        "recal_sum_sq": tuple(float(v) for v in rows[5]),
        "recal_brier": brier_score(y, q),
        "recal_citl": fit.citl,
        "recal_citl_se": fit.citl_se,
        "recal_slope": fit.slope,
        "recal_slope_se": fit.slope_se,
        "recal_intercept": fit.intercept,
        "recal_intercept_se": fit.intercept_se,
    }


def coarse_roc(y: np.ndarray, p: np.ndarray, points: int, min_cell: int) -> tuple[float, ...]:
    """Sensitivity on the FPR grid, read at FPRs rounded down to steps of ``min_cell``
    negatives and itself rounded down to steps of ``min_cell`` positives."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    read_at = coarse_rates(fpr_grid(points), n_neg, min_cell)
    tpr = np.asarray(roc_at_fpr(y, p, read_at).tpr)
    return tuple(float(v) for v in coarse_rates(tpr, n_pos, min_cell))


def embedding_moments(
    embedding: np.ndarray | None,
) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """Mean and covariance (ddof = 1) of the projected embedding; empty without one."""
    if embedding is None or len(embedding) < 2:
        return (), ()
    mean = embedding.mean(axis=0)
    cov = np.atleast_2d(np.cov(embedding, rowvar=False, ddof=1))
    return tuple(float(v) for v in mean), tuple(tuple(float(v) for v in row) for row in cov)


def projection(features: int, dims: int, seed: int) -> torch.Tensor:
    """A fixed Gaussian random projection (features -> dims), identical at every site.

    Seeded by the run seed only, so all sites project into the same space and
    their embedding Gaussians can be compared (Johnson-Lindenstrauss scaling).
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(features, dims, generator=gen) / dims**0.5


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The network's final fully connected layer, whose input is the embedding."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@contextlib.contextmanager
def capture_embedding(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the penultimate-layer features of every forward pass inside the block."""
    captured: list[torch.Tensor] = []
    layer = last_linear(model)
    if layer is None:
        yield captured
        return

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().float().flatten(1).cpu())

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    compute: Compute,
    seed: int,
    embedding_dims: int,
    batch_size: int = 64,
) -> tuple[torch.Tensor, np.ndarray | None]:
    """Probabilities for every case and, when asked, the projected embedding (N, dims)."""
    model.to(compute.device).eval()
    out = []
    with capture_embedding(model) as features:
        for lo in range(0, len(images), batch_size):
            x = images[lo : lo + batch_size].to(compute.device, non_blocking=True)
            with compute.autocast():
                logits = model(x)
            out.append(probabilities(logits).float().cpu())
    probs = torch.cat(out) if out else torch.zeros(0)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs.view(-1)
    embedding = None
    if embedding_dims and features:
        feats = torch.cat(features)
        embedding = (feats @ projection(feats.shape[1], embedding_dims, seed)).numpy()
    return probs, embedding
