"""Local training and evaluation at a site: plain functions on tensors.

The ClientApp, the local-only baseline and the pooled baseline all call these,
so the three are trained by exactly the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import DiceMetric
from torch import nn

from common.config import RunConfig
from common.data import SplitTensors, augment_batch
from common.device import Compute
from common.keys import MetricKey, OptimizerName, Task
from common.stats import delong_auc
from common.tasks import loss_function, probabilities, targets


@dataclass(frozen=True)
class TrainResult:
    """Aggregates of one local training call (never per-case values)."""

    num_examples: int
    loss: float
    seconds: float


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The configured local optimiser over all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    if t.optimizer == OptimizerName.SGD:
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    if t.optimizer == OptimizerName.ADAMW:
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def train_local(
    model: nn.Module,
    data: SplitTensors,
    cfg: RunConfig,
    compute: Compute,
    seed: int,
    epochs: int | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` (default ``train.local-epochs``) epochs."""
    if len(data) < 2:
        raise ValueError(f"a site needs at least 2 training cases, got {len(data)}")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    model.to(compute.device).train()
    optimizer = make_optimizer(model, cfg)
    scaler = compute.grad_scaler()
    criterion = loss_function(cfg.task)
    bs = cfg.train.batch_size
    images = data.images.to(compute.device, non_blocking=True)
    masks = data.masks.to(compute.device, non_blocking=True)
    labels = data.labels.to(compute.device, non_blocking=True)
    total, count = 0.0, 0
    for _ in range(epochs if epochs is not None else cfg.train.local_epochs):
        order = torch.randperm(len(data), generator=generator).to(compute.device)
        for lo in range(0, len(data), bs):
            idx = order[lo : lo + bs]
            if len(idx) < 2:  # BatchNorm cannot train on a single case
                continue
            x, m = images[idx], masks[idx]
            if cfg.data.augment:
                x, m = augment_batch(x, m, generator)
            y = targets(cfg.task, labels[idx], m)
            optimizer.zero_grad(set_to_none=True)
            with compute.autocast():
                loss = criterion(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
    return TrainResult(count, total / max(count, 1), time.perf_counter() - start)


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, compute: Compute, batch_size: int = 64
) -> torch.Tensor:
    """Probabilities for every case (classification: (N,); segmentation: voxel maps)."""
    model.to(compute.device).eval()
    out = []
    for lo in range(0, len(images), batch_size):
        x = images[lo : lo + batch_size].to(compute.device, non_blocking=True)
        with compute.autocast():
            logits = model(x)
        out.append(probabilities(logits).cpu())
    if not out:
        return torch.zeros(0)
    probs = torch.cat(out)
    return probs.view(-1) if probs.ndim == 2 and probs.shape[1] == 1 else probs


def evaluate(
    model: nn.Module, data: SplitTensors, cfg: RunConfig, compute: Compute
) -> dict[str, float]:
    """Summary metrics of ``model`` on one split: counts, loss, AUC or Dice."""
    probs = predict(model, data.images, compute)
    if cfg.task == Task.MALIGNANCY:
        return classification_summary(data.labels.numpy(), probs.numpy(), cfg.eval.threshold)
    return segmentation_summary(probs, data.masks)


def classification_summary(
    labels: np.ndarray, probs: np.ndarray, threshold: float
) -> dict[str, float]:
    """Counts, log loss, AUC with DeLong variance, and the 2x2 table's rates."""
    y = labels.astype(int)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    p = np.clip(probs.astype(float), 1e-7, 1 - 1e-7)
    out: dict[str, float] = {
        MetricKey.NUM_EXAMPLES: float(len(y)),
        MetricKey.N: float(len(y)),
        MetricKey.N_POS: float(n_pos),
        MetricKey.N_NEG: float(n_neg),
        MetricKey.LOSS: float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else 0.0,
    }
    pred = p >= threshold
    if len(y):
        out[MetricKey.ACCURACY] = float((pred == (y == 1)).mean())
    if n_pos:
        out[MetricKey.SENSITIVITY] = float((pred & (y == 1)).sum() / n_pos)
    if n_neg:
        out[MetricKey.SPECIFICITY] = float((~pred & (y == 0)).sum() / n_neg)
    if n_pos >= 2 and n_neg >= 2:
        auc = delong_auc(y, p)
        out[MetricKey.AUC] = auc.auc
        out[MetricKey.AUC_VAR] = auc.variance
    return out


def segmentation_summary(probs: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Counts and the mean and SD of per-case Dice (MONAI ``DiceMetric``)."""
    n = len(masks)
    out: dict[str, float] = {MetricKey.NUM_EXAMPLES: float(n), MetricKey.N: float(n)}
    if n == 0:
        return out
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    dice = torch.as_tensor(metric((probs >= 0.5).float(), masks)).view(-1).numpy()
    out[MetricKey.DICE] = float(dice.mean())
    out[MetricKey.DICE_SD] = float(dice.std(ddof=1)) if n > 1 else 0.0
    eps = 1e-7
    p = probs.clamp(eps, 1 - eps)
    bce = -(masks * p.log() + (1 - masks) * (1 - p).log()).mean()
    out[MetricKey.LOSS] = float(bce)
    return out
