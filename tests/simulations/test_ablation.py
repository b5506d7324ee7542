"""The shift ablation: same patients, one acquisition factor changed at a time."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from common.config import RunConfig
from common.models import build_model
from common.weights import shared_state
from server.records import RunRecorder
from simulations.ablation import ALL_REVERTED, AS_SCANNED, ablate, ablation_markdown, variants
from simulations.scenario import load_scenario

SCENARIO = """
name = "tiny-ablation"
seed = 5
dims = 2

[defaults]
n_cases = 24
fov_mm = 160.0
pixel_spacing_mm = 2.0

[[site]]
name = "train-a"
kvp = 120
kernel = "standard"

[[site]]
name = "far-b"
role = "external"
kvp = 80
kernel = "sharp"
arterial_delay_s = 45.0
"""


def test_variants_change_one_factor_group_at_a_time() -> None:
    spec = load_scenario("liver-shift")
    sites = {s.name: s for s in spec.sites}
    found = variants(sites["hospital-x"], sites["hospital-a"])
    assert next(iter(found)) == AS_SCANNED and found[AS_SCANNED] == {}
    assert found["kVp (iodine contrast) as at hospital-a"] == {"kvp": (80, 100)}
    timing = found["contrast timing as at hospital-a"]
    assert timing["arterial_delay_s"] == (45.0, 35.0)
    every = found[f"{ALL_REVERTED} as at hospital-a"]
    singles = [
        v for k, v in found.items() if k not in (AS_SCANNED, f"{ALL_REVERTED} as at hospital-a")
    ]
    assert every == {f: c for v in singles for f, c in v.items()}
    assert "prevalence" not in every  # the case mix never changes


def test_ablation_scores_the_same_patients_under_each_variant(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    cfg = RunConfig().replace(
        {"data.roi-size": 32, "data.context-mm": 0.0, "eval.min-cases": 8, "eval.min-per-class": 3}
    )
    checkpoint = RunRecorder(tmp_path / "run").checkpoint(
        shared_state(build_model(cfg)), cfg, 0, "global"
    )
    rows = ablate(scenario, "far-b", checkpoint, tmp_path / "work", hooks=["bn-adapt"])
    assert [r["variant"] for r in rows] == [
        AS_SCANNED,
        "kVp (iodine contrast) as at train-a",
        "contrast timing as at train-a",
        "reconstruction kernel as at train-a",
        f"{ALL_REVERTED} as at train-a",
    ]
    assert all(r["n"] == 24 and r["adaptation"] == "bn-adapt" for r in rows)
    assert all(0.0 <= r["auc"] <= 1.0 for r in rows)
    manifests = []
    for i in range(len(rows)):
        with (tmp_path / "work" / f"variant-{i}" / "far-b" / "manifest.csv").open() as fh:
            manifests.append(
                [(r["case_id"], r["label"], r["lesion_type"]) for r in csv.DictReader(fh)]
            )
    assert all(m == manifests[0] for m in manifests)  # same patients and lesions
    text = ablation_markdown(rows)
    assert "kvp 80→120" in text and text.count("\n") == len(rows) + 2
    with pytest.raises(ValueError, match="no site 'nowhere'"):
        ablate(scenario, "nowhere", checkpoint, tmp_path / "work")
    # a model trained with pooled statistics is scored on its stored scale, or refused
    nyul_cfg = cfg.replace({"hooks.use": "nyul"})
    old = RunRecorder(tmp_path / "run").checkpoint(
        shared_state(build_model(nyul_cfg)), nyul_cfg, 0, "nyul"
    )
    with pytest.raises(ValueError, match="does not store them"):
        ablate(scenario, "far-b", old, tmp_path / "work")
