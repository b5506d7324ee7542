"""FedProx (Li et al., MLSys 2020): a proximal term that keeps local training near
the global model, ``mu / 2 * sum ||w - w_global||^2`` over the shared trainable
parameters.

The server side wraps the strategy so that every training message carries
``proximal-mu`` in its config, the key Flower's own ``FedProx`` strategy uses;
the site reads mu from that key, so a stock Flower FedProx server drives
hepafed sites too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from common.hooks.base import Hook, HookPoint
from common.keys import ConfigKey


def proximal_term(
    model: nn.Module, reference: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor | None:
    """``mu / 2 * sum ||w - w_ref||^2`` over trainable parameters present in ``reference``."""
    if mu <= 0:
        return None
    terms = [
        (p - reference[name].to(device=p.device, dtype=p.dtype)).pow(2).sum()
        for name, p in model.named_parameters()
        if p.requires_grad and name in reference
    ]
    if not terms:
        return None
    return 0.5 * mu * torch.stack(terms).sum()


class ProximalStrategy(Strategy):
    """A Flower strategy that adds ``proximal-mu`` to every training config."""

    def __init__(self, inner: Strategy, mu: float) -> None:
        self.inner, self.mu = inner, mu

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config = ConfigRecord({**config, ConfigKey.PROXIMAL_MU.value: self.mu})
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


class FedProx(Hook):
    """The proximal local objective, with mu from the server's ``hooks.prox-mu``."""

    name: ClassVar[str] = "fedprox"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.OBJECTIVE, HookPoint.AGGREGATION)

    def penalty(
        self, model: nn.Module, reference: Mapping[str, torch.Tensor], config: Mapping[str, Any]
    ) -> torch.Tensor | None:
        mu = float(config.get(ConfigKey.PROXIMAL_MU, 0.0))
        return proximal_term(model, reference, mu)

    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        return ProximalStrategy(strategy, self.cfg.hooks.prox_mu)

    def describe(self) -> str:
        return f"fedprox (mu = {self.cfg.hooks.prox_mu:g})"
