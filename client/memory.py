"""What a site remembers between the messages of one run: Flower's ``Context.state``.

Keyed by the model id the server names in each message:
- the layers a hook keeps local (FedBN, SiloBN), saved after every federated
  round and put back into the next global model the site receives, so they
  persist across rounds and are never averaged;
- which models the site has trained, so at evaluation it knows whether it is
  scoring its own model (use its local layers) or one it never saw (test-time
  adaptation applies).

The residual of update compression (what encoding lost last round, added to
the next update: error feedback), per model id: in ``Context.state`` in
simulation; at a deployed site with a state folder (``policy.state-dir``), in a
file there instead (``ResidualFiles``). Flower sends a task's whole
``Context`` as one protobuf message each way, so a residual in it (the size of
the model) travelled twice with every task, training or not: with a
110M-parameter model 442 MB each way, and the SuperNode declared the
validation tasks unresponsive.

And, keyed by what they depend on, the statistics the site's PREPROCESS hooks
fitted on its images, so they are fitted once per run rather than every round.

Flower keeps ``Context.state`` per node and run in simulation and deployment
alike; only the residual files touch the disk.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from common.files import atomic_file, private_folder

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


RESIDUALS_DIR = "residuals"  # under the site's state folder
RESIDUAL_KEEP_S = 24 * 3600  # a run's residuals untouched this long are deleted


def recall_residual(
    state: RecordDict, model_id: str, files: ResidualFiles | None = None
) -> dict[str, np.ndarray] | None:
    """What update compression lost last round for ``model_id`` (error feedback), or None;
    from ``files`` when the site keeps them on disk."""
    if files is not None:
        return files.recall(model_id)
    key = f"{RESIDUAL}{model_id}"
    if key not in state.array_records:
        return None
    return {k: v.numpy() for k, v in state.array_records[key].items()}


def keep_residual(
    state: RecordDict,
    model_id: str,
    residual: dict[str, np.ndarray],
    files: ResidualFiles | None = None,
) -> None:
    """Keep ``residual`` for the next update of ``model_id`` (in ``files`` when given)."""
    if files is not None:
        files.keep(model_id, residual)
        return
    state[f"{RESIDUAL}{model_id}"] = ArrayRecord(
        OrderedDict((k, Array(v)) for k, v in residual.items())
    )


class ResidualFiles:
    """A deployed site's compression residuals for one run, one ``.npz`` file per model id
    in ``STATE/residuals/run-RUN/`` (folders 0700, files 0600, as the DP ledger: the
    residual is derived from the site's training, as its update is). A file is written
    whole to a temporary name and then renamed, so a task killed mid-write leaves the
    previous residual, never a torn one. Runs whose residuals have not been written for
    ``RESIDUAL_KEEP_S`` (a run rewrites them every training round) are deleted when
    another run writes."""

    def __init__(self, state_dir: Path, run_id: int) -> None:
        self.root = state_dir / RESIDUALS_DIR
        self.folder = self.root / f"run-{int(run_id)}"

    def path(self, model_id: str) -> Path:
        name = hashlib.sha256(model_id.encode()).hexdigest()[:24]  # any id, a safe file name
        return self.folder / f"{name}.npz"

    def recall(self, model_id: str) -> dict[str, np.ndarray] | None:
        path = self.path(model_id)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as saved:  # names, then arr_0, arr_1, ...
            return {str(k): saved[f"arr_{i}"] for i, k in enumerate(saved["names"])}

    def keep(self, model_id: str, residual: dict[str, np.ndarray]) -> None:
        for folder in (self.root, self.folder):  # the site's alone, as its DP ledger
            private_folder(folder)
        with atomic_file(self.path(model_id), mode=0o600) as f:
            # tensor names as data: any name is a valid key
            np.savez(f, *residual.values(), names=np.array(list(residual), dtype=str))
        self.prune()

    def prune(self, now: float | None = None) -> list[Path]:
        """Delete other runs' residual folders untouched for ``RESIDUAL_KEEP_S``; those
        deleted."""
        now = time.time() if now is None else now
        gone = []
        for run in self.root.glob("run-*"):
            if run == self.folder or not run.is_dir():
                continue
            newest = max((f.stat().st_mtime for f in run.iterdir()), default=run.stat().st_mtime)
            if now - newest > RESIDUAL_KEEP_S:
                shutil.rmtree(run, ignore_errors=True)
                gone.append(run)
        return gone


def residual_files(deployed: bool, state_dir: str, run_id: int) -> ResidualFiles | None:
    """The residual files of a deployed site with a state folder (``policy.state-dir``),
    else None: ``Context.state``, which a simulation keeps in memory (nothing to send)."""
    return ResidualFiles(Path(state_dir), run_id) if deployed and state_dir else None
