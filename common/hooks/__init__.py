"""Domain-adaptation hooks: named, composable objects that act at five points of a run.

See ``common.hooks.base`` for the points and ``docs/hooks.md`` for how to
write one. Built-in names: ``zscore``, ``percentile``, ``nyul`` (harmonisation),
``fedbn``, ``silobn`` (local normalisation layers), ``fedprox`` (proximal
objective), ``bn-adapt``, ``tent`` (test-time adaptation).
"""

from common.hooks.base import Hook, HookError, HookPoint, Statistics
from common.hooks.compose import ADAPT_NONE, ADAPT_OWN_LAYERS, HookSet
from common.hooks.registry import BUILTIN, UnknownHookError, hook_class

__all__ = [
    "ADAPT_NONE",
    "ADAPT_OWN_LAYERS",
    "BUILTIN",
    "Hook",
    "HookError",
    "HookPoint",
    "HookSet",
    "Statistics",
    "UnknownHookError",
    "hook_class",
]
