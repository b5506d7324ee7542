"""The final evaluation of a model that no site could score stops the run.

Case ``dp-all-evaluations-failed`` (docs/trust.md): noised BatchNorm statistics made
every site's scores NaN, each evaluation failed, and the run still logged "finished".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message

from common.config import RunConfig
from server.federation import Federation
from server.final_evaluation import EvaluationsFailedError
from server.sites import FederationError, SiteInfo

pytestmark = pytest.mark.usefixtures("flower_task")


class Recorder:
    def __init__(self) -> None:
        self.rounds: list[dict[str, Any]] = []

    def log_round(self, entry: dict[str, Any]) -> None:
        self.rounds.append(entry)


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def append(self, kind: str, entry: dict[str, Any]) -> None:
        self.entries.append((kind, entry))


class Trust:
    def model_hash(self, arrays: ArrayRecord) -> str:
        return "0" * 64


def _federation(reasons: dict[str, str | None]) -> Federation:
    """A federation whose sites answer an evaluation with ``reasons[site]`` as an error
    (None: no reply at all)."""
    fed = Federation.__new__(Federation)
    fed.cfg = RunConfig()
    fed.sites = [SiteInfo(i + 1, name, "train", 10, 5, "sha") for i, name in enumerate(reasons)]
    fed.names = {s.node_id: s.name for s in fed.sites}
    fed.recorder, fed.audit, fed.trust = Recorder(), Audit(), Trust()  # type: ignore[assignment]
    fed.message_config = lambda *args, **kwargs: ConfigRecord({})  # type: ignore[method-assign]

    def send(messages: Any, label: str, on_reply: Any = None) -> list[Message]:
        replies = []
        for message in messages:
            reason = reasons[fed.names[message.metadata.dst_node_id]]
            if reason is not None:
                replies.append(Message(Error(code=0, reason=reason), reply_to=message))
        return replies

    fed.send = send  # type: ignore[method-assign]
    return fed


def test_a_model_no_site_could_score_fails_the_run_naming_each_site() -> None:
    fed = _federation({"a": "scores are NaN", "b": "scores are NaN", "c": None})
    arrays = ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))})
    splits = {"a": "test", "b": "test", "c": "all"}
    with pytest.raises(EvaluationsFailedError) as e:
        fed.evaluate(arrays, splits, "without-c")
    assert isinstance(e.value, FederationError)  # the ServerApp exits non-zero
    message = str(e.value)
    assert message.startswith("every final evaluation of without-c failed (3 site(s): ")
    assert "a: scores are NaN; b: scores are NaN; c: no reply" in message
    assert e.value.failed == {"a": "scores are NaN", "b": "scores are NaN", "c": "no reply"}
    # what failed is on record before the run stops
    record = fed.recorder.rounds[-1]  # type: ignore[attr-defined]
    assert record["phase"] == "final-evaluate" and record["failed"] == e.value.failed
    assert fed.audit.entries[-1][0] == "final-evaluation"  # type: ignore[attr-defined]


def test_nothing_asked_is_not_a_failure() -> None:
    fed = _federation({"a": "scores are NaN"})
    arrays = ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))})
    assert fed.evaluate(arrays, {}, "global") == {}
