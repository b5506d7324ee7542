"""Several training seeds combined into one report (``server.report.training_noise``).

The combination itself is ``common.stats.seeds`` (checked there against a hand-worked
example and by simulation); here: which numbers of each seed's report go in, what is
left out, and when the ``gap-within-training-noise`` flag is raised.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from common.stats import combine_seeds
from server.report.schema import ReportError
from server.report.training_noise import FLAG, combined_report, training_noise

DATA = Path(__file__).parent / "data" / "reports"


def _doc(site_aucs: dict[str, float | None], gap: tuple[float, float] | None) -> dict[str, Any]:
    """A report document holding what the combination reads (AUC variance 0.0025)."""
    sites = [
        {
            "site": site,
            "model": "global",
            "role": "external" if site == "hospital-e" else "internal",
            **({} if auc is None else {"auc": {"estimate": auc, "variance": 0.0025}}),
        }
        for site, auc in site_aucs.items()
    ]
    gaps = []
    if gap is not None:
        est, se = gap
        gaps.append(
            {
                "site": "hospital-e",
                "model": "global",
                "gap": {"estimate": est, "se": se, "lo": est - 1.96 * se, "hi": est + 1.96 * se},
            }
        )
    return {
        "design": "holdout",
        "settings": {"level": 0.95},
        "sites": sites,
        "pooled": {
            "internal": {"auc": {"estimate": 0.85, "se": 0.02}},
            "external": {"auc": {"estimate": 0.75, "se": 0.05}},
            "difference": {"auc": {"estimate": 0.10, "se": 0.054}},
        },
        "gaps": gaps,
        "flags": [{"site": "x", "model": "global", "role": "internal", "kind": "k", "message": ""}],
    }


def test_site_figures_are_combined_over_the_seeds_that_have_them() -> None:
    runs = [
        (2026, _doc({"a": 0.80, "b": 0.70, "hospital-e": 0.70}, (0.15, 0.05))),
        (2027, _doc({"a": 0.84, "b": None, "hospital-e": 0.74}, (0.11, 0.05))),
        (2028, _doc({"a": 0.78, "b": 0.72, "hospital-e": 0.66}, (0.19, 0.05))),
    ]
    block, flags = training_noise(runs, 0.95)
    assert block["seeds"] == [2026, 2027, 2028]
    a = next(s for s in block["sites"] if s["site"] == "a")["auc"]
    expected = combine_seeds([0.80, 0.84, 0.78], [0.0025] * 3)
    assert a["per_seed"] == [0.80, 0.84, 0.78] and a["seeds_used"] == [2026, 2027, 2028]
    assert a["combined"]["estimate"] == pytest.approx(expected.estimate)
    assert a["combined"]["se"] == pytest.approx(expected.se)
    assert a["combined"]["between_sd"] == pytest.approx(math.sqrt(expected.between))
    assert a["combined"]["within_se"] == pytest.approx(0.05)
    assert (a["combined"]["lo"], a["combined"]["hi"]) == pytest.approx(expected.ci(0.95))
    # b has no AUC in seed 2027: left out, and listed as such
    b = next(s for s in block["sites"] if s["site"] == "b")["auc"]
    assert b["per_seed"] == [0.70, None, 0.72] and b["seeds_used"] == [2026, 2028]
    # pooled blocks combine each seed's pooled estimate with its se squared
    internal = block["pooled"]["internal"]["combined"]
    assert internal["estimate"] == pytest.approx(0.85) and internal["between_sd"] == 0.0
    assert internal["se"] == pytest.approx(0.02) and internal["df"] is None
    gap = block["gaps"][0]["gap"]["combined"]
    assert gap["estimate"] == pytest.approx(0.15)
    assert gap["lo"] > 0  # consistent seeds: the gap stands, no flag
    assert flags == []


def test_a_gap_one_seed_alone_would_call_significant_is_flagged() -> None:
    # seed 2026 alone: 0.15 +- 0.098 excludes 0; the seeds disagree (-0.05): within noise
    runs = [
        (2026, _doc({"a": 0.8, "hospital-e": 0.65}, (0.15, 0.05))),
        (2027, _doc({"a": 0.8, "hospital-e": 0.85}, (-0.05, 0.05))),
        (2028, _doc({"a": 0.8, "hospital-e": 0.75}, (0.05, 0.05))),
    ]
    block, flags = training_noise(runs, 0.95)
    gap = block["gaps"][0]["gap"]["combined"]
    assert gap["lo"] < 0 < gap["hi"]
    assert [f["kind"] for f in flags] == [FLAG]
    assert flags[0]["site"] == "hospital-e" and flags[0]["role"] == "external"
    assert "seed 2026 alone reported [+0.052, +0.248]" in flags[0]["message"]
    assert "over 3 seeds includes 0" in flags[0]["message"]


def test_a_gap_no_seed_called_significant_is_not_flagged() -> None:
    runs = [(s, _doc({"hospital-e": 0.7}, (g, 0.08))) for s, g in ((1, 0.05), (2, -0.02))]
    assert training_noise(runs, 0.95)[1] == []


def test_the_combined_report_keeps_the_first_seed_and_adds_the_block() -> None:
    runs = [(1, _doc({"a": 0.8}, None)), (2, _doc({"a": 0.82}, None))]
    doc = combined_report(runs, ["seed-1", "seed-2"])
    assert doc["sites"] == runs[0][1]["sites"]
    assert doc["training_noise"]["runs"] == ["seed-1", "seed-2"]
    assert doc["flags"] == runs[0][1]["flags"]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="at least 2 seeds"):
        training_noise([(1, _doc({"a": 0.8}, None))], 0.95)
    other = {**_doc({"a": 0.8}, None), "design": "loso"}
    with pytest.raises(ValueError, match="different evaluation designs"):
        training_noise([(1, _doc({"a": 0.8}, None)), (2, other)], 0.95)


def test_a_combined_example_report_is_valid_and_written(tmp_path: Path) -> None:
    """Two seeds of a committed example report (the second with other AUCs) combine into a
    report that validates, and ``write_combined_report`` writes its JSON and HTML."""
    from server.report.schema import validate
    from server.report.training_noise import seed_dirs, write_combined_report

    example = json.loads((DATA / "holdout-external" / "report.json").read_text())
    second = copy.deepcopy(example)
    for row in second["sites"]:
        if "auc" in row:
            row["auc"]["estimate"] = round(row["auc"]["estimate"] * 0.95, 6)
    for g in second["gaps"]:
        g["gap"] = {**g["gap"], "estimate": g["gap"]["estimate"] + 0.05}
    out = tmp_path / "run"
    for seed, doc in ((2026, example), (2027, second)):
        (out / f"seed-{seed}").mkdir(parents=True)
        (out / f"seed-{seed}" / "report.json").write_text(json.dumps(doc))
    (out / "seed-x").mkdir()  # not a seed folder: ignored
    runs = seed_dirs(out)
    assert [s for s, _ in runs] == [2026, 2027]
    report = write_combined_report(out, runs)
    validate(report)
    assert report["training_noise"]["runs"] == ["seed-2026", "seed-2027"]
    site = report["training_noise"]["sites"][0]["auc"]
    assert site["per_seed"][1] == pytest.approx(site["per_seed"][0] * 0.95, abs=1e-6)
    assert json.loads((out / "report.json").read_text()) == report
    assert "Training noise" in (out / "report.html").read_text()
    with pytest.raises(ReportError, match="at least 2 seeds"):
        write_combined_report(out, runs[:1])
