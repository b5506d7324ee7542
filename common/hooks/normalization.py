"""Normalisation layers: which a model has, and the hooks that keep them local.

- ``fedbn`` (Li et al., ICLR 2021): every BatchNorm entry (affine weight and
  bias, running mean and variance) stays at the site and is never averaged.
- ``silobn`` (Andreux et al., 2020): BatchNorm running statistics stay local,
  the affine weight and bias are shared and averaged.

Both need BatchNorm. MONAI's UNet uses InstanceNorm without running
statistics, so on such a network these hooks raise instead of doing nothing.
A site that never trained a model has no local layers of its own: it gets
the global model with its normalisation statistics re-estimated on its own
images (``bn-adapt``), which the report states.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from common.hooks.base import Hook, HookError, HookPoint

BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
STATISTICS = ("running_mean", "running_var")
AFFINE = ("weight", "bias")


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm modules by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BATCHNORM)}


def norm_kinds(model: nn.Module) -> list[str]:
    """Class names of the model's normalisation layers, for error messages."""
    kinds = {
        type(m).__name__
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
    }
    return sorted(kinds)


def require_batchnorm(model: nn.Module, hook: str) -> None:
    """``HookError`` unless ``model`` has BatchNorm layers with running statistics."""
    layers = batchnorm_layers(model)
    if not any(m.track_running_stats for m in layers.values()):
        found = ", ".join(norm_kinds(model)) or "no normalisation layers"
        raise HookError(
            f"hook {hook!r} acts on BatchNorm layers, but {type(model).__name__} has "
            f"{found}; use a BatchNorm network (resnet, densenet) or drop the hook"
        )


def _keys(model: nn.Module, entries: tuple[str, ...]) -> set[str]:
    keys = set()
    for name, module in batchnorm_layers(model).items():
        for entry in entries:
            if getattr(module, entry, None) is not None:
                keys.add(f"{name}.{entry}")
    return keys


class FedBN(Hook):
    """Keep every BatchNorm parameter and statistic local."""

    name: ClassVar[str] = "fedbn"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.SHARING,)

    def check_model(self, model: nn.Module) -> None:
        require_batchnorm(model, self.name)

    def local_keys(self, model: nn.Module) -> set[str]:
        return _keys(model, AFFINE + STATISTICS)


class SiloBN(Hook):
    """Keep BatchNorm running statistics local; share the affine parameters."""

    name: ClassVar[str] = "silobn"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.SHARING,)

    def check_model(self, model: nn.Module) -> None:
        require_batchnorm(model, self.name)

    def local_keys(self, model: nn.Module) -> set[str]:
        return _keys(model, STATISTICS)
