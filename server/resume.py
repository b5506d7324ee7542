"""What a run needs to continue after the server died: server-optimizer and RNG state.

A round's checkpoint (``server.records.RunRecorder.checkpoint``) carries the
global model; with this module's ``resume_state`` it also carries the
strategy's own state (FedAvgM's momentum, FedAdam's and FedYogi's moments, a DP
accountant's history) and the random generators the server draws from (Flower
samples sites with Python's ``random``; DP noise uses NumPy's), so the resumed
run continues exactly where the completed round left it. Everything is stored
as tensors and plain Python values, readable with ``torch.load(weights_only=True)``.
A checkpoint is loaded only once its SHA-256 matches the one the run's audit trail recorded
for it: a swapped, edited or unrecorded checkpoint stops the resume (``CheckpointMismatch``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

from common.config import RunConfig
from common.keys import RecordPhase
from server.audit import AUDIT_FILE, HEAD_FILE, AuditError, entries
from server.audit_run import checkpoint_problem
from server.records import RunRecorder, checkpoint_name, load_checkpoint, read_config

OPTIMIZER_ATTRIBUTES = ("momentum_vector", "m_t", "v_t")  # FedAvgM; FedOpt (FedAdam, FedYogi)


class ResumeError(RuntimeError):
    """A run folder cannot be resumed: says what is missing or inconsistent."""


class CheckpointMismatch(ResumeError):
    """A checkpoint a resumed run would continue from is not the one its audit trail
    recorded: swapped, edited, or never recorded."""


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
        state["dp-releases"] = int(_dp_layer(strategy).releases)
    return state


def _dp_layer(strategy: Strategy) -> Any:
    """The wrapper that owns a DP accountant (``server.privacy.CentralDp``), or None."""
    seen: Any = strategy
    while seen is not None and getattr(seen, "accountant", None) is None:
        seen = getattr(seen, "inner", None) or getattr(seen, "strategy", None)
    return seen


def _accountant(strategy: Strategy) -> Any:
    """The DP accountant of the run's strategy (None without central DP)."""
    return getattr(_dp_layer(strategy), "accountant", None)


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
        _dp_layer(strategy).releases = int(state.get("dp-releases", 0))


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


def resumed_run_id(recorder: RunRecorder, cfg: RunConfig) -> str:
    """The run id of the run in ``recorder``'s folder, once its config is checked to be
    ``cfg``'s (apart from ``output.resume``)."""
    try:
        doc = read_config(recorder.run_dir)
    except (OSError, ValueError) as e:
        raise ResumeError(
            f"cannot resume {recorder.run_dir}: config.json is missing or unreadable ({e}); "
            "start a new run instead"
        ) from e
    before = {k: v for k, v in dict(doc.get("config", {})).items() if k != "output.resume"}
    now = {k: v for k, v in cfg.to_flat().items() if k != "output.resume"}
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ResumeError(
            f"cannot resume {recorder.run_dir} with another run config: {', '.join(changed)} "
            "differ; resume with the run's own config (hepafed run --resume does)"
        )
    run_id = str(doc.get("run_id", ""))
    if not run_id:
        raise ResumeError(f"cannot resume {recorder.run_dir}: config.json has no run id")
    return run_id


def archive_previous_trail(recorder: RunRecorder) -> None:
    """A new run in a folder that holds another run's audit trail: keep the old trail
    beside it (``audit-RUNID.jsonl``), never append a new run to it."""
    old = recorder.run_dir / AUDIT_FILE
    if not old.exists():
        return
    try:
        previous = str(read_config(recorder.run_dir).get("run_id", "")) or "previous"
    except (OSError, ValueError):
        previous = "previous"
    stamp = f"{previous}-{int(time.time())}"
    old.rename(recorder.run_dir / f"audit-{stamp}.jsonl")
    head = recorder.run_dir / HEAD_FILE
    if head.exists():
        head.rename(recorder.run_dir / f"audit-{stamp}.head.json")


def completed_record(
    entry: dict[str, Any], recorder: RunRecorder, rounds: dict[str, int | None]
) -> bool:
    """Whether a rounds.jsonl record belongs to a round the resumed run will not redo: a
    train or evaluate record of a round its model's checkpoint already holds. ``rounds``
    memoises each model's checkpointed round (each checkpoint is read once)."""
    if entry.get("phase") not in (RecordPhase.TRAIN, RecordPhase.EVALUATE) or "model" not in entry:
        return False
    model = str(entry["model"])
    if model not in rounds:
        rounds[model] = checkpoint_round(recorder, model)
    done = rounds[model]
    return done is not None and done >= 1 and int(entry.get("round", -1)) <= done


def checkpoint_round(recorder: RunRecorder, model: str) -> int | None:
    """The last completed round of ``model`` in the run folder (None: no checkpoint), read
    only once the file is the one the audit trail recorded (``verify_checkpoint``)."""
    path = recorder.run_dir / checkpoint_name(model)
    if not path.exists():
        return None
    verify_checkpoint(recorder, model)
    try:
        return int(load_checkpoint(path)["round"])
    except Exception as e:  # torch raises several types for a damaged file
        raise ResumeError(f"cannot resume: checkpoint {path} is unreadable ({e!r})") from e


def verify_checkpoint(recorder: RunRecorder, model: str) -> None:
    """Raise CheckpointMismatch unless ``model``'s checkpoint has the SHA-256 that the run's
    audit trail recorded for it in its last ``checkpoint`` entry."""
    path = recorder.run_dir / checkpoint_name(model)
    try:
        items = entries(recorder.run_dir)
    except (OSError, AuditError) as e:
        raise CheckpointMismatch(
            f"cannot resume {model}: the audit trail that vouches for {path.name} cannot be "
            f"read ({e}); keep this folder as evidence and start the run in a new folder"
        ) from e
    problem = checkpoint_problem(path, items)
    if problem is not None:
        raise CheckpointMismatch(
            f"cannot resume {model} from {path}: {problem}. A resumed run continues only "
            "from checkpoints its audit trail vouches for: keep this folder as evidence and "
            "start the run in a new folder"
        )
