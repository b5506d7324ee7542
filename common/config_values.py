"""One flat run-config value against its field's type, and back (``common.config``).

Flower's flat ``run_config`` holds only bool, int, float and str; a field is one of
those, a choice (a ``StrEnum``) or a tuple written as a comma-separated string.
"""

from __future__ import annotations

import enum
import types
from typing import Any, Union, get_args, get_origin

from common.keys import choices

FlatValue = bool | int | float | str


class ConfigError(ValueError):
    """A run-config key is unknown, has the wrong type or an invalid value."""


def flatten_value(value: Any) -> FlatValue:
    """A field's value as Flower's flat config holds it (choices by value, tuples joined)."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot flatten {value!r}")


def coerce_value(key: str, value: Any, target: Any) -> Any:
    """Check a flat value against its field type; ints widen to floats only, choices
    become their enum member."""
    origin = get_origin(target)
    if origin in (Union, types.UnionType):  # pragma: no cover - no optional fields yet
        target = next(a for a in get_args(target) if a is not type(None))
        origin = get_origin(target)
    if origin is tuple:
        # Flower's flat configs say "0.2,0.5"; code replacing a value may pass the tuple
        if isinstance(value, tuple | list):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r}: expected a comma-separated string")
        parts = tuple(part.strip() for part in value.split(",") if part.strip())
        if get_args(target)[0] is float:
            try:
                return tuple(float(part) for part in parts)
            except ValueError:
                raise ConfigError(f"{key} = {value!r}: expected comma-separated numbers") from None
        return parts
    if target is bool:
        if isinstance(value, bool):
            return value
    elif target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif target is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif target is str:
        if isinstance(value, str):
            return value
    elif isinstance(target, type) and issubclass(target, enum.StrEnum):
        # a choice: stored as its enum member, so no reader re-wraps or re-checks it
        if isinstance(value, str) and value in {m.value for m in target}:
            return target(value)
        raise ConfigError(f"{key} = {value!r}: must be one of {choices(target)}")
    else:  # pragma: no cover - guards against a new field type
        raise TypeError(f"unsupported config field type {target!r} for {key}")
    raise ConfigError(f"{key} = {value!r}: expected {target.__name__}, got {type(value).__name__}")


def check_choice(key: str, value: str, enum: Any) -> None:
    """ConfigError unless ``value`` is one of ``enum``'s values."""
    if value not in {m.value for m in enum}:
        raise ConfigError(f"{key} = {value!r}: must be one of {choices(enum)}")
