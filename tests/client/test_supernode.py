"""hepafed's SuperNode launcher: Flower's own loop, its idle sleep capped."""

from __future__ import annotations

import inspect
import re
import time
import types
from typing import Any

import pytest

from client import supernode
from simulations.bench_deploy import SUPERNODE_PULL


def test_the_pinned_flower_loop_is_the_one_the_cap_applies_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If a Flower release moves the SuperNode's idle sleep, this fails (and so does the
    launcher, with a message), rather than the cap silently applying to nothing."""
    import flwr.supernode.start_client_internal as loop

    supernode.check_poll_site(loop)
    fake = types.ModuleType("flwr.supernode.start_client_internal")
    fake.time = time  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match=r"no longer polls with time.sleep\(3\)"):
        supernode.check_poll_site(fake)
    # a loop whose local waits moved: the launcher says so too
    monkeypatch.setattr(inspect, "getsource", lambda _m: "time.sleep(3)\n")
    with pytest.raises(RuntimeError, match=r"no longer polls with time.sleep\(0.5\)"):
        supernode.check_poll_site(fake)


def test_cap_applies_to_the_loop_module_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.start_client_internal as loop

    monkeypatch.setattr(loop, "time", time)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)  # restored afterwards
    monkeypatch.setattr(loop, "_push_messages", loop._push_messages)
    supernode.cap_idle_poll(0.05)
    quick = loop.pull_objects.__wrapped__  # type: ignore[attr-defined]
    assert quick.keywords["initial_backoff"] < 1
    try:
        started = time.monotonic()
        loop.time.sleep(3)  # Flower's idle sleep
        assert time.monotonic() - started < 1.0
        monkeypatch.setattr(loop, "time", time)
        supernode.cap_idle_poll(1.0)  # the default idle poll: local waits stay short
        started = time.monotonic()
        for _ in range(5):  # Flower's wait for a task's reply, on the node's own state
            loop.time.sleep(0.5)
        assert time.monotonic() - started < 0.5
        assert loop.time.monotonic() > 0  # everything else is the real time module
        assert time.sleep is not loop.time.sleep  # the process's own time is untouched
    finally:
        monkeypatch.setattr(loop, "time", time)
    for bad in (0.0, 3.5):
        with pytest.raises(ValueError, match="--idle-poll"):
            supernode.cap_idle_poll(bad)
        with pytest.raises(ValueError, match="--busy-poll"):
            supernode.cap_idle_poll(1.0, bad)


def test_after_a_reply_the_loop_asks_often_for_a_while_then_idles_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The round's next message follows a site's reply within seconds: the idle poll is
    ``BUSY_POLL_S`` for ``BUSY_WINDOW_S`` after each reply, ``--idle-poll`` otherwise."""
    import flwr.supernode.start_client_internal as loop

    pushed: list[dict[str, object]] = []
    monkeypatch.setattr(loop, "time", time)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    monkeypatch.setattr(loop, "_push_messages", lambda **k: pushed.append(k))

    def idle_sleep() -> float:
        started = time.monotonic()
        loop.time.sleep(3)
        return time.monotonic() - started

    supernode.cap_idle_poll(0.6)
    sleeper = loop.time
    assert 0.55 < idle_sleep() < 1.5  # no reply yet: --idle-poll, not Flower's 3 s
    push: Any = loop._push_messages
    push(state="s")  # Flower's loop pushes the task's reply
    assert pushed == [{"state": "s"}]
    assert idle_sleep() < supernode.BUSY_POLL_S + 0.3
    monkeypatch.setattr(sleeper, "busy_until", time.monotonic() - 1)  # the window has passed
    assert 0.55 < idle_sleep() < 1.5
    # a federation of many sites asks less often near a reply: --busy-poll
    monkeypatch.setattr(loop, "time", time)
    supernode.cap_idle_poll(1.2, busy=0.4)
    push = loop._push_messages
    push(state="s")
    assert 0.35 < idle_sleep() < 1.0  # not the default 0.2 s, not the idle 1.2 s


def test_each_message_pull_from_the_superlink_is_logged_with_its_requests_and_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SuperNode's pull of a message's objects (Flower's own ``pull_objects``, retries
    and all) is timed and counted: one object missing at the first ask costs a request."""
    import logging

    import flwr.supernode.start_client_internal as loop
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)  # restored afterwards
    supernode.log_object_pulls(loop)
    supernode.log_object_pulls(loop)  # idempotent: one wrapper, one line per pull
    contents = {"a": b"x" * 1000, "b": b"y" * 24}
    asked: list[str] = []

    def pull_object(object_id: str) -> bytes:
        asked.append(object_id)
        if object_id == "b" and asked.count("b") == 1:
            raise ObjectUnavailableError(object_id)
        return contents[object_id]

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    flwr_log = logging.getLogger("flwr")
    flwr_log.addHandler(handler)
    try:
        got = loop.pull_objects(["a", "b"], pull_object_fn=pull_object, initial_backoff=0.01)
    finally:
        flwr_log.removeHandler(handler)
    assert got == contents and sorted(asked) == ["a", "b", "b"]
    pulled = [line for line in lines if line.startswith("Pulled ")]
    assert len(pulled) == 1
    assert re.fullmatch(r"Pulled 2 objects from the SuperLink in [0-9.]+ s \(3 requests, "
                        r"1024 bytes\)", pulled[0]), pulled  # fmt: skip
    # the benchmark reads these lines: its pattern takes this one, whole
    match = SUPERNODE_PULL.search(pulled[0])
    assert match is not None and match.groups()[0::2] == ("2", "3")
    # a failed pull is logged as such, never as a message pulled
    lines.clear()
    flwr_log.addHandler(handler)
    try:
        with pytest.raises(ValueError):
            loop.pull_objects(["c"], pull_object_fn=_fails, initial_backoff=0.01)
    finally:
        flwr_log.removeHandler(handler)
    said = [line for line in lines if "SuperLink" in line]
    assert len(said) == 1 and said[0].startswith("Pulling 1 objects from the SuperLink failed")
    assert not SUPERNODE_PULL.search(said[0])


def _fails(_object_id: str) -> bytes:
    raise ValueError("the SuperLink refused")


def test_the_pull_log_is_applied_once_in_either_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logged, then quickened (a partial around the logging wrapper), then logged again:
    still one wrapper, one line per message."""
    import flwr.supernode.start_client_internal as loop

    from common.flower_pulls import quicken_pulls

    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    supernode.log_object_pulls(loop)
    quicken_pulls(loop)
    once = loop.pull_objects
    supernode.log_object_pulls(loop)
    assert loop.pull_objects is once
