"""The best round by validation AUC (``server.round_selection``): the score, ties, and the
state a resumed run restores."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from server.round_selection import BestRound, validation_auc


def _model(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full((2, 2), value, dtype=np.float32))})


def test_the_score_weights_each_site_by_its_cases_and_skips_insufficient_ones() -> None:
    metrics = {
        "a": {"auc": 0.9, "n": 30},
        "b": {"auc": 0.6, "n": 10},
        "c": {"n": 4, "insufficient": 1.0},  # no AUC: adds nothing
    }
    assert validation_auc(metrics) == pytest.approx((0.9 * 30 + 0.6 * 10) / 40)
    assert validation_auc({"c": {"n": 4}}) is None


def test_a_later_round_replaces_the_best_only_when_strictly_better() -> None:
    best = BestRound()
    best.add(1, _model(1.0), 0.8)
    best.add(2, _model(2.0), 0.8)  # a tie keeps the earlier model
    best.add(3, _model(3.0), None)  # no AUC: no candidate
    assert best.round == 1
    best.add(4, _model(4.0), 0.85)
    result = best.result()
    assert best.round == 4 and result is not None
    assert float(result["w"].numpy()[0, 0]) == 4.0


def test_a_resumed_run_keeps_the_best_round_so_far() -> None:
    best = BestRound()
    best.add(1, _model(1.0), 0.7)
    best.add(2, _model(2.0), 0.9)
    restored = BestRound()
    restored.load_state_dict(best.state_dict())
    assert (restored.round, restored.score, restored.scores) == (2, 0.9, {1: 0.7, 2: 0.9})
    restored.add(3, _model(3.0), 0.8)
    result = restored.result()
    assert restored.round == 2 and result is not None
    assert float(result["w"].numpy()[0, 0]) == 2.0
    empty = BestRound()
    empty.load_state_dict({})
    assert empty.round is None and empty.result() is None
