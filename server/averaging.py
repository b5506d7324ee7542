"""Averaging of the last rounds' global models (``federation.average-last``), SWA-style.

With ``federation.average-last = K`` the federation's final model is the mean of
the global models after its last K rounds, computed on the server. Floating
tensors are averaged elementwise, BatchNorm running means and variances
included: the server holds no images to recompute them, and FedAvg already
averages those statistics across sites, so averaging them across rounds is the
same operation. Integer tensors (BatchNorm's ``num_batches_tracked``) keep the
last round's value. Layers a hook keeps at the sites (FedBN, SiloBN) never reach
the server: each site keeps its last round's, unaveraged.

The window of models travels in every round's checkpoint (``state_dict``), so a
resumed run averages the same rounds. The averaged model replaces the last
round's checkpoint (same round, resume state kept) and is recorded in the audit
trail, so the model hash of the checkpoint, the final evaluations and the
report is the averaged model's.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord

from common.keys import RecordPhase
from server.records import checkpoint_name, load_checkpoint
from server.trust import file_sha256

if TYPE_CHECKING:
    from server.federation import Federation

log = logging.getLogger("hepafed.progress")

RESUME_KEY = "late-average"  # the window's entry in a checkpoint's resume state


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The elementwise mean of state dicts with the same keys and shapes (computed in
    float64, returned in each tensor's dtype); integer tensors keep the last state's value."""
    if not states:
        raise ValueError("average_states needs at least one state dict")
    keys = list(states[-1])
    for i, state in enumerate(states):
        if list(state) != keys:
            raise ValueError(
                f"state {i} has keys {sorted(set(state) ^ set(keys))[:5]} that the last state "
                "does not share (or a different key order): cannot average them"
            )
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        last = states[-1][key]
        shapes = {tuple(s[key].shape) for s in states}
        if len(shapes) > 1:
            raise ValueError(f"{key}: shapes {sorted(shapes)} differ: cannot average them")
        if not last.is_floating_point():
            out[key] = last.clone()
            continue
        total = torch.zeros(last.shape, dtype=torch.float64)
        for state in states:
            total += state[key].detach().to("cpu", torch.float64)
        out[key] = (total / len(states)).to(last.dtype)
    return out


class LateAverage:
    """The global models of the last ``last`` rounds (0: off), and their mean."""

    def __init__(self, last: int) -> None:
        if last < 0:
            raise ValueError(f"federation.average-last = {last!r}: must be >= 0")
        self.last = last
        self._window: deque[tuple[int, dict[str, torch.Tensor]]] = deque(maxlen=max(last, 1))

    @property
    def rounds(self) -> list[int]:
        """The rounds whose models the window holds, oldest first."""
        return [rnd for rnd, _ in self._window] if self.last else []

    def add(self, server_round: int, arrays: ArrayRecord) -> None:
        """Keep the global model after ``server_round`` (dropping the oldest past ``last``)."""
        if self.last:
            self._window.append((server_round, arrays.to_torch_state_dict()))

    def state_dict(self) -> dict[str, Any]:
        """The window for a checkpoint's resume state ({} when off)."""
        if not self.last:
            return {}
        return {RESUME_KEY: [{"round": rnd, "model": state} for rnd, state in self._window]}

    def load_state_dict(self, resume: Mapping[str, Any]) -> None:
        """Restore the window from a checkpoint's resume state (missing: an empty window)."""
        self._window.clear()
        for item in resume.get(RESUME_KEY, []) if self.last else []:
            self._window.append((int(item["round"]), dict(item["model"])))

    def result(self) -> ArrayRecord | None:
        """The mean of the window's models; None when off or empty."""
        if not self.rounds:
            return None
        return ArrayRecord(average_states([state for _, state in self._window]))


def rewrite_checkpoint(fed: Federation, model: str, arrays: ArrayRecord, **why: Any) -> None:
    """Write ``arrays`` as ``model``'s final weights over its last checkpoint (keeping that
    checkpoint's round, statistics and resume state) and record it in the audit trail,
    with ``why`` (e.g. the averaged or the selected rounds)."""
    path = fed.recorder.run_dir / checkpoint_name(model)
    last = load_checkpoint(path)
    fed.recorder.checkpoint(
        arrays.to_torch_state_dict(),
        fed.cfg,
        int(last["round"]),
        model,
        str(last.get("shared_statistics", "")),
        resume=last.get("resume") or {},
    )
    fed.audit.append(
        "checkpoint",
        {
            "model": model,
            "round": int(last["round"]),
            "file": path.name,
            "sha256": file_sha256(path),
            "model_sha256": fed.trust.model_hash(arrays),
            **why,
        },
    )


def finish_average(
    fed: Federation, late: LateAverage, arrays: ArrayRecord, model: str
) -> ArrayRecord:
    """The final model of ``model``'s federation: ``arrays`` (the last round's), or with
    late averaging the window's mean, written over the last checkpoint and recorded."""
    averaged = late.result()
    if averaged is None:
        return arrays
    rewrite_checkpoint(fed, model, averaged, averaged_rounds=late.rounds)
    fed.recorder.log_round(
        {"model": model, "phase": RecordPhase.AVERAGE.value, "rounds": late.rounds}
    )
    log.info("%s: final model = mean of rounds %s", model, late.rounds)
    return averaged
