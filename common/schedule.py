"""The local learning rate across federated rounds (``train.lr-schedule``, ``train.warmup-rounds``).

Pure functions of the run config and the round number, so the server, every
site and the simulated baselines agree on the lr of each round. Rounds count
from 1 to ``federation.num-rounds``:

- warm-up: round ``r <= W`` (``W = train.warmup-rounds``, at most
  ``num-rounds - 1`` so that a short run still ends at full schedule: a one-round
  run has no warm-up) trains at ``lr * r / (W + 1)``, a linear ramp that reaches
  ``lr`` at round ``W + 1``;
- ``constant``: ``lr`` in every later round;
- ``cosine``: from ``lr`` at round ``W + 1`` down to ``lr * train.lr-min-factor``
  at the last round, along half a cosine.

A model trained alone for the whole budget (a local-only model, the pooled
baseline) spreads the same schedule over its epochs (``epoch_lrs``), so the
three training regimes follow one recipe.
"""

from __future__ import annotations

import math

from common.config import RunConfig
from common.keys import LrSchedule


def round_lr(cfg: RunConfig, server_round: int) -> float:
    """The local lr of federated round ``server_round`` (1-based; clamped to the run's rounds)."""
    t, total = cfg.train, cfg.federation.num_rounds
    rnd = min(max(server_round, 1), total)
    warm = warmup(cfg)
    if rnd <= warm:
        return t.lr * rnd / (warm + 1)
    if t.lr_schedule == LrSchedule.CONSTANT:
        return t.lr
    span = total - warm - 1  # rounds after the first full-lr round
    progress = (rnd - warm - 1) / span if span > 0 else 0.0
    floor = t.lr_min_factor
    return t.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup(cfg: RunConfig) -> int:
    """The warm-up rounds this run uses: ``train.warmup-rounds``, at most all but the last round."""
    return min(cfg.train.warmup_rounds, cfg.federation.num_rounds - 1)


def epoch_lrs(cfg: RunConfig, epochs: int) -> list[float]:
    """The lr of each of ``epochs`` epochs that stand for all of the run's rounds:
    epoch ``i`` takes the lr of round ``floor(i * rounds / epochs) + 1``."""
    total = cfg.federation.num_rounds
    return [round_lr(cfg, i * total // epochs + 1) for i in range(epochs)]


def is_constant(cfg: RunConfig) -> bool:
    """Whether every round trains at ``train.lr`` (no warm-up, no decay)."""
    return cfg.train.lr_schedule == LrSchedule.CONSTANT and warmup(cfg) == 0
