"""Hook names: the built-in hooks, and user hooks by import path.

``hooks.use`` lists names in order. A name is a built-in (``BUILTIN``) or an
import path ``package.module:ClassName`` naming a ``Hook`` subclass, so a
site or a study can add its own without changing hepafed.
"""

from __future__ import annotations

import importlib

from common.hooks.base import Hook
from common.hooks.harmonize import Nyul, Percentile, ZScore
from common.hooks.normalization import FedBN, SiloBN
from common.hooks.proximal import FedProx
from common.hooks.tta import BNAdapt, Tent

BUILTIN: dict[str, type[Hook]] = {
    cls.name: cls for cls in (ZScore, Percentile, Nyul, FedBN, SiloBN, FedProx, BNAdapt, Tent)
}


class UnknownHookError(ValueError):
    """A hook name is neither built in nor an importable Hook subclass."""


def hook_class(name: str) -> type[Hook]:
    """The class a ``hooks.use`` entry names."""
    if name in BUILTIN:
        return BUILTIN[name]
    valid = ", ".join(sorted(BUILTIN))
    if ":" not in name:
        raise UnknownHookError(
            f"unknown hook {name!r}; built-in hooks: {valid}; "
            "or give an import path 'package.module:ClassName'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownHookError(f"hook {name!r}: cannot import {module_name!r}: {e}") from e
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Hook)):
        raise UnknownHookError(
            f"hook {name!r}: {module_name}.{attr} is not a subclass of common.hooks.Hook"
        )
    if not cls.points:
        raise UnknownHookError(f"hook {name!r}: {cls.__qualname__}.points names no hook point")
    if not cls.name or cls.name in BUILTIN:
        raise UnknownHookError(
            f"hook {name!r}: {cls.__qualname__}.name = {cls.name!r}: give it a name of its "
            "own (not empty, not a built-in hook's)"
        )
    return cls
