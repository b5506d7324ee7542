"""What the report needs from the run config: the task, ``eval.*`` and the hooks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.config import RunConfig
from common.config_sections import EvalConfig


@dataclass(frozen=True)
class ReportSettings:
    """What the report needs from the run config: the task and ``eval.*``."""

    task: str
    ev: EvalConfig
    hooks: tuple[str, ...] = ()  # descriptions of the run's hooks, in order

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> ReportSettings:
        from common.hooks import HookSet

        cfg = RunConfig.from_flat(flat)
        return cls(cfg.task, cfg.eval, tuple(HookSet(cfg).describe()))

    def __getattr__(self, name: str) -> Any:  # cfg.level, cfg.margin ... read eval.*
        return getattr(self.ev, name)
