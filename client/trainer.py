"""Local training at a site: plain functions on tensors.

The ClientApp, the local-only baseline and the pooled baseline all call these,
so the three are trained by exactly the same code (evaluation: ``client.evaluation``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from common.config import RunConfig
from common.data import SplitTensors, augment_batch
from common.device import Compute
from common.keys import OptimizerName
from common.tasks import loss_function, targets


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
    penalty: Callable[[nn.Module], torch.Tensor | None] | None = None,
    lrs: Sequence[float] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` (default ``train.local-epochs``) epochs.

    ``penalty`` (a local-objective hook, e.g. FedProx) is added to the task loss;
    the reported loss is the task loss alone, so runs with and without it compare.
    ``lrs`` gives each epoch's learning rate (``common.schedule``; default ``train.lr``).
    With ``train.grad-clip`` > 0 each step's gradient is clipped to that L2 norm.
    """
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
    n_epochs = epochs if epochs is not None else cfg.train.local_epochs
    if lrs is not None and len(lrs) != n_epochs:
        raise ValueError(f"lrs gives {len(lrs)} learning rate(s) for {n_epochs} epoch(s)")
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(n_epochs):
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[epoch]
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
            extra = penalty(model) if penalty is not None else None
            objective = loss if extra is None else loss + extra
            scaler.scale(objective).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
    return TrainResult(count, total / max(count, 1), time.perf_counter() - start)
