"""Model weights <-> Flower ArrayRecords: which tensors travel, and loading them back.

Only floating-point tensors travel (parameters and normalisation statistics);
integer bookkeeping buffers such as BatchNorm's ``num_batches_tracked`` stay
local, because averaging a counter is meaningless and would change its dtype.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord
from torch import nn

from common.array_views import tensor_views


class WeightsError(ValueError):
    """Received weights do not fit the model (missing, extra or mis-shaped tensors)."""


def shared_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The floating-point entries of the state dict, detached on the CPU."""
    return OrderedDict(
        (k, v.detach().cpu()) for k, v in model.state_dict().items() if v.is_floating_point()
    )


def to_arrays(model: nn.Module) -> ArrayRecord:
    """The model's shared tensors as an ArrayRecord."""
    return ArrayRecord(shared_state(model))


def load_arrays(model: nn.Module, arrays: ArrayRecord, optional: Iterable[str] = ()) -> None:
    """Copy received tensors into ``model``; any mismatch is a ``WeightsError``.

    Keys in ``optional`` (layers a hook keeps local) may be absent; the model
    keeps its own values for them.
    """
    expected = shared_state(model)
    received = tensor_views(arrays)  # views of the message's bytes: copied once, into the model
    missing = sorted(set(expected) - set(received) - set(optional))
    extra = sorted(set(received) - set(expected))
    if missing or extra:
        raise WeightsError(
            f"weights do not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for key, tensor in received.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"weights for {key!r} have shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(received, strict=False)


def subset(state: ArrayRecord, drop: Iterable[str]) -> ArrayRecord:
    """``state`` without the keys in ``drop``, order kept (the shared part of a model)."""
    gone = set(drop)
    if not gone:
        return state
    return ArrayRecord(OrderedDict((k, v) for k, v in state.items() if k not in gone))


def merge(full: ArrayRecord, part: ArrayRecord) -> ArrayRecord:
    """``full`` with the entries of ``part`` replaced, in ``full``'s key order."""
    return ArrayRecord(OrderedDict((k, part.get(k, v)) for k, v in full.items()))
