"""The federation waits for its sites: an expected count, or a minimum plus a grace period."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from server.sites import FederationError, wait_for_nodes


class JoiningGrid:
    """A Grid stand-in whose nodes connect at given times (seconds after creation)."""

    def __init__(self, join_times: dict[int, float]) -> None:
        self.start = time.monotonic()
        self.join_times = join_times

    def get_node_ids(self) -> list[int]:
        now = time.monotonic() - self.start
        return [n for n, t in self.join_times.items() if t <= now]


def grid(join_times: dict[int, float]) -> Any:
    return cast(Any, JoiningGrid(join_times))


def test_waits_for_the_expected_number_of_sites() -> None:
    g = grid({1: 0.0, 2: 0.0, 3: 0.6})
    assert wait_for_nodes(g, expected=3, minimum=2, timeout_s=5, grace_s=0) == [1, 2, 3]


def test_a_late_site_joins_within_the_grace_period() -> None:
    g = grid({5: 0.0, 2: 0.0, 9: 0.5})
    assert wait_for_nodes(g, expected=0, minimum=2, timeout_s=5, grace_s=0.8) == [2, 5, 9]


def test_without_grace_it_starts_with_the_minimum() -> None:
    g = grid({1: 0.0, 2: 0.0, 3: 1.5})
    assert wait_for_nodes(g, expected=0, minimum=2, timeout_s=5, grace_s=0.0) == [1, 2]


def test_too_few_sites_is_a_named_error() -> None:
    with pytest.raises(FederationError, match="only 1 site node.*federation.expected-sites = 3"):
        wait_for_nodes(grid({1: 0.0}), expected=3, minimum=2, timeout_s=0.5, grace_s=0)
    with pytest.raises(FederationError, match="federation.min-sites = 2"):
        wait_for_nodes(grid({1: 0.0}), expected=0, minimum=2, timeout_s=0.5, grace_s=0)
