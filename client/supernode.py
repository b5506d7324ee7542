"""Flower's SuperNode with a shorter idle poll: ``python -m client.supernode [--idle-poll S]
FLOWER-SUPERNODE-ARGS``.

Flower's SuperNode asks the SuperLink for a message, and when there is none it sleeps
3 s before asking again (``flwr.supernode.start_client_internal``, a fixed
``time.sleep(3)``). Every message a round sends therefore waits up to 3 s at each site
before the site sees it, and a round waits for its slowest site: about 2.25 s per
message exchange with three sites, twice a round (training, evaluation). This launcher
runs Flower's own ``flower-supernode`` entry point unchanged, except that the sleeps of
that loop are capped at ``--idle-poll`` seconds (default ``IDLE_POLL_S``; 3 restores
Flower's). The cost is more idle requests to the SuperLink: one per site per interval.
It also pulls a message's objects with a short retry backoff (``common.flower_pulls``).

Flower is pinned to one minor release (pyproject.toml); ``check_poll_site`` fails loudly
if a release moves the loop, so the cap can never silently stop applying.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from common.flower_pulls import quicken_pulls

IDLE_POLL_S = 1.0
FLOWER_IDLE_SLEEP_S = 3  # the sleep Flower's loop takes when no message came


class _CappedSleep:
    """``time`` as one module sees it, with ``sleep`` capped at ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def check_poll_site(module: ModuleType) -> None:
    """That ``module`` is the loop this launcher was written against: it sleeps through the
    module-level ``time`` and its idle sleep is Flower's 3 s."""
    import inspect

    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):  # no source to read: cannot tell, so refuse
        source = ""
    if getattr(module, "time", None) is not time or (
        f"time.sleep({FLOWER_IDLE_SLEEP_S})" not in source
    ):
        raise RuntimeError(
            f"{module.__name__} no longer polls with time.sleep({FLOWER_IDLE_SLEEP_S}): this "
            "Flower release is not the one hepafed pins; reinstall hepafed's pinned flwr"
        )


def cap_idle_poll(seconds: float) -> None:
    """Cap the SuperNode loop's sleeps at ``seconds`` and shorten its object pulls' retry
    backoff (before the SuperNode starts)."""
    import flwr.supernode.start_client_internal as loop

    if not 0.05 <= seconds <= FLOWER_IDLE_SLEEP_S:
        raise ValueError(f"--idle-poll {seconds}: give 0.05 to {FLOWER_IDLE_SLEEP_S} seconds")
    check_poll_site(loop)
    loop.time = _CappedSleep(seconds)  # type: ignore[assignment]
    quicken_pulls(loop)  # a message's objects from the SuperLink (common.flower_pulls)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    poll = IDLE_POLL_S
    if args[:1] == ["--idle-poll"]:
        if len(args) < 2:
            raise SystemExit("--idle-poll needs seconds")
        poll, args = float(args[1]), args[2:]
    cap_idle_poll(poll)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
