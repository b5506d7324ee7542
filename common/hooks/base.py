"""What a domain-adaptation hook is: a small named object acting at named points.

A hook subclasses ``Hook``, sets ``name`` and ``points`` and overrides the
methods of the points it acts on; every other method is the identity. The five
points, in the order a run meets them:

- ``PREPROCESS`` (site): ``fit`` site-level statistics from the site's images
  (never labels), optionally share them (``shares_statistics``: the server
  ``combine``-s them into one shared result), then ``preprocess`` images.
- ``SHARING`` (both sides): ``local_keys`` names the state-dict entries that
  stay at the site and are never averaged.
- ``OBJECTIVE`` (site): ``penalty`` is added to the task loss during local training.
- ``AGGREGATION`` (server): ``wrap_strategy`` wraps the Flower strategy.
- ``TEST_TIME`` (site): ``adapt`` changes a model in place from unlabeled
  images before a site scores a model it did not train.

Hooks are built from the run config (``hooks.use``), so every party builds the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from common.config import RunConfig
    from common.device import Compute

Statistics = dict[str, list[float]]  # what a PREPROCESS hook fits: named float vectors


class HookPoint(StrEnum):
    """The points of a run where a hook can act (see the module docstring)."""

    PREPROCESS = "preprocess"
    SHARING = "sharing"
    OBJECTIVE = "objective"
    AGGREGATION = "aggregation"
    TEST_TIME = "test-time"


class HookError(ValueError):
    """A hook cannot act on this model or these data, or its statistics are malformed."""


class Hook:
    """Base class: identity at every point. Subclasses override the points they name."""

    name: ClassVar[str] = ""
    points: ClassVar[tuple[HookPoint, ...]] = ()
    shares_statistics: ClassVar[bool] = False  # PREPROCESS: send ``fit`` results to the server

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def check_model(self, model: nn.Module) -> None:
        """Raise ``HookError`` if the hook cannot act on ``model`` (never silently no-op)."""

    # PREPROCESS
    def fit(self, images: torch.Tensor) -> Statistics:
        """Site-level statistics of a site's images, (N, C, *spatial) in the windowed scale."""
        return {}

    def combine(self, stats: Sequence[tuple[float, Statistics]]) -> Statistics:
        """Server: one shared result from (weight, statistics) of the training sites."""
        return {}

    def preprocess(
        self, images: torch.Tensor, fitted: Statistics, shared: Statistics
    ) -> torch.Tensor:
        """The site's images mapped with its own ``fitted`` and the ``shared`` statistics."""
        return images

    # SHARING
    def local_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys that stay at the site and are never sent or averaged."""
        return set()

    # OBJECTIVE
    def penalty(
        self, model: nn.Module, reference: Mapping[str, torch.Tensor], config: Mapping[str, Any]
    ) -> torch.Tensor | None:
        """A term added to the local loss; ``reference``: the received global weights."""
        return None

    # AGGREGATION
    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        """Server: the strategy this hook aggregates with (default: unchanged)."""
        return strategy

    # TEST_TIME
    def adapt(self, model: nn.Module, images: torch.Tensor, compute: Compute) -> None:
        """Adapt ``model`` in place to unlabeled ``images`` of a site it was not trained on."""

    def describe(self) -> str:
        """One line for reports: the name and the settings that matter."""
        return self.name
