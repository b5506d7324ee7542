"""The small-cell rule: no bin, cell, point or category of fewer than k cases leaves a site."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.evaluation import (
    classification_summary,
    coarse_roc,
    intensity_histograms,
    small_cell_calibration,
)
from common.acquisition import acquisition_summary, small_categories
from common.badcases import SkippedCase, site_relative, skipped_fields
from common.config_sections import EvalConfig
from common.manifest import Case
from common.summary import coarse_rates, pool_cells, small_cell_groups


def _present(counts: list[int]) -> np.ndarray:
    """One case per unit of count, each in its bin."""
    bins = np.repeat(np.arange(len(counts)), counts)
    present = np.zeros((len(bins), len(counts)), dtype=bool)
    present[np.arange(len(bins)), bins] = True
    return present


def test_groups_of_a_hand_made_example() -> None:
    # bins 2..4 hold 2 + 0 + 3 = 5 cases; bin 6's single case joins the group before it
    groups = small_cell_groups(_present([0, 0, 2, 0, 3, 6, 1, 0]), 5)
    assert groups == [[0], [1], [2, 3, 4], [5, 6, 7]]
    assert small_cell_groups(_present([1, 2, 1]), 5) is None  # 4 cases: nothing leaves
    assert small_cell_groups(_present([1, 2]), 1) == [[0], [1]]  # k = 1: bins as they are


def test_pooled_totals_go_to_the_heaviest_bin() -> None:
    counts = np.array([0, 0, 2, 0, 3, 6, 1, 0], dtype=float)
    sums = np.array([0, 0, 0.5, 0, 1.2, 3.3, 0.7, 0])
    pooled = pool_cells(np.stack([counts, sums]), [[0], [1], [2, 3, 4], [5, 6, 7]], counts)
    assert pooled[0].tolist() == [0, 0, 0, 0, 5, 7, 0, 0]
    assert pooled[1].tolist() == pytest.approx([0, 0, 0, 0, 1.7, 4.0, 0, 0])
    assert pool_cells(np.stack([counts]), None, counts).tolist() == [[0] * 8]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=5, max_size=60),
    st.integers(2, 10),
    st.integers(2, 20),
)
def test_calibration_bins_hold_k_cases_or_none(probs: list[float], k: int, n_bins: int) -> None:
    p = np.asarray(probs)
    y = (np.arange(len(p)) % 2).astype(int)
    rows = small_cell_calibration(y, p, n_bins, k)
    count = rows[0]
    assert len(count) == n_bins  # the wire length stays fixed by the run config
    if len(p) >= k:
        assert count.sum() == len(p) and rows[2].sum() == y.sum()
        assert rows[1].sum() == pytest.approx(p.sum())
        assert all(c == 0 or c >= k for c in count)
    else:
        assert count.sum() == 0


def test_a_lone_confident_case_no_longer_has_its_own_bin() -> None:
    """The review's leak: with 20 cases, one case alone in a calibration bin."""
    p = np.array([0.05] * 5 + [0.35] * 7 + [0.45] * 7 + [0.97])
    y = np.array([0] * 5 + [0, 1] * 3 + [1] + [1, 0] * 3 + [0] + [1])
    raw = small_cell_calibration(y, p, 10, 1)
    assert raw[0].tolist() == [5, 0, 0, 7, 7, 0, 0, 0, 0, 1]
    pooled = small_cell_calibration(y, p, 10, 5)
    assert pooled[0].tolist() == [5, 0, 0, 7, 8, 0, 0, 0, 0, 0]
    assert pooled[1][4] == pytest.approx(7 * 0.45 + 0.97)


def test_histogram_bins_hold_voxels_of_k_cases() -> None:
    images = torch.full((6, 1, 4, 4), 0.2)
    images[0, 0, 0, 0] = 0.95  # one case's bright voxel: its own bin without the rule
    images[1:, 0, 0, 0] = 0.55  # five cases share another bin
    raw = intensity_histograms(images, 10, 1)[0]
    assert raw[9] == 1 and raw[5] == 5 and raw[2] == 90
    pooled = intensity_histograms(images, 10, 5)[0]
    assert pooled[9] == 0 and sum(pooled) == 96
    assert pooled[5] == 6 and pooled[2] == 90  # bins 5..9 merged, its total in bin 5


def test_roc_moves_in_steps_of_k_cases() -> None:
    assert coarse_rates(np.array([0.0, 0.3, 0.5, 0.9, 1.0]), 10, 5).tolist() == [
        0.0,
        0.0,
        0.5,
        0.5,
        1.0,
    ]
    rng = np.random.default_rng(0)
    y = np.array([1] * 10 + [0] * 15)
    p = np.clip(rng.normal(0.5 + 0.2 * (y - 0.5), 0.2), 0, 1)
    tpr = np.asarray(coarse_roc(y, p, 51, 5))
    assert set(np.round(tpr * 10 / 5, 9)) <= {0.0, 1.0, 2.0}  # multiples of 5 of 10 positives
    assert tpr[-1] == 1.0 and np.all(np.diff(tpr) >= 0)
    # with k = 1 it is the plain empirical ROC
    exact = np.asarray(coarse_roc(y, p, 51, 1))
    assert len(set(exact)) > 3


def test_the_classification_summary_obeys_the_rule() -> None:
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 12)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    ev = EvalConfig(calibration_bins=10, roc_points=21)
    s = classification_summary(y, p, ev, torch.rand(24, 2, 4, 4), min_cell=5)
    assert all(c == 0 or c >= 5 for c in s.cal_count) and sum(s.cal_count) == 24
    assert set(np.round(np.asarray(s.roc_tpr) * 12 / 5, 9)) <= {0.0, 1.0, 2.0, 2.4}


def _case(i: int, **metadata: str) -> Case:
    return Case(f"c{i}", (Path(f"/s/{i}.nii.gz"),), None, 1, "train", i + 1, metadata)


def test_a_one_case_site_sends_no_range_and_rare_categories_merge() -> None:
    one = acquisition_summary([_case(0, vendor="GE", slice_thickness_mm="2.5")], 5)
    assert one == {"n_cases": 1}  # min = median = max of one patient: not sent
    assert small_categories(Counter({"A": 6, "B": 3, "C": 3}), 5) == {"A": 6, "other": 6}
    assert small_categories(Counter({"A": 6, "B": 2, "C": 1}), 5) == {"A": 6}
    cases = [_case(i, vendor="GE" if i < 6 else "Canon", kvp="120") for i in range(8)]
    assert acquisition_summary(cases, 5) == {
        "n_cases": 8,
        "vendor": {"GE": 6},
        "kvp": {"n": 8, "min": 120.0, "median": 120.0, "max": 120.0},
    }
    assert acquisition_summary(cases)["vendor"] == {"Canon": 2, "GE": 6}  # `site check`: local


def test_skipped_case_reasons_carry_no_absolute_path(tmp_path: Path) -> None:
    site = tmp_path / "hospital"
    bad = site / "images" / "c1.nii.gz"
    skipped = [
        SkippedCase("c1", str(bad), f"unreadable image {bad}: EOFError"),
        SkippedCase("c2", "/elsewhere/c2.nii.gz", "3 NaN/Inf voxel(s)"),
    ]
    reasons = skipped_fields(skipped, site)["skipped-case-reasons"]
    assert reasons == [
        "images/c1.nii.gz: unreadable image images/c1.nii.gz: EOFError",
        "c2.nii.gz: 3 NaN/Inf voxel(s)",
    ]
    assert not any(str(tmp_path) in r for r in reasons)
    assert site_relative("images/c3.nii.gz", site) == "images/c3.nii.gz"
