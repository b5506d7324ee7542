"""What a site remembers between the messages of one run: Flower's ``Context.state``.

Keyed by the model id the server names in each message:
- the layers a hook keeps local (FedBN, SiloBN), saved after every federated
  round and put back into the next global model the site receives, so they
  persist across rounds and are never averaged;
- which models the site has trained, so at evaluation it knows whether it is
  scoring its own model (use its local layers) or one it never saw (test-time
  adaptation applies).

The residual of update compression (what encoding lost last round, added to
the next update: error feedback), per model id.

And, keyed by what they depend on, the statistics the site's PREPROCESS hooks
fitted on its images, so they are fitted once per run rather than every round.

Flower keeps ``Context.state`` per node and run in simulation and deployment
alike; nothing here touches the disk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch import nn

TRAINED = "hepafed.trained"
LAYERS = "hepafed.local-layers."
FITTED = "hepafed.fitted"


def layers_key(model_id: str) -> str:
    return f"{LAYERS}{model_id}"


def save_local_layers(
    state: RecordDict, model_id: str, model: nn.Module, keys: Iterable[str]
) -> None:
    """Keep ``keys`` of ``model``'s state dict for the next message about ``model_id``."""
    wanted = set(keys)
    if not wanted:
        return
    tensors = OrderedDict(
        (k, v.detach().cpu().clone()) for k, v in model.state_dict().items() if k in wanted
    )
    state[layers_key(model_id)] = ArrayRecord(tensors)


def restore_local_layers(state: RecordDict, model_id: str, model: nn.Module) -> bool:
    """Put the site's saved layers for ``model_id`` into ``model``; False if it has none."""
    key = layers_key(model_id)
    if key not in state.array_records:
        return False
    saved = state.array_records[key].to_torch_state_dict()
    with torch.no_grad():
        current = model.state_dict()
        for k, v in saved.items():
            current[k].copy_(v)
    return True


def mark_trained(state: RecordDict, model_id: str, server_round: int) -> None:
    record = state.config_records.get(TRAINED, ConfigRecord())
    record[model_id] = server_round
    state[TRAINED] = record


def has_trained(state: RecordDict, model_id: str) -> bool:
    return model_id in state.config_records.get(TRAINED, ConfigRecord())


def recall(state: RecordDict, key: str) -> str | None:
    """Text kept under ``key`` by ``remember`` in this run, or None."""
    value = state.config_records.get(FITTED, ConfigRecord()).get(key)
    return None if value is None else str(value)


def remember(state: RecordDict, key: str, text: str) -> None:
    record = state.config_records.get(FITTED, ConfigRecord())
    record[key] = text
    state[FITTED] = record


RESIDUAL = "hepafed.residual."


def recall_residual(state: RecordDict, model_id: str) -> dict[str, np.ndarray] | None:
    """What update compression lost last round for ``model_id`` (error feedback), or None."""
    key = f"{RESIDUAL}{model_id}"
    if key not in state.array_records:
        return None
    return {k: v.numpy() for k, v in state.array_records[key].items()}


def keep_residual(state: RecordDict, model_id: str, residual: dict[str, np.ndarray]) -> None:
    state[f"{RESIDUAL}{model_id}"] = ArrayRecord(
        OrderedDict((k, Array(v)) for k, v in residual.items())
    )
