"""One round's screen survives any reply: a bad one is a named rejection in both records,
and the round goes on with the others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl

from common.config import RunConfig
from common.keys import RecordKey
from server.aggregation import RoundAggregator
from server.audit import AuditTrail, entries
from server.round_screen import RoundScreen
from server.trust import ServerTrust

pytestmark = pytest.mark.usefixtures("flower_task")

SITES = ["site-a", "site-b", "site-c"]


def _weights(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full(4, value, np.float32))})


def _reply(sent: Message, value: float, **metrics: Any) -> Message:
    values = {"num-examples": 10, "train-loss": 0.5, **metrics}
    content = RecordDict(
        {RecordKey.ARRAYS: _weights(value), RecordKey.METRICS: MetricRecord(values)}
    )
    return Message(content, reply_to=sent)


def _screen(tmp_path: Path, declared: dict[str, int], strategy: Any = None) -> RoundScreen:
    cfg = RunConfig().replace(
        {"output.run-dir": str(tmp_path), "trust.sign-updates": False, "trust.norm-z": 0.0}
    )
    shared = _weights(0.0)
    aggregator = RoundAggregator(
        strategy or fl.FedAvg(), shared, SITES, park_root=tmp_path, track_norms=True,
        declared=declared,
    )  # fmt: skip
    trust = ServerTrust(cfg, tmp_path, "run-1")
    return RoundScreen(cfg, trust, aggregator, shared, SITES, 1, "global", declared=declared)


def _sent(node: int) -> Message:
    return Message(RecordDict({}), dst_node_id=node, message_type=MessageType.TRAIN)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"train-loss": float("nan")}, "metric 'train-loss' = nan: must be finite"),
        ({"num-examples": float("inf")}, "metric 'num-examples' = inf: must be finite"),
        ({"num-examples": 11}, "num-examples = 11: more than the 10 training case(s)"),
    ],
    ids=["metric-nan", "metric-inf", "examples-over-declared"],
)
def test_a_bad_reply_is_rejected_recorded_and_the_round_applied_without_it(
    tmp_path: Path, bad: dict[str, Any], reason: str
) -> None:
    screen = _screen(tmp_path, {s: 10 for s in SITES})
    sent = [_sent(n) for n in (1, 2, 3)]
    screen.on_reply(_reply(sent[0], 1.0), "site-a")
    screen.on_reply(_reply(sent[1], 3.0, **{"num-examples": 5}), "site-b")
    screen.on_reply(_reply(sent[2], 100.0, **bad), "site-c")  # before: a crash in the digest
    new = screen.result(sent)
    assert new is not None  # min-sites = 2 updates remain
    # the weighted mean of a (10 cases, 1.0) and b (5 cases, 3.0): (10 + 15) / 15
    np.testing.assert_allclose(new["w"].numpy(), np.full(4, 25 / 15, np.float32), rtol=1e-6)
    assert set(screen.accepted) == {"site-a", "site-b"}
    assert reason in screen.rejected["site-c"]
    record = screen.round_record(True, None, 0.1)
    json.dumps(record, allow_nan=False)  # rounds.jsonl stays strict JSON
    assert record["rejected"] == screen.rejected and "site-c" not in record["sites"]
    trail = AuditTrail(tmp_path / "audit")
    trail.append("round", screen.audit_record(new, None))  # canonical JSON: no crash
    update = entries(tmp_path / "audit")[-1]["data"]["updates"]["site-c"]
    assert update["accepted"] is False and reason in update["reason"]


def test_an_update_whose_norm_overflows_is_rejected_not_folded(tmp_path: Path) -> None:
    """`norm-overflow`: finite float32 values whose distance from the global model overflows."""
    screen = _screen(tmp_path, {})
    screen.shared["w"] = Array(np.full(4, -3e38, np.float32))
    sent = [_sent(n) for n in (1, 2, 3)]
    screen.on_reply(_reply(sent[0], -1e37), "site-a")
    screen.on_reply(_reply(sent[1], -2e37), "site-b")
    screen.on_reply(_reply(sent[2], 3e38), "site-c")
    assert screen.rejected == {"site-c": "update norm is not finite (inf): values overflow"}
    new = screen.result(sent)
    assert new is not None
    np.testing.assert_allclose(new["w"].numpy(), np.full(4, -1.5e37), rtol=1e-6)
    json.dumps(screen.round_record(True, None, 0.1), allow_nan=False)


def test_a_round_whose_weighted_sum_overflows_is_not_applied(tmp_path: Path) -> None:
    """Each update finite with a finite norm, but 10 x 3e38 overflows float32: the global
    model is left as it was, never made infinite."""
    screen = _screen(tmp_path, {})
    sent = [_sent(n) for n in (1, 2, 3)]
    for message, site in zip(sent, SITES, strict=True):
        screen.on_reply(_reply(message, 3e38), site)
    assert set(screen.accepted) == set(SITES)
    assert screen.result(sent) is None
