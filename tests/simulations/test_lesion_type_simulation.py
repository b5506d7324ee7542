"""Task ``lesion-type`` end to end: an MRI scenario through `hepafed simulate --compare`
(Flower's simulation engine, the real ServerApp and ClientApp), channel subsets on the
same cases, and the three-way report of one of its runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from common.cli import main
from common.summary import SUPPRESSED_CELL
from server.designs import Evaluation
from server.records import read_evaluations
from server.report.files import load_report
from simulations.compare import compare

SCENARIO = """
name = "tiny-mri"
modality = "mri"
seed = 5
dims = 2

[defaults]
fov_mm = 140.0
pixel_spacing_mm = 2.0
test_fraction = 0.4
class_mix = { benign = 0.4, primary = 0.35, metastasis = 0.25 }

[[site]]
name = "center-a"
n_cases = 70

[[site]]
name = "center-b"
role = "external"
n_cases = 36
field_strength_t = 3.0
receiver_gain = 2.5
"""

SETTINGS = {
    "eval.min-cases": 8,
    "eval.min-per-class": 3,
    "data.roi-size": 32,
    "data.context-mm": 0.0,
}


@pytest.mark.slow
def test_lesion_type_trains_on_mri_and_compares_channel_subsets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny-mri.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "cmp"
    methods = ["channels=t2", "fedavg"]
    doc = compare(methods, 1, scenario, tmp_path / "data", out, SETTINGS, quick=True)
    assert set(doc["methods"]) == set(methods)
    assert doc["methods"]["channels=t2"]["hooks"] == ["channels t2"]
    run = out / "seed-2026"
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["task"] == "lesion-type" and config["data.intensity"] == "percentile"
    assert config["data.channels"].count(",") == 6  # all seven MRI channels by default
    evaluations = [Evaluation.from_dict(d) for d in read_evaluations(run)]
    by = {(e.model, e.site): e.summary for e in evaluations}
    # each method trained its own model (different inputs) and scored both centers
    assert {m for m, _ in by} >= {"channels=t2", "fedavg"}
    phantom = tmp_path / "data" / "phantom" / "tiny-mri-seed5"
    for model in ("channels=t2", "fedavg"):
        for site in ("center-a", "center-b"):
            with (phantom / site / "manifest.csv").open() as fh:
                n_test = sum(r["split"] == "test" for r in csv.DictReader(fh))
            s = by[model, site]
            assert s.n == n_test and sum(s.class_n) == n_test
            # the binary view: malignant = primary + metastasis
            assert s.n_pos == s.class_n[1] + s.class_n[2] and s.n_neg == s.class_n[0]
            assert s.auc is not None and 0.0 <= s.auc <= 1.0
            if s.class_auc:  # every class big enough at this site
                assert len(s.class_auc_cov) == 9 and sum(s.class_pred) == n_test
                shown = [c for c in s.confusion if c != SUPPRESSED_CELL]
                assert sum(shown) <= n_test and s.confusion[0] == s.class_correct[0]
    assert by["channels=t2", "center-a"].auc != by["fedavg", "center-a"].auc

    # a plain simulation of the same scenario: the three-way report
    sim = tmp_path / "sim"
    code = main(
        ["simulate", "--scenario", str(scenario), "--quick", "--data-dir",
         str(tmp_path / "data"), "--out", str(sim), "--run-config",
         "eval.min-cases=8 eval.min-per-class=3 data.roi-size=32 data.context-mm=0"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "three-way lesion type" in printed
    report = load_report(sim)
    assert report["task"] == "lesion-type"
    block = report["lesion_type"]
    assert block["classes"] == ["benign", "primary malignant", "metastasis"]
    rows = {r["site"]: r for r in block["sites"]}
    assert {r["role"] for r in rows.values()} == {"internal", "external"}
    summaries = {e.site: e.summary for e in map(Evaluation.from_dict, read_evaluations(sim))
                 if e.model == "global"}  # fmt: skip
    for site, row in rows.items():
        s = summaries[site]
        assert row["class_n"] == list(s.class_n)
        if row["insufficient"]:
            continue
        aucs = [c["auc"]["estimate"] for c in row["per_class"]]
        assert aucs == pytest.approx(list(s.class_auc))
        assert row["macro"]["estimate"] == pytest.approx(sum(aucs) / 3)
        sens = [c["sensitivity"]["estimate"] for c in row["per_class"]]
        by_hand = [c / n for c, n in zip(s.class_correct, s.class_n, strict=True)]
        assert sens == pytest.approx(by_hand)
    # the headline table is the benign vs malignant view of the same summaries
    site_rows = {r["site"]: r for r in report["sites"] if r["model"] == "global"}
    for site, s in summaries.items():
        assert site_rows[site]["auc"]["estimate"] == pytest.approx(s.auc)
        assert site_rows[site]["n_pos"] == s.class_n[1] + s.class_n[2]
    html = (sim / "report.html").read_text()
    assert "Three-way lesion type" in html and "Lesion type (benign" in html
