"""Flower's object pulls with hepafed's short retry backoff (common.flower_pulls)."""

from __future__ import annotations

import time
import types

import pytest
from flwr.supercore.inflatable import inflatable_utils

from common.flower_pulls import (
    BACKOFF_CAP_S,
    INITIAL_BACKOFF_S,
    LOCAL_BACKOFF_CAP_S,
    quicken_pulls,
)


def _module_with(**functions: object) -> types.ModuleType:
    module = types.ModuleType("fake_flower_module")
    for name, fn in functions.items():
        setattr(module, name, fn)
    return module


def _seconds_to_pull(module: types.ModuleType, misses: int) -> float:
    """How long ``module.pull_objects`` takes for one object that is 'not there yet' for
    ``misses`` asks."""
    answers = iter([None] * misses + [b"content"])

    def pull(object_id: str) -> bytes:
        answer = next(answers)
        if answer is None:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return answer

    started = time.monotonic()
    assert module.pull_objects(["a"], pull) == {"a": b"content"}
    return time.monotonic() - started


def test_an_object_that_arrives_late_is_pulled_promptly() -> None:
    """Two 'not there yet' answers cost Flower's backoff 1 + 2 s; with the short one about
    0.05 + 0.1 s (jitter +-20 %)."""
    module = _module_with(pull_objects=inflatable_utils.pull_objects)
    assert quicken_pulls(module) == ["pull_objects"]
    assert _seconds_to_pull(module, misses=2) < 0.6
    assert 0.05 <= INITIAL_BACKOFF_S < BACKOFF_CAP_S <= 0.5


def test_pulls_from_the_hosts_own_supernode_back_off_to_a_tenth_of_a_second() -> None:
    """Five 'not there yet' answers: 0.05 + 0.1 + 0.2 + 0.4 + 0.5 s with the SuperLink's
    cap, 0.05 + 4 x 0.1 s with the local one (jitter +-20 %)."""
    module = _module_with(pull_objects=inflatable_utils.pull_objects)
    quicken_pulls(module, backoff_cap=LOCAL_BACKOFF_CAP_S)
    assert module.pull_objects.keywords["backoff_cap"] == LOCAL_BACKOFF_CAP_S
    assert _seconds_to_pull(module, misses=5) < 0.9  # the SuperLink's cap: 1.25 s (1.0 at least)


def test_the_pinned_flower_modules_are_rebound_once() -> None:
    import flwr.superlink.grid.http_grid as http_grid
    import flwr.supernode.runtime.run_clientapp as runner
    import flwr.supernode.start_client_internal as loop

    from server import pull

    # where hepafed applies it: the ClientApp task, the SuperNode, the deployed ServerApp
    # (its grid, and server.pull, which pulls the replies)
    for module, names in (
        (runner, ["pull_and_inflate_object_from_tree"]),
        (loop, ["pull_objects"]),
        (http_grid, ["pull_objects"]),
        (pull, ["pull_objects"]),
    ):
        fake = _module_with(**{n: getattr(module, n) for n in names})
        assert quicken_pulls(fake) == names
        bound = getattr(fake, names[0])
        assert bound.keywords == {"initial_backoff": INITIAL_BACKOFF_S,
                                  "backoff_cap": BACKOFF_CAP_S}  # fmt: skip
        quicken_pulls(fake)  # idempotent: not wrapped twice
        assert getattr(fake, names[0]) is bound


def test_a_flower_release_without_the_arguments_fails_loudly() -> None:
    def pull_objects(object_ids: list[str], pull_object_fn: object) -> dict[str, bytes]:
        return {}

    with pytest.raises(RuntimeError, match="not the one hepafed pins"):
        quicken_pulls(_module_with(pull_objects=pull_objects))
    with pytest.raises(RuntimeError, match="pulls no objects"):
        quicken_pulls(_module_with())
