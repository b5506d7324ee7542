"""Control charts for the monitoring (``common.stats.change_detection``).

References: Montgomery, *Introduction to Statistical Quality Control*, the tabular
CUSUM with k = 1/2 (two-sided ARL0 168 at h = 4 and 465 at h = 5; one-sigma shift 8.38
and 10.4); Lucas & Saccucci (1990) EWMA schemes with in-control ARL 500 (lambda, L) =
(0.40, 3.054), (0.25, 2.998), (0.20, 2.962), (0.10, 2.814), (0.05, 2.615), and their
one-sigma ARLs 14.3 (0.40), 10.3 (0.10), 11.4 (0.05). Then simulation: the charts as
run on series raise false alarms at the rate their ARL says.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.stats.change_detection import (
    Reference,
    cusum,
    cusum_chart_arl,
    cusum_limit,
    ewma,
    ewma_arl,
    ewma_limit,
    reference_level,
)


@pytest.mark.parametrize(("h", "arl0", "arl1"), [(4.0, 168, 8.38), (5.0, 465, 10.4)])
def test_cusum_arl_equals_the_published_table(h: float, arl0: float, arl1: float) -> None:
    assert cusum_chart_arl(h, 0.5) == pytest.approx(arl0, rel=0.005)
    assert cusum_chart_arl(h, 0.5, shift=1.0) == pytest.approx(arl1, rel=0.005)


@pytest.mark.parametrize(
    ("lam", "limit", "arl1"),
    [(0.40, 3.054, 14.3), (0.25, 2.998, None), (0.20, 2.962, None), (0.10, 2.814, 10.3),
     (0.05, 2.615, 11.4)],
)  # fmt: skip
def test_ewma_arl_equals_lucas_and_saccucci(lam: float, limit: float, arl1: float | None) -> None:
    assert ewma_arl(lam, limit) == pytest.approx(500, rel=0.005)
    if arl1 is not None:
        assert ewma_arl(lam, limit, shift=1.0) == pytest.approx(arl1, rel=0.01)


def test_limits_are_solved_for_a_false_alarm_rate() -> None:
    assert cusum_limit(168.0) == pytest.approx(4.0, abs=0.01)
    assert cusum_limit(465.0) == pytest.approx(5.0, abs=0.01)
    assert ewma_limit(500.0, 0.1) == pytest.approx(2.814, abs=0.005)
    # one side only: the same h waits twice as long for a false alarm
    assert cusum_chart_arl(4.0, 0.5, side="upper") == pytest.approx(2 * 167.7, rel=0.01)
    with pytest.raises(ValueError, match="must exceed 1 window"):
        cusum_limit(1.0)


def test_charts_on_in_control_series_alarm_at_the_planned_rate() -> None:
    """2000 series of 100 windows from the reference distribution: the share of windows
    raising an alarm is 1/ARL0 (CUSUM restarting after each alarm) within simulation
    error; for the EWMA, the share of series with an alarm by window 100 is below the
    ARL's geometric bound and above half of it."""
    rng = np.random.default_rng(1)
    ref = Reference(10.0, 2.0, 24)
    h = cusum_limit(50.0)
    alarms = sum(len(cusum(10 + 2 * rng.standard_normal(100), ref, 0.5, h).alarms)
                 for _ in range(2000))  # fmt: skip
    assert alarms / 200_000 == pytest.approx(1 / 50, rel=0.1)
    lim = ewma_limit(200.0, 0.2)
    any_alarm = np.mean([bool(ewma(10 + 2 * rng.standard_normal(100), ref, 0.2, lim).alarms)
                         for _ in range(2000)])  # fmt: skip
    bound = 1 - (1 - 1 / 200) ** 100
    assert bound / 2 < any_alarm < bound * 1.15


def test_a_shift_is_found_and_named_by_direction() -> None:
    """A fall of 1.5 sigma at window 30 (an AUC that drops): the CUSUM and the EWMA
    both alarm downwards soon after, not before."""
    rng = np.random.default_rng(4)
    x = 0.85 + 0.02 * rng.standard_normal(60)
    x[30:] -= 1.5 * 0.02
    ref = reference_level(x[:20])
    c = cusum(x, ref, 0.5, cusum_limit(370.0))
    e = ewma(x, ref, 0.2, ewma_limit(370.0, 0.2))
    for chart in (c, e):
        assert chart.first_alarm is not None and 30 <= chart.first_alarm <= 45
        assert chart.direction[0] == "down"
    up_only = cusum(x, ref, 0.5, cusum_limit(370.0, side="upper"), side="upper")
    assert up_only.alarms == ()
    # the EWMA's limit grows to its asymptote: narrower in the first windows
    assert e.limit[0] < e.limit[-1] and e.limit[0] == pytest.approx(2.86 * 0.2, rel=0.05)


def test_reference_and_bad_input_are_named() -> None:
    ref = reference_level([1.0, 2.0, 3.0, np.nan])
    assert (ref.mu0, ref.sigma0, ref.n) == pytest.approx((2.0, 1.0, 3))
    with pytest.raises(ValueError, match="at least 2 finite windows"):
        reference_level([1.0])
    with pytest.raises(ValueError, match="do not vary"):
        reference_level([1.0, 1.0])
    with pytest.raises(ValueError, match="finite value"):
        cusum([1.0, np.nan], ref, 0.5, 4.0)
