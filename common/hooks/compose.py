"""A run's hooks composed in the order ``hooks.use`` lists them.

Composition rules (the documented order):
- PREPROCESS: each hook fits its statistics on the output of the previous one,
  and maps images in list order.
- SHARING: a key is local if any hook keeps it local (union).
- OBJECTIVE: the penalties are summed.
- AGGREGATION: strategies are wrapped in list order (the first hook's wrapper
  is innermost).
- TEST_TIME: adaptations run in list order on the same model.
A FedProx term also applies when a server sends Flower's ``proximal-mu`` key
without the hook being named, so a stock Flower FedProx server drives hepafed sites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from common.hooks.base import Hook, HookPoint, Statistics
from common.hooks.proximal import FedProx
from common.hooks.registry import hook_class
from common.keys import ConfigKey, PrivacyMode
from common.privacy import running_statistics

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from common.config import RunConfig
    from common.device import Compute

# What a site reports for how it scored a model (Evaluation.adaptation)
ADAPT_NONE = "none"  # the model as received
ADAPT_OWN_LAYERS = "own-local-layers"  # a training site with its own local layers


class HookSet:
    """The hooks of one run config, in order."""

    def __init__(self, cfg: RunConfig, config: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.hooks: list[Hook] = [hook_class(name)(cfg) for name in cfg.hooks.use]
        mu = float((config or {}).get(ConfigKey.PROXIMAL_MU, 0.0))
        if mu > 0 and not any(isinstance(h, FedProx) for h in self.hooks):
            self.hooks.append(FedProx(cfg))
        # at most one hook shares statistics: RunConfig's own check (common.config), which
        # every RunConfig passes when it is made; FedProx added here shares none

    def at(self, point: HookPoint) -> list[Hook]:
        return [h for h in self.hooks if point in h.points]

    def check_model(self, model: nn.Module) -> None:
        for hook in self.hooks:
            hook.check_model(model)

    # PREPROCESS
    @property
    def shares_statistics(self) -> bool:
        return any(h.shares_statistics for h in self.at(HookPoint.PREPROCESS))

    def statistics_key(self) -> tuple[str, ...]:
        """What the pooled statistics depend on: every PREPROCESS hook up to and
        including the one that shares them (each fits on the previous one's output)."""
        key: list[str] = []
        for hook in self.at(HookPoint.PREPROCESS):
            key.append(hook.describe())
            if hook.shares_statistics:
                return tuple(key)
        return ()

    def fit(self, images: torch.Tensor, shared: Mapping[str, Statistics]) -> dict[str, Statistics]:
        """Every PREPROCESS hook's statistics, each fitted on the previous hook's output."""
        fitted: dict[str, Statistics] = {}
        hooks = self.at(HookPoint.PREPROCESS)
        for i, hook in enumerate(hooks):
            fitted[hook.name] = hook.fit(images)
            if i + 1 < len(hooks):  # the next hook fits on this one's output
                images = hook.preprocess(images, fitted[hook.name], shared.get(hook.name, {}))
        return fitted

    def shared_statistics(self, images: torch.Tensor) -> dict[str, Statistics]:
        """What a site sends for the (at most one) hook that shares statistics,
        fitted on the output of the PREPROCESS hooks before it."""
        out: dict[str, Statistics] = {}
        for hook in self.at(HookPoint.PREPROCESS):
            stats = hook.fit(images)
            if hook.shares_statistics:
                out[hook.name] = stats
                break
            images = hook.preprocess(images, stats, {})
        return out

    def combine(
        self, stats: Sequence[tuple[float, Mapping[str, Statistics]]]
    ) -> dict[str, Statistics]:
        """Server: the shared result of every sharing hook from the sites' statistics."""
        return {
            h.name: h.combine([(w, s[h.name]) for w, s in stats if h.name in s])
            for h in self.at(HookPoint.PREPROCESS)
            if h.shares_statistics
        }

    def preprocess(
        self,
        images: torch.Tensor,
        fitted: Mapping[str, Statistics],
        shared: Mapping[str, Statistics],
    ) -> torch.Tensor:
        for hook in self.at(HookPoint.PREPROCESS):
            images = hook.preprocess(images, fitted[hook.name], shared.get(hook.name, {}))
        return images

    # SHARING
    def local_keys(self, model: nn.Module) -> set[str]:
        """Keys kept at the site: the hooks' union, plus normalisation running statistics
        under differential privacy (``common.privacy.running_statistics``)."""
        keys: set[str] = set()
        for hook in self.at(HookPoint.SHARING):
            keys |= hook.local_keys(model)
        if self.cfg.privacy.mode != PrivacyMode.NONE:
            keys |= running_statistics(model)
        return keys

    # OBJECTIVE
    def penalty(
        self, model: nn.Module, reference: Mapping[str, torch.Tensor], config: Mapping[str, Any]
    ) -> torch.Tensor | None:
        terms = [
            t
            for h in self.at(HookPoint.OBJECTIVE)
            if (t := h.penalty(model, reference, config)) is not None
        ]
        return torch.stack(terms).sum() if terms else None

    # AGGREGATION
    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        for hook in self.at(HookPoint.AGGREGATION):
            strategy = hook.wrap_strategy(strategy)
        return strategy

    # TEST_TIME
    def adapt(self, model: nn.Module, images: torch.Tensor, compute: Compute) -> str:
        """Run the TEST_TIME hooks; what was done, for the report."""
        done = [h.name for h in self.at(HookPoint.TEST_TIME)]
        for hook in self.at(HookPoint.TEST_TIME):
            hook.adapt(model, images, compute)
        return "+".join(done) if done else ADAPT_NONE

    def describe(self) -> list[str]:
        return [h.describe() for h in self.hooks]
