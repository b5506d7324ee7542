"""Dice, per-site Dice summary and HD95.

References:
- segmentation_reference.json (make_reference.R, R 4.2): ``mean``, ``sd``,
  ``t.test(dice)$conf.int`` (95% and 90%) and ``quantile(dice, type=7)`` of 23 values;
- MONAI ``compute_dice(..., ignore_empty=False)`` for Dice;
- HD95: closed forms for point masks, and an independent brute-force surface
  distance (edges = mask minus its erosion, Euclidean with spacing, 95th
  percentile of each directed set, the larger of the two).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.metrics import compute_dice
from scipy import ndimage
from scipy.spatial.distance import cdist

from common.stats import dice_coefficient, dice_summary, hd95

REF = json.loads((Path(__file__).parent / "reference" / "segmentation_reference.json").read_text())


def test_dice_summary_equals_r() -> None:
    """R: mean, sd, t.test(dice)$conf.int, quantile(dice, c(.25, .5, .75), type=7)."""
    res = dice_summary(REF["dice"])
    assert res.n == REF["n"] == 23
    assert res.mean == pytest.approx(REF["mean"], abs=1e-12)
    assert res.sd == pytest.approx(REF["sd"], abs=1e-12)
    assert res.ci == pytest.approx(tuple(REF["ci95"]), abs=1e-12)
    assert dice_summary(REF["dice"], 0.90).ci == pytest.approx(tuple(REF["ci90"]), abs=1e-12)
    assert (res.q1, res.median, res.q3) == pytest.approx(
        (REF["q1"], REF["median"], REF["q3"]), abs=1e-12
    )
    assert res.iqr == pytest.approx(REF["q3"] - REF["q1"])


def test_dice_summary_of_one_case() -> None:
    res = dice_summary([0.8])
    assert res.mean == res.median == 0.8
    assert math.isnan(res.sd) and all(math.isnan(v) for v in res.ci)


def _blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(ndimage.gaussian_filter(rng.normal(size=shape), 2) > 0.05)


def test_dice_equals_monai() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, b = _blob(rng, (20, 20, 20)), _blob(rng, (20, 20, 20))
        monai = compute_dice(
            torch.as_tensor(a[None, None]).float(),
            torch.as_tensor(b[None, None]).float(),
            include_background=True,
            ignore_empty=False,
        )
        assert dice_coefficient(a, b) == pytest.approx(float(monai), abs=1e-6)
    empty = np.zeros((4, 4), dtype=bool)
    assert dice_coefficient(empty, empty) == 1.0
    assert dice_coefficient(empty, ~empty) == 0.0


def test_hd95_of_single_points_is_their_distance() -> None:
    a = np.zeros((10, 12), dtype=np.uint8)
    b = np.zeros((10, 12), dtype=np.uint8)
    a[2, 3] = 1
    b[5, 7] = 1
    assert hd95(a, b) == pytest.approx(5.0, rel=1e-6)
    assert hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(6.0, 2.0), rel=1e-6)
    assert hd95(a, b, spacing=1.5) == pytest.approx(7.5, rel=1e-6)


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> float:
    def edges(m: np.ndarray) -> np.ndarray:
        return m & ~ndimage.binary_erosion(m)

    d = cdist(np.argwhere(edges(a)) * spacing, np.argwhere(edges(b)) * spacing)
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


@pytest.mark.parametrize("dims", [2, 3])
def test_hd95_equals_brute_force_surface_distance(dims: int) -> None:
    rng = np.random.default_rng(11 + dims)
    for _ in range(3):
        a, b = _blob(rng, (22,) * dims), _blob(rng, (22,) * dims)
        spacing = rng.uniform(0.5, 2.0, dims)
        # MONAI computes in float32
        assert hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing), rel=1e-6)


def test_hd95_empty_masks() -> None:
    empty = np.zeros((6, 6), dtype=bool)
    full = empty.copy()
    full[2:4, 2:4] = True
    assert hd95(empty, empty) == 0.0
    assert hd95(full, empty) == math.inf
    assert hd95(empty, full) == math.inf


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        dice_coefficient(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="binary"):
        dice_coefficient(np.full((3, 3), 0.5), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        hd95(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="at least 1"):
        dice_summary([])
    with pytest.raises(ValueError, match="NaN"):
        dice_summary([0.5, math.nan])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dice_summary([0.5, 1.5])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=60), st.floats(0.5, 0.99))
def test_summary_invariants(values: list[float], level: float) -> None:
    res = dice_summary(values, level)
    assert res.ci[0] <= res.mean + 1e-12 and res.mean <= res.ci[1] + 1e-12
    assert 0 <= res.q1 <= res.median <= res.q3 <= 1
    assert res.sd >= 0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31))
def test_dice_is_symmetric_and_bounded(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, (6, 7)), rng.integers(0, 2, (6, 7))
    d = dice_coefficient(a, b)
    assert 0 <= d <= 1 and d == dice_coefficient(b, a)
    assert dice_coefficient(a, a) == 1.0
