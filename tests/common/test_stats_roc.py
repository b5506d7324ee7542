"""Sensitivity on a fixed false-positive-rate grid against pROC 1.18's empirical ROC points.

Reference: proc_reference.json ``roc_grid`` (tests/common/reference/make_reference.R):
for ``r <- roc(outcome, x, levels=c("Good","Poor"), direction="<")`` on aSAH,
``max(r$sensitivities[1 - r$specificities <= fpr])`` at fpr = 0, 0.05, ..., 1.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.stats import DEFAULT_FPR_GRID, roc_at_fpr

REF = Path(__file__).parent / "reference"
PROC = json.loads((REF / "proc_reference.json").read_text())["roc_grid"]
with (REF / "aSAH.csv").open() as fh:
    ROWS = list(csv.DictReader(fh))
Y = np.array([r["outcome"] == "Poor" for r in ROWS], dtype=int)


@pytest.mark.parametrize("predictor", ["s100b", "wfns", "ndka"])
def test_grid_equals_proc_roc_points(predictor: str) -> None:
    scores = np.array([float(r[predictor]) for r in ROWS])
    res = roc_at_fpr(Y, scores, PROC["fpr"])
    assert res.fpr == pytest.approx(tuple(PROC["fpr"]), abs=0)
    assert res.tpr == pytest.approx(tuple(PROC[predictor]), abs=1e-12)
    assert (res.n_pos, res.n_neg) == (41, 72)


def test_hand_example_and_step_rule() -> None:
    # positives 0.9, 0.7, 0.4 ; negatives 0.8, 0.3. Calling s >= threshold positive for
    # thresholds 0.9, 0.8, 0.7, 0.4, 0.3 gives the points (FPR, TPR)
    # (0, 1/3) (.5, 1/3) (.5, 2/3) (.5, 1) (1, 1), plus (0, 0).
    y = [1, 1, 1, 0, 0]
    s = [0.9, 0.7, 0.4, 0.8, 0.3]
    res = roc_at_fpr(y, s, [0.0, 0.25, 0.5, 1.0])
    assert res.tpr == pytest.approx((1 / 3, 1 / 3, 1.0, 1.0))
    # ties between a positive and a negative move both rates at once
    tie = roc_at_fpr([1, 0], [0.5, 0.5], [0.0, 0.5, 1.0])
    assert tie.tpr == (0.0, 0.0, 1.0)


def test_default_grid() -> None:
    assert len(DEFAULT_FPR_GRID) == 101
    assert DEFAULT_FPR_GRID[0] == 0.0 and DEFAULT_FPR_GRID[-1] == 1.0
    res = roc_at_fpr([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])
    assert len(res.tpr) == 101 and res.tpr[-1] == 1.0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 1 positive"):
        roc_at_fpr([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        roc_at_fpr([0, 1], [0.1, 0.2], [0.0, 1.5])
    with pytest.raises(ValueError, match="equal in length"):
        roc_at_fpr([0, 1], [0.1], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        roc_at_fpr([0, 1], [0.1, np.nan], [0.5])


@settings(max_examples=50)
@given(st.lists(st.integers(0, 10), min_size=4, max_size=50), st.integers(0, 2**31))
def test_grid_is_monotone_and_bounded(scores: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.array([1, 0] + list(rng.integers(0, 2, len(scores) - 2)))
    res = roc_at_fpr(y, scores)
    tpr = np.array(res.tpr)
    assert (np.diff(tpr) >= 0).all()
    assert tpr[-1] == 1.0 and 0.0 <= tpr[0] <= 1.0
