"""Aggregation strategies by name: Flower's own, configured from the run config."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from common.config import RunConfig
from common.keys import MetricKey, RecordKey, StrategyName


def build_strategy(cfg: RunConfig, n_train_sites: int) -> Strategy:
    """The strategy named by ``federation.strategy`` (names validated by RunConfig)."""
    fed = cfg.federation
    common: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min(fed.min_sites, n_train_sites),
        "min_evaluate_nodes": 0,
        "min_available_nodes": 0,  # sites are discovered before the first round
        "weighted_by_key": MetricKey.NUM_EXAMPLES.value,
        "arrayrecord_key": RecordKey.ARRAYS.value,
        "configrecord_key": RecordKey.CONFIG.value,
    }
    name = fed.strategy
    if name is StrategyName.FEDAVG:
        return FedAvg(**common)
    if name is StrategyName.FEDAVGM:
        return FedAvgM(
            **common, server_learning_rate=fed.server_lr, server_momentum=fed.server_momentum
        )
    if name is StrategyName.FEDADAM:
        return FedAdam(**common, eta=fed.server_lr)
    if name is StrategyName.FEDYOGI:
        return FedYogi(**common, eta=fed.server_lr)
    if name is StrategyName.FEDMEDIAN:
        return FedMedian(**common)
    if name is StrategyName.FEDTRIMMEDAVG:
        return FedTrimmedAvg(**common, beta=fed.trim_beta)
    return Krum(**common, num_malicious_nodes=fed.krum_byzantine)
