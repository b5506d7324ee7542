"""The final model as the round that scored best on validation data
(``federation.select-round = "best-val-auc"``).

After every round the training sites with a validation split score the global model on
it (``server.rounds.monitor``); the round's score is the pooled validation AUC, the
mean of the sites' AUCs weighted by their cases (sites with insufficient data add
nothing). The best round's model is kept (in memory, and in each checkpoint's resume
state, so a resumed run still knows it); after the last round it becomes the final
model, written over the last checkpoint and recorded (``rounds.jsonl`` phase
``select``, and the audit trail). A later round replaces the best only when it scores
strictly higher, so ties keep the earlier, less trained model. The test split is never
consulted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord

from common.keys import MetricKey, RecordPhase
from server.averaging import rewrite_checkpoint

if TYPE_CHECKING:
    from server.federation import Federation

log = logging.getLogger(__name__)

RESUME_KEY = "best-round"


def validation_auc(metrics: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The case-weighted mean AUC of the sites' validation summaries (None: no site has
    an AUC)."""
    total = weight = 0.0
    for record in metrics.values():
        auc, n = record.get(MetricKey.AUC.value), record.get(MetricKey.N.value)
        if auc is None or not n:
            continue
        total += float(auc) * float(n)
        weight += float(n)
    return total / weight if weight else None


class BestRound:
    """The round with the highest validation AUC so far, and its model."""

    def __init__(self) -> None:
        self.round: int | None = None
        self.score: float | None = None
        self.scores: dict[int, float | None] = {}
        self._model: dict[str, torch.Tensor] | None = None

    def add(self, server_round: int, arrays: ArrayRecord, score: float | None) -> None:
        """Keep ``server_round``'s model if its score beats the best so far."""
        self.scores[server_round] = score
        if score is not None and (self.score is None or score > self.score):
            self.round, self.score = server_round, score
            self._model = {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint's resume state."""
        if self.round is None:
            return {RESUME_KEY: {"scores": self.scores}}
        return {
            RESUME_KEY: {
                "round": self.round,
                "score": self.score,
                "model": self._model,
                "scores": self.scores,
            }
        }

    def load_state_dict(self, resume: Mapping[str, Any]) -> None:
        state = resume.get(RESUME_KEY) or {}
        self.scores = {int(k): v for k, v in (state.get("scores") or {}).items()}
        self.round = int(state["round"]) if state.get("round") is not None else None
        self.score = state.get("score")
        self._model = dict(state["model"]) if state.get("model") is not None else None

    def result(self) -> ArrayRecord | None:
        return None if self._model is None else ArrayRecord(self._model)


def finish_best(fed: Federation, best: BestRound, arrays: ArrayRecord, model: str) -> ArrayRecord:
    """The final model of ``model``'s federation: the best round's, written over the last
    checkpoint and recorded; the last round's when no round had a validation AUC."""
    chosen = best.result()
    entry: dict[str, Any] = {
        "model": model,
        "round": best.round,
        "val_auc": best.score,
        "scores": {str(k): v for k, v in sorted(best.scores.items())},
    }
    if chosen is None:
        log.warning("%s: no round has a validation AUC: the final model is the last round's",
                    model)  # fmt: skip
        fed.recorder.log_round({**entry, "phase": RecordPhase.SELECT.value})
        return arrays
    rewrite_checkpoint(fed, model, chosen, selected_round=best.round)
    fed.recorder.log_round({**entry, "phase": RecordPhase.SELECT.value})
    log.info("%s: final model = round %d (validation AUC %.3f)", model, best.round, best.score)
    return chosen
