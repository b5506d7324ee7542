"""What a task optimises and predicts: loss, targets and probabilities."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from common.keys import Task


def loss_function(task: str) -> nn.Module:
    """BCE on the lesion logit for malignancy; Dice + BCE on voxel logits for masks."""
    if task == Task.MALIGNANCY:
        return nn.BCEWithLogitsLoss()
    return DiceCELoss(sigmoid=True)


def targets(task: str, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The training target of a batch, shaped like the network output."""
    if task == Task.MALIGNANCY:
        return labels.view(-1, 1)
    return masks


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid probabilities in float32, whatever precision the forward ran in."""
    return torch.sigmoid(logits.float())
