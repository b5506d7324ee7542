"""Grad-CAM at the site: where in a case's image the model's evidence for its call lies.

``grad_cam`` runs MONAI's ``monai.visualize.GradCAM`` on the network's last convolutional
stage (``target_layer``: ``layer4`` of MONAI's ResNet; ``class_layers.relu`` of its
DenseNet, the ReLU after the last dense block and its normalisation) for the class
explained: the single logit of ``lesion-malignancy`` (class 0), the predicted class
(argmax) of ``lesion-type``. Its map lives on that stage's coarse grid (``coarse_size``:
e.g. 4 x 4 for a 64-pixel 2-D crop through the ResNet) and is upsampled to the input size
by MONAI's default upsampler (``UPSAMPLING``), so a lesion smaller than one coarse cell
cannot be told apart from its surroundings. The map is not rescaled: MONAI's default
post-processing maps (min, max) to (1, 0), which flips a map, and a share needs the
map's own mass.

``lesion_shares`` gives each case's share of the map's mass inside the lesion mask, and
the mask's share of the image: the share a map spread evenly would have, the chance level
(high on lesion-centred crops). ``liver_shares`` gives the same two for the liver outside
the lesion (liver mask minus lesion mask): the map's share there and that region's share
of the image. It is NaN for a case without a liver mask (NaN in ``SplitTensors.livers``)
and wherever the lesion share is NaN (an all-zero map, an empty lesion mask), so the
liver's cases are always among the lesion's: on each case the two shares, and the two
chance levels, add up to at most 1, and the server checks the means against each other
(``server.reply_checks``).

``saliency_fields`` averages them over the cases (the ``eval.saliency`` numbers a site
may send, ``SiteSummary.saliency_*``): the lesion's two means and their count only when
at least ``min_cell`` cases have a lesion share; the liver's two means and their count
(``saliency_liver``, ``saliency_liver_chance``, ``saliency_liver_n``) only when, besides,
at least ``min_cell`` cases have a liver share (both known: a liver mask and a lesion
share). Nothing else: the maps and per-case shares never leave the site; ``hepafed site
explain`` (``client.explain_cli``) shows them to its clinicians.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.visualize import GradCAM
from torch import nn

from common.config import RunConfig
from common.data import SplitTensors
from common.device import Compute
from common.keys import Task, classifies
from common.models import model_name
from common.tasks import probabilities

# the last convolutional stage of each classification network (``common.models``)
TARGET_LAYERS = {"resnet": "layer4", "densenet": "class_layers.relu"}
UPSAMPLING = (
    "bilinear (trilinear in 3-D) interpolation of the coarse map to the input size "
    "(monai.visualize default_upsampler, align_corners=False)"
)


class ExplainError(ValueError):
    """The model or the run cannot be explained here (the message says why and what to do)."""


@dataclass(frozen=True)
class CamMaps:
    """Grad-CAM maps of N cases and what they explain."""

    maps: torch.Tensor  # (N, 1, *spatial) float32 >= 0, the input's size, on the CPU
    classes: tuple[int, ...]  # the class explained per case (an index into the logits)
    probability: torch.Tensor  # (N,) the model's probability of that class
    coarse_size: tuple[int, ...]  # the target layer's spatial grid
    layer: str


def target_layer(network: str, model: nn.Module | None = None) -> str:
    """The layer Grad-CAM reads for ``network`` (``model.name``); with ``model``, checked to
    exist in it. An ``ExplainError`` names the networks it knows otherwise."""
    layer = TARGET_LAYERS.get(network)
    if layer is None:
        known = ", ".join(repr(n) for n in TARGET_LAYERS)
        raise ExplainError(
            f"model.name = {network!r}: Grad-CAM knows the last convolutional stage of the "
            f"classification networks {known} only; explain a run of one of them"
        )
    if model is not None and layer not in dict(model.named_modules()):
        raise ExplainError(
            f"model.name = {network!r}: the network has no layer {layer!r} for Grad-CAM "
            "(was it built by common.models.build_model?)"
        )
    return layer


def explained_classes(task: str, logits: torch.Tensor) -> torch.Tensor:
    """The class each case is explained for: 0 (the malignancy logit) or the argmax."""
    if task == Task.LESION_TYPE:
        return logits.argmax(dim=1)
    return torch.zeros(len(logits), dtype=torch.long, device=logits.device)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def grad_cam(
    model: nn.Module, images: torch.Tensor, cfg: RunConfig, compute: Compute, batch_size: int = 32
) -> CamMaps:
    """Grad-CAM maps of ``images`` (N, C, *spatial) for the class ``explained_classes`` picks.

    Runs on a copy of ``model`` (GradCAM leaves hooks on the network it wraps), in eval mode
    and float32, with gradients on whatever the caller's context."""
    net = copy.deepcopy(model).to(compute.device).eval().requires_grad_(True)
    layer = target_layer(model_name(cfg), net)
    cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=_identity)
    maps, classes, probs = [], [], []
    coarse: tuple[int, ...] = ()
    with torch.enable_grad():
        for lo in range(0, len(images), batch_size):
            x = images[lo : lo + batch_size].to(compute.device).float()
            with torch.no_grad():
                logits = net(x).float()
            idx = explained_classes(cfg.task, logits)
            p = probabilities(logits)
            probs.append(p.gather(1, idx.view(-1, 1)).view(-1).cpu())
            out = torch.zeros((len(x), 1, *x.shape[2:]))
            for k in sorted(set(idx.tolist())):  # GradCAM takes one class index per call
                chosen = idx == k
                out[chosen.cpu()] = cam(x[chosen], class_idx=k).detach().float().cpu()
            coarse = tuple(cam.nn_module.activations[layer].shape[2:])
            maps.append(out.clamp_min(0.0))
            classes += idx.tolist()
    empty = torch.zeros((0, 1, *images.shape[2:]))
    return CamMaps(
        maps=torch.cat(maps) if maps else empty,
        classes=tuple(int(c) for c in classes),
        probability=torch.cat(probs) if probs else torch.zeros(0),
        coarse_size=coarse,
        layer=layer,
    )


def lesion_shares(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per case: the share of the map's mass (negative values clipped to 0) inside the mask,
    NaN where the map is all zero or the mask empty (nothing to share out); and the mask's
    share of the image (the chance level)."""
    n = len(maps)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    cam = np.clip(np.asarray(maps, dtype=float).reshape(n, -1), 0.0, None)
    inside = np.asarray(masks).reshape(n, -1) > 0.5
    mass = cam.sum(axis=1)
    lesion = (cam * inside).sum(axis=1)
    usable = (mass > 0) & inside.any(axis=1)
    share = np.full(n, np.nan)
    share[usable] = lesion[usable] / mass[usable]
    return share, inside.mean(axis=1)


def liver_shares(
    maps: np.ndarray, masks: np.ndarray, livers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per case: the share of the map's mass (negative values clipped to 0) inside the liver
    but outside the lesion (liver mask > 0.5, lesion mask <= 0.5), and that region's share of
    the image (the chance level). Both NaN for a case without a liver mask (any NaN in its
    ``livers``); the share also NaN wherever ``lesion_shares``'s is (an all-zero map, an
    empty lesion mask)."""
    n = len(maps)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    cam = np.clip(np.asarray(maps, dtype=float).reshape(n, -1), 0.0, None)
    lesion = np.asarray(masks).reshape(n, -1) > 0.5
    liver_map = np.asarray(livers, dtype=float).reshape(n, -1)
    known = ~np.isnan(liver_map).any(axis=1)
    region = (np.nan_to_num(liver_map, nan=0.0) > 0.5) & ~lesion
    mass = cam.sum(axis=1)
    usable = known & (mass > 0) & lesion.any(axis=1)
    share = np.full(n, np.nan)
    share[usable] = (cam * region).sum(axis=1)[usable] / mass[usable]
    area = np.where(known, region.mean(axis=1), np.nan)
    return share, area


def saliency_means(share: np.ndarray, area: np.ndarray, min_cell: int) -> dict[str, Any]:
    """``SiteSummary`` fields: the mean share in the lesion and the mean chance level over
    the usable cases (finite ``share``) and their count; none below ``min_cell`` cases."""
    return _means(share, area, min_cell, ("saliency_lesion", "saliency_chance", "saliency_n"))


def liver_means(share: np.ndarray, area: np.ndarray, min_cell: int) -> dict[str, Any]:
    """``SiteSummary`` fields: the mean share in the liver outside the lesion and its mean
    chance level over the cases with a liver share (``liver_shares``) and their count; none
    below ``min_cell`` such cases."""
    keys = ("saliency_liver", "saliency_liver_chance", "saliency_liver_n")
    return _means(share, area, min_cell, keys)


def _means(
    share: np.ndarray, area: np.ndarray, min_cell: int, keys: tuple[str, str, str]
) -> dict[str, Any]:
    usable = np.isfinite(share)
    n = int(usable.sum())
    if n == 0 or n < min_cell:
        return {}
    mean_share, mean_area, count = keys
    return {
        mean_share: float(np.mean(share[usable])),
        mean_area: float(np.mean(area[usable])),
        count: n,
    }


def saliency_fields(
    model: nn.Module, data: SplitTensors, cfg: RunConfig, compute: Compute, min_cell: int
) -> dict[str, Any]:
    """What ``eval.saliency`` adds to a classification summary: ``saliency_means``, and
    ``liver_means`` when the split has liver masks; nothing when it is off, for
    segmentation, for a split without cases, or below ``min_cell`` lesion cases."""
    if not cfg.eval.saliency or not classifies(cfg.task) or not len(data):
        return {}
    maps = grad_cam(model, data.images, cfg, compute).maps.numpy()
    masks = data.masks.numpy()
    out = saliency_means(*lesion_shares(maps, masks), min_cell)
    if out and data.livers is not None:  # the liver's cases are among the lesion's
        out |= liver_means(*liver_shares(maps, masks, data.livers.numpy()), min_cell)
    return out
