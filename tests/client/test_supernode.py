"""hepafed's SuperNode launcher: Flower's own loop, its idle sleep capped."""

from __future__ import annotations

import time
import types

import pytest

from client import supernode


def test_the_pinned_flower_loop_is_the_one_the_cap_applies_to() -> None:
    """If a Flower release moves the SuperNode's idle sleep, this fails (and so does the
    launcher, with a message), rather than the cap silently applying to nothing."""
    import flwr.supernode.start_client_internal as loop

    supernode.check_poll_site(loop)
    fake = types.ModuleType("flwr.supernode.start_client_internal")
    fake.time = time  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match=r"no longer polls with time.sleep\(3\)"):
        supernode.check_poll_site(fake)


def test_cap_applies_to_the_loop_module_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.start_client_internal as loop

    monkeypatch.setattr(loop, "time", time)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)  # restored afterwards
    supernode.cap_idle_poll(0.05)
    assert loop.pull_objects.keywords["initial_backoff"] < 1  # type: ignore[attr-defined]
    try:
        started = time.monotonic()
        loop.time.sleep(3)  # Flower's idle sleep
        assert time.monotonic() - started < 1.0
        assert loop.time.monotonic() > 0  # everything else is the real time module
        assert time.sleep is not loop.time.sleep  # the process's own time is untouched
    finally:
        monkeypatch.setattr(loop, "time", time)
    for bad in (0.0, 3.5):
        with pytest.raises(ValueError, match="--idle-poll"):
            supernode.cap_idle_poll(bad)
