"""Networks by name, from MONAI, small by default so a CPU round takes seconds."""

from __future__ import annotations

import math
from collections.abc import Callable

from monai.networks.nets import BasicUNet, DenseNet, ResNet, UNet
from torch import nn

from common.config import RunConfig
from common.keys import LESION_CLASSES, Norm, Task, classifies

Builder = Callable[[int, int, int], nn.Module]  # (spatial_dims, in_channels, width)
GROUPS = 8  # GroupNorm groups (Wu & He 2018 use 32, too many for 16-channel stages)


def with_norm(model: nn.Module, norm: str) -> nn.Module:
    """``model`` with every BatchNorm layer replaced by ``model.norm``'s layer: GroupNorm
    (gcd(8, channels) groups) or InstanceNorm with affine parameters, each initialised
    as a fresh BatchNorm is (weight 1, bias 0). MONAI's ResNet takes a ``norm`` argument
    but builds its residual stages and shortcuts with BatchNorm whatever it says, so the
    layers are swapped after construction, the same way for every network."""
    if norm == Norm.BATCH:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, _norm_layer(norm, child))
    return model


def _norm_layer(norm: str, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    c = bn.num_features
    if norm == Norm.GROUP:
        return nn.GroupNorm(math.gcd(GROUPS, c), c)
    instance = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
    dims = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}[type(bn)]
    return instance[dims](c, affine=True)


def _resnet(dims: int, in_ch: int, w: int, outputs: int = 1) -> nn.Module:
    # A ResNet-10 (one basic block per stage), BatchNorm, one logit (or one per class).
    return ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[w, 2 * w, 4 * w, 8 * w],
        spatial_dims=dims,
        n_input_channels=in_ch,
        conv1_t_size=5,
        num_classes=outputs,
    )


def _densenet(dims: int, in_ch: int, w: int, outputs: int = 1) -> nn.Module:
    return DenseNet(
        spatial_dims=dims,
        in_channels=in_ch,
        out_channels=outputs,
        init_features=w,
        growth_rate=max(4, w // 2),
        block_config=(2, 4, 4),
    )


def _unet(dims: int, in_ch: int, w: int) -> nn.Module:
    # MONAI's UNet: InstanceNorm without affine parameters or running statistics.
    return UNet(
        spatial_dims=dims,
        in_channels=in_ch,
        out_channels=1,
        channels=(w, 2 * w, 4 * w, 8 * w),
        strides=(2, 2, 2),
        num_res_units=1,
    )


def _basicunet(dims: int, in_ch: int, w: int) -> nn.Module:
    return BasicUNet(
        spatial_dims=dims,
        in_channels=in_ch,
        out_channels=1,
        features=(w, w, 2 * w, 4 * w, 8 * w, w),
    )


def _three_way(builder: Callable[..., nn.Module]) -> Builder:
    """The classifier with a softmax head: one logit per lesion type (``common.tasks``)."""

    def build(dims: int, in_ch: int, w: int) -> nn.Module:
        return builder(dims, in_ch, w, outputs=len(LESION_CLASSES))

    return build


MODELS: dict[str, dict[str, Builder]] = {
    Task.MALIGNANCY.value: {"resnet": _resnet, "densenet": _densenet},
    Task.SEGMENTATION.value: {"unet": _unet, "basicunet": _basicunet},
    Task.LESION_TYPE.value: {"resnet": _three_way(_resnet), "densenet": _three_way(_densenet)},
}
DEFAULT_MODEL = {
    Task.MALIGNANCY.value: "resnet",
    Task.SEGMENTATION.value: "unet",
    Task.LESION_TYPE.value: "resnet",
}


class ModelError(ValueError):
    """The configured network does not exist for the task."""


def model_name(cfg: RunConfig) -> str:
    """The configured network, or the task's default when ``model.name`` is empty."""
    return cfg.model.name or DEFAULT_MODEL[cfg.task]


def build_model(cfg: RunConfig) -> nn.Module:
    """The network for ``cfg.task``, seeded by ``cfg.seed`` so every party builds the same."""
    import torch

    name = model_name(cfg)
    builders = MODELS[cfg.task]
    if name not in builders:
        valid = ", ".join(repr(n) for n in builders)
        raise ModelError(f"model.name = {name!r} is not a {cfg.task} network; use one of {valid}")
    if not classifies(cfg.task) and cfg.model.norm != Norm.BATCH:
        raise ModelError(
            f"model.norm = {cfg.model.norm.value!r} applies to the classification networks; "
            f"the {name} of task {cfg.task.value!r} keeps its own normalisation"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = builders[name](cfg.data.spatial_dims, len(cfg.data.channels), cfg.model.width)
    return with_norm(model, cfg.model.norm)
