"""What a run needs to continue after the server died: server-optimizer and RNG state.

A round's checkpoint (``server.records.RunRecorder.checkpoint``) carries the
global model; with this module's ``resume_state`` it also carries the
strategy's own state (FedAvgM's momentum, FedAdam's and FedYogi's moments, a DP
accountant's history) and the random generators the server draws from (Flower
samples sites with Python's ``random``; DP noise uses NumPy's), so the resumed
run continues exactly where the completed round left it. Everything is stored
as tensors and plain Python values, readable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

OPTIMIZER_ATTRIBUTES = ("momentum_vector", "m_t", "v_t")  # FedAvgM; FedOpt (FedAdam, FedYogi)


class ResumeError(RuntimeError):
    """A run folder cannot be resumed: says what is missing or inconsistent."""


def innermost(strategy: Strategy) -> Strategy:
    """The strategy under every wrapper (hooks' ``inner``, Flower DP's ``strategy``)."""
    seen = strategy
    for _ in range(8):
        inner = getattr(seen, "inner", None) or getattr(seen, "strategy", None)
        if not isinstance(inner, Strategy):
            return seen
        seen = inner
    return seen


def _to_plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, Mapping):
        return {k: _from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_plain(v) for v in value]
    return value


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The server optimiser's state and a DP accountant's, as tensors and plain values."""
    inner = innermost(strategy)
    state: dict[str, Any] = {}
    for name in OPTIMIZER_ATTRIBUTES:
        value = getattr(inner, name, None)
        if value is not None:
            state[name] = _to_plain(value)
    accountant = _accountant(strategy)
    if accountant is not None:
        state["accountant"] = _to_plain(accountant.state_dict())
    return state


def _accountant(strategy: Strategy) -> Any:
    """The DP accountant of the first wrapper that has one (None without central DP)."""
    seen: Any = strategy
    for _ in range(8):
        if getattr(seen, "accountant", None) is not None:
            return seen.accountant
        seen = getattr(seen, "inner", None) or getattr(seen, "strategy", None)
        if seen is None:
            return None
    return None


def load_strategy_state(strategy: Strategy, state: Mapping[str, Any]) -> None:
    """Put ``strategy_state``'s values back into a freshly built strategy."""
    inner = innermost(strategy)
    for name in OPTIMIZER_ATTRIBUTES:
        if name in state:
            setattr(inner, name, _from_plain(state[name]))
    if "accountant" in state:
        accountant = _accountant(strategy)
        if accountant is None:
            raise ResumeError("the checkpoint has a DP accountant but the strategy has none")
        accountant.load_state_dict(_from_plain(state["accountant"]))


def rng_state() -> dict[str, Any]:
    """Python's and NumPy's global generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
