"""DeLong AUC against hand-computed values and invariants.

Reference values: the Mann-Whitney AUC and DeLong's structural components
computed by hand for tiny samples (DeLong, DeLong & Clarke-Pearson 1988,
eq. for V10/V01), the same quantities R pROC's ``var(roc, method="delong")``
reports.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.stats import delong_auc


def test_perfect_and_reversed_separation() -> None:
    y = [0, 0, 0, 1, 1, 1]
    assert delong_auc(y, [1, 2, 3, 4, 5, 6]).auc == 1.0
    assert delong_auc(y, [6, 5, 4, 3, 2, 1]).auc == 0.0


def test_hand_computed_example_with_a_tie() -> None:
    # positives 0.8, 0.6, 0.4 ; negatives 0.6, 0.2, 0.1
    # pairs: (0.8: 3 wins) (0.6: tie 0.5 + 2 wins) (0.4: 2 wins) -> 7.5 / 9
    res = delong_auc([1, 1, 1, 0, 0, 0], [0.8, 0.6, 0.4, 0.6, 0.2, 0.1])
    assert res.auc == pytest.approx(7.5 / 9, abs=1e-12)
    v10 = np.array([3, 2.5, 2]) / 3  # per positive: share of negatives below it
    v01 = np.array([1 - 1.5 / 3, 1.0, 1.0])  # per negative: share of positives above it
    expected = v10.var(ddof=1) / 3 + v01.var(ddof=1) / 3
    assert res.variance == pytest.approx(expected, abs=1e-12)
    lo, hi = res.ci()
    half = 1.959963984540054 * np.sqrt(expected)
    assert (lo, hi) == pytest.approx((7.5 / 9 - half, 1.0), abs=1e-9)  # upper clipped to 1


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong_auc([1, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        delong_auc([1, 1, 0, 0], [0.1, np.nan, 0.2, 0.3])


@given(st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=40), st.integers(0, 2**31))
def test_auc_is_mann_whitney_and_flips_with_score(scores: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.array([1, 1, 0, 0] + list(rng.integers(0, 2, len(scores) - 4)))
    s = np.array(scores)
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    res = delong_auc(y, s)
    assert res.auc == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    assert delong_auc(y, -s).auc == pytest.approx(1 - res.auc, abs=1e-12)
    assert res.variance >= 0
