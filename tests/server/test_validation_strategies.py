"""Update validation on hand-built replies, and strategies by name."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl

from common.config import RunConfig
from common.keys import StrategyName
from server.strategies import build_strategy
from server.validation import update_problem

pytestmark = pytest.mark.usefixtures("flower_task")

REF = ArrayRecord({"w": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(3, np.float32))})


def reply(arrays: dict[str, np.ndarray], n: float = 10.0, extra: bool = False) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n}),
        }
    )
    if extra:
        content["more"] = MetricRecord({"x": 1.0})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


GOOD = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}


def test_good_update_passes() -> None:
    assert update_problem(reply(GOOD), REF) is None


@pytest.mark.parametrize(
    ("arrays", "n", "extra", "expected"),
    [
        ({"w": GOOD["w"]}, 10.0, False, "tensor names differ"),
        ({**GOOD, "w": np.ones((3, 2), np.float32)}, 10.0, False, "tensor 'w' is float32[3, 2]"),
        ({**GOOD, "b": np.ones(3, np.float64)}, 10.0, False, "tensor 'b' is float64[3]"),
        ({**GOOD, "b": np.array([1, np.nan, 1], np.float32)}, 10.0, False, "NaN or Inf"),
        ({**GOOD, "w": np.full((2, 3), np.inf, np.float32)}, 10.0, False, "NaN or Inf"),
        (GOOD, 0.0, False, "must be a positive number"),
        (GOOD, 10.0, True, "expected one MetricRecord, got 2"),
    ],
)
def test_bad_updates_are_named(
    arrays: dict[str, np.ndarray], n: float, extra: bool, expected: str
) -> None:
    problem = update_problem(reply(arrays, n, extra), REF)
    assert problem is not None and expected in problem


EXPECTED = {
    "fedavg": fl.FedAvg,
    "fedavgm": fl.FedAvgM,
    "fedadam": fl.FedAdam,
    "fedyogi": fl.FedYogi,
    "fedmedian": fl.FedMedian,
    "fedtrimmedavg": fl.FedTrimmedAvg,
    "krum": fl.Krum,
}


@pytest.mark.parametrize("name", [s.value for s in StrategyName])
def test_every_strategy_name_builds_flowers_strategy(name: str) -> None:
    cfg = RunConfig().replace({"federation.strategy": name, "federation.min-sites": 3})
    strategy = build_strategy(cfg, n_train_sites=4)
    assert type(strategy) is EXPECTED[name]
    assert strategy.min_train_nodes == 3
    assert build_strategy(cfg, n_train_sites=2).min_train_nodes == 2


def test_strategy_parameters_come_from_config() -> None:
    cfg = RunConfig().replace({"federation.strategy": "fedtrimmedavg", "federation.trim-beta": 0.3})
    assert build_strategy(cfg, 4).beta == 0.3  # type: ignore[attr-defined]
    cfg = RunConfig().replace({"federation.strategy": "fedadam", "federation.server-lr": 0.05})
    assert build_strategy(cfg, 4).eta == 0.05  # type: ignore[attr-defined]


def test_fedavg_aggregates_by_example_count() -> None:
    # Hand-computed: (1 * 10 + 4 * 30) / 40 = 3.25
    strategy = build_strategy(RunConfig(), 2)
    replies = [
        reply({"w": np.full((2, 3), 1.0, np.float32), "b": np.zeros(3, np.float32)}, 10.0),
        reply({"w": np.full((2, 3), 4.0, np.float32), "b": np.zeros(3, np.float32)}, 30.0),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 3.25)
