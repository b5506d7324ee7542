"""Flower's SuperNode with a shorter idle poll: ``python -m client.supernode [--idle-poll S]
[--busy-poll S] FLOWER-SUPERNODE-ARGS``.

Flower's SuperNode asks the SuperLink for a message, and when there is none it sleeps
3 s before asking again (``flwr.supernode.start_client_internal``, a fixed
``time.sleep(3)``). Every message a round sends therefore waits up to 3 s at each site
before the site sees it, and a round waits for its slowest site: about 2.25 s per
message exchange with three sites, twice a round (training, evaluation). This launcher
runs Flower's own ``flower-supernode`` entry point unchanged, except that the sleeps of
that loop are capped at ``--idle-poll`` seconds (default ``IDLE_POLL_S``; 3 restores
Flower's). The cost is more idle requests to the SuperLink: one per site per interval.
Once a message is in, the same loop waits for the task's reply (and each reply object's
content) by reading the node's own state every 0.5 s, a quarter second of every message
on average; those local waits are capped at ``LOCAL_POLL_S``, which costs no request.
And the next message of a round (the evaluation, the next round) comes seconds after a
site's reply, once the slowest site has replied: for ``BUSY_WINDOW_S`` after each reply
the loop asks every ``--busy-poll`` seconds (default ``BUSY_POLL_S``; at most
``--idle-poll``), then again every ``--idle-poll``. A site that is not in a run costs the
SuperLink what it did; one in a run up to 1 / ``--busy-poll`` requests a second while it
waits for the others (a federation of many sites may want a longer one).
It also pulls a message's objects with a short retry backoff (``common.flower_pulls``),
and logs, per message, how long that pull from the SuperLink took, in how many requests
and for how many bytes (``log_object_pulls``): a task of this site waits for it (its
``message`` phase, ``client.task_phases``), so a slow SuperLink shows here.

Flower is pinned to one minor release (pyproject.toml); ``check_poll_site`` fails loudly
if a release moves the loop, so the cap can never silently stop applying.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from common.flower_pulls import quicken_pulls

IDLE_POLL_S = 1.0
FLOWER_IDLE_SLEEP_S = 3  # the sleep Flower's loop takes when no message came
FLOWER_LOCAL_SLEEP_S = 0.5  # its sleep between looks at the node's state for a reply
LOCAL_POLL_S = 0.02
BUSY_POLL_S = 0.2  # the idle poll for BUSY_WINDOW_S seconds after the site sent a reply
BUSY_WINDOW_S = 30.0


class _CappedSleep:
    """``time`` as one module sees it, with ``sleep`` capped at ``cap`` seconds, and the
    loop's short waits on the node's own state (under its idle sleep) at ``LOCAL_POLL_S``."""

    def __init__(self, cap: float, busy: float = BUSY_POLL_S) -> None:
        self.cap, self.busy = cap, busy
        self.busy_until = 0.0  # a reply went out recently: the next message is likely near

    def sleep(self, seconds: float) -> None:
        if seconds < FLOWER_IDLE_SLEEP_S:
            cap = min(self.cap, LOCAL_POLL_S)
        elif time.monotonic() < self.busy_until:
            cap = min(self.cap, self.busy)
        else:
            cap = self.cap
        time.sleep(min(seconds, cap))

    def replied(self) -> None:
        self.busy_until = time.monotonic() + BUSY_WINDOW_S

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def check_poll_site(module: ModuleType) -> None:
    """That ``module`` is the loop this launcher was written against: it sleeps through the
    module-level ``time``, its idle sleep is Flower's 3 s, its local waits 0.5 s, and it
    sends replies through ``_push_messages``."""
    import inspect

    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):  # no source to read: cannot tell, so refuse
        source = ""
    missing = [f"time.sleep({t})" for t in (FLOWER_IDLE_SLEEP_S, FLOWER_LOCAL_SLEEP_S)
               if f"time.sleep({t})" not in source]  # fmt: skip
    if "_push_messages(" not in source or not callable(getattr(module, "_push_messages", None)):
        missing.append("_push_messages")
    if getattr(module, "time", None) is not time:
        missing.insert(0, "the module-level time")
    if missing:
        raise RuntimeError(
            f"{module.__name__} no longer polls with {', '.join(missing)}: this Flower release "
            "is not the one hepafed pins; reinstall hepafed's pinned flwr"
        )


def cap_idle_poll(seconds: float, busy: float = BUSY_POLL_S) -> None:
    """Cap the SuperNode loop's sleeps at ``seconds`` (``busy`` seconds for a while after
    a reply) and shorten its object pulls' retry backoff (before the SuperNode starts)."""
    import flwr.supernode.start_client_internal as loop

    for flag, value in (("--idle-poll", seconds), ("--busy-poll", busy)):
        if not 0.05 <= value <= FLOWER_IDLE_SLEEP_S:
            raise ValueError(f"{flag} {value}: give 0.05 to {FLOWER_IDLE_SLEEP_S} seconds")
    check_poll_site(loop)
    sleeper = _CappedSleep(seconds, busy)
    push_messages = loop._push_messages

    def push_and_stay_hot(*a: Any, **k: Any) -> None:
        try:
            push_messages(*a, **k)
        finally:
            sleeper.replied()

    loop.time = sleeper  # type: ignore[assignment]
    loop._push_messages = push_and_stay_hot
    quicken_pulls(loop)  # a message's objects from the SuperLink (common.flower_pulls)
    log_object_pulls(loop)


_LOGGED = "_hepafed_logged_pull"


def log_object_pulls(module: ModuleType) -> None:
    """Wrap ``module.pull_objects`` (the SuperNode's pull of a message's objects from the
    SuperLink) to log its wall time, requests (retries of an object not yet there
    included) and bytes. Idempotent."""
    from logging import INFO

    from flwr.common.logger import log

    pull = module.pull_objects
    if _wrapped_by(pull, _LOGGED):
        return

    @functools.wraps(pull)
    def pull_and_log(object_ids: list[str], pull_object_fn: Any, **kw: Any) -> dict[str, bytes]:
        counted = [0, 0]  # requests, bytes
        lock = threading.Lock()  # Flower pulls the objects from several threads

        def pull_one(object_id: str) -> bytes:
            with lock:
                counted[0] += 1
            content: bytes = pull_object_fn(object_id)
            with lock:
                counted[1] += len(content)
            return content

        started = time.monotonic()
        try:
            got: dict[str, bytes] = pull(object_ids, pull_object_fn=pull_one, **kw)
        except BaseException:
            log(INFO, "Pulling %d objects from the SuperLink failed after %.3f s (%d requests)",
                len(object_ids), time.monotonic() - started, counted[0])  # fmt: skip
            raise
        log(INFO, "Pulled %d objects from the SuperLink in %.3f s (%d requests, %d bytes)",
            len(object_ids), time.monotonic() - started, counted[0], counted[1])  # fmt: skip
        return got

    setattr(pull_and_log, _LOGGED, True)
    module.pull_objects = pull_and_log  # type: ignore[attr-defined]


def _wrapped_by(fn: Any, mark: str) -> bool:
    """Whether ``fn`` or a function it wraps (``functools.wraps``, ``functools.partial``)
    carries ``mark``: a wrapper applied before another's partial is still found."""
    for _ in range(16):
        if fn is None:
            return False
        if getattr(fn, mark, False):
            return True
        fn = getattr(fn, "__wrapped__", None) or getattr(fn, "func", None)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    polls = {"--idle-poll": IDLE_POLL_S, "--busy-poll": BUSY_POLL_S}
    while args[:1] and args[0] in polls:
        if len(args) < 2:
            raise SystemExit(f"{args[0]} needs seconds")
        polls[args[0]], args = float(args[1]), args[2:]
    cap_idle_poll(polls["--idle-poll"], polls["--busy-poll"])
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
