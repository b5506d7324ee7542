"""Test-time adaptation at a site that did not train the model: images only, no labels.

- ``bn-adapt`` (AdaBN, Li et al. 2018): re-estimate every BatchNorm layer's
  running mean and variance on the site's own images (cumulative average over
  batches of ``train.batch-size``), then score in eval mode.
- ``tent`` (Wang et al., ICLR 2021): ``hooks.tent-steps`` Adam steps at
  ``hooks.tent-lr`` that minimise the mean entropy of the predictions (binary; the
  softmax's for lesion-type), updating only the BatchNorm affine parameters with
  batch statistics; then the statistics are re-estimated with the adapted affine
  parameters so the site scores in eval mode. Steps are bounded; every other weight is frozen.

Both receive only an image tensor: labels and masks are never passed in.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from common.device import Compute
from common.hooks.base import Hook, HookPoint
from common.hooks.normalization import batchnorm_layers, require_batchnorm


def _batches(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [images[lo : lo + size] for lo in range(0, len(images), size)]


@torch.no_grad()
def reestimate_statistics(
    model: nn.Module, images: torch.Tensor, compute: Compute, batch_size: int
) -> None:
    """Replace BatchNorm running statistics by the cumulative average over ``images``."""
    layers = batchnorm_layers(model)
    saved = {name: m.momentum for name, m in layers.items()}
    model.to(compute.device).eval()
    for m in layers.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
        m.train()
    try:
        for batch in _batches(images, max(batch_size, 2)):
            if len(batch) < 2 and len(images) >= 2:
                continue  # a single trailing case would give a zero variance estimate
            with compute.autocast():
                model(batch.to(compute.device, non_blocking=True))
    finally:
        for name, m in layers.items():
            m.momentum = saved[name]
        model.eval()


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """What TENT minimises: the mean softmax entropy of a classifier with one logit per
    class (N, K > 1), else the mean binary entropy of its sigmoid outputs."""
    if logits.ndim == 2 and logits.shape[1] > 1:
        logp = nn.functional.log_softmax(logits.float(), dim=1)
        return -(logp.exp() * logp).sum(dim=1).mean()
    return binary_entropy(logits)


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of sigmoid predictions: what TENT minimises."""
    logits = logits.float()
    p = torch.sigmoid(logits)
    # -p log p - (1-p) log(1-p), written with log-sigmoid for stability
    return -(
        p * nn.functional.logsigmoid(logits) + (1 - p) * nn.functional.logsigmoid(-logits)
    ).mean()


class BNAdapt(Hook):
    """Re-estimate BatchNorm statistics on the unseen site's images."""

    name: ClassVar[str] = "bn-adapt"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.TEST_TIME,)

    def check_model(self, model: nn.Module) -> None:
        require_batchnorm(model, self.name)

    def adapt(self, model: nn.Module, images: torch.Tensor, compute: Compute) -> None:
        reestimate_statistics(model, images, compute, self.cfg.train.batch_size)


class Tent(Hook):
    """Entropy minimisation on BatchNorm affine parameters, bounded steps."""

    name: ClassVar[str] = "tent"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.TEST_TIME,)

    def check_model(self, model: nn.Module) -> None:
        require_batchnorm(model, self.name)

    def adapt(self, model: nn.Module, images: torch.Tensor, compute: Compute) -> None:
        h = self.cfg.hooks
        layers = batchnorm_layers(model)
        model.to(compute.device)
        affine = [p for m in layers.values() for p in (m.weight, m.bias) if p is not None]
        trainable = {id(p) for p in affine}
        previous = {name: p.requires_grad for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        optimizer = torch.optim.Adam(affine, lr=h.tent_lr)
        generator = torch.Generator().manual_seed(self.cfg.seed)
        bs = max(self.cfg.train.batch_size, 2)
        model.eval()
        for m in layers.values():
            m.train()  # normalise with the test batch's statistics, as TENT does
        try:
            for _ in range(h.tent_steps):
                idx = torch.randperm(len(images), generator=generator)[:bs]
                if len(idx) < 2:
                    break
                batch = images[idx].to(compute.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with compute.autocast():
                    loss = prediction_entropy(model(batch))
                loss.backward()
                optimizer.step()
        finally:
            for name, p in model.named_parameters():
                p.requires_grad_(previous[name])
            model.eval()
        reestimate_statistics(model, images, compute, self.cfg.train.batch_size)

    def describe(self) -> str:
        h = self.cfg.hooks
        return f"tent ({h.tent_steps} steps, lr {h.tent_lr:g})"
