"""What a task optimises and predicts: loss, targets and probabilities."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from common.keys import Task


def loss_function(task: str) -> nn.Module:
    """BCE on the lesion logit for malignancy; cross-entropy on one logit per class for
    lesion-type; Dice + BCE on voxel logits for masks."""
    if task == Task.MALIGNANCY:
        return nn.BCEWithLogitsLoss()
    if task == Task.LESION_TYPE:
        return nn.CrossEntropyLoss()
    return DiceCELoss(sigmoid=True)


def targets(task: str, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The training target of a batch, shaped like the network output (class indices for
    lesion-type, as ``nn.CrossEntropyLoss`` takes them)."""
    if task == Task.MALIGNANCY:
        return labels.view(-1, 1)
    if task == Task.LESION_TYPE:
        return labels.view(-1).long()
    return masks


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities in float32, whatever precision the forward ran in: a softmax over the
    classes for a classifier with one logit per class (N, K > 1), else a sigmoid per
    output (the malignancy logit, or every voxel of a mask)."""
    if logits.ndim == 2 and logits.shape[1] > 1:
        return torch.softmax(logits.float(), dim=1)
    return torch.sigmoid(logits.float())
