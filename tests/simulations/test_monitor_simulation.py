"""``hepafed monitor`` end to end in Flower's simulation engine: a model trained on two
sites' first months (``data.acquired-before``), then watched month by month through the
real ServerApp and ClientApps; a site whose images move after a month gets a drift notice,
the stable one nothing; running again appends nothing, and labels that arrived since are a
revision, not a new window."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from common.cli import main
from common.config import RunConfig
from server.audit import entries
from server.monitoring.model import validate
from simulations.federated import run_federated
from tests.common.test_manifest_dates import with_dates
from tests.conftest import make_site

SITES = ("site-stable", "site-moved")
PER_MONTH, TRAIN_MONTHS, WATCHED = 12, 2, 6  # Jan-Feb train; Mar-Aug watched
MOVED_FROM = 6  # the moved site's images gain +60 HU from June (month 6)
SPLITS = ("train", "train", "val", "test") * (PER_MONTH * TRAIN_MONTHS // 4) + ("test",) * (
    PER_MONTH * WATCHED
)
SETTINGS = {
    "data.roi-size": 32,
    "data.context-mm": 0.0,
    "eval.min-cases": 8,
    "eval.min-per-class": 3,
    "train.amp": False,
}


def _month_of(i: int) -> int:
    return 1 + i // PER_MONTH


def _dated_site(root: Path, name: str, seed: int) -> Path:
    site = make_site(root, name, n_cases=len(SPLITS), seed=seed, splits=SPLITS)
    cells = {}
    for i in range(len(SPLITS)):
        acquired = date(2024, _month_of(i), 1 + i % PER_MONTH * 2)
        late = i >= PER_MONTH * TRAIN_MONTHS and i % 5 == 0  # arrives after the period
        label = date(2026, 6, 30) if late else acquired + timedelta(days=20)
        cells[i] = (acquired.isoformat(), label.isoformat())
    with_dates(site, cells)
    if name == "site-moved":
        for path in sorted((site / "images").glob("*.nii.gz")):
            if _month_of(int(path.name.split("_")[0].rsplit("-", 1)[1])) >= MOVED_FROM:
                img: Any = nib.load(str(path))
                data = np.asarray(img.dataobj) + 60
                nib.save(nib.Nifti1Image(data.astype(np.int16), img.affine), str(path))
    return site


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("monitor")
    sites = root / "sites"
    for i, name in enumerate(SITES):
        _dated_site(sites, name, seed=10 + i)
    run = root / "run"
    cfg = RunConfig().replace(
        {**SETTINGS, "data.site-root": str(sites), "data.acquired-before": "2024-03-01",
         "federation.num-rounds": 2, "train.local-epochs": 2, "eval.recalibrate": "logistic",
         "output.run-dir": str(run)}
    )  # fmt: skip
    run_federated(cfg)
    common = ["monitor", "--run", str(run), "--windows", "2024-03..2024-08"]
    overrides = ["--run-config", "monitor.reference-windows=3 monitor.false-alarm-rate=0.01"]
    first = main([*common, "--as-of", "2024-12-31", "--out", str(root / "first"), *overrides])
    doc = json.loads((run / "monitor" / "monitor.json").read_text())
    length = len(entries(run / "monitor"))
    later = main([*common, "--as-of", "2026-12-31", "--out", str(root / "later"), *overrides])
    return {"run": run, "root": root, "first": first, "doc": doc, "length": length,
            "later": later}  # fmt: skip


@pytest.mark.slow
def test_the_training_run_saw_its_months_only(monitored: dict[str, object]) -> None:
    run = monitored["run"]
    assert isinstance(run, Path)
    report = json.loads((run / "report.json").read_text())
    # the first two months' test cases only: 6 of 24 per site (every fourth case)
    assert {r["site"]: r["n"] for r in report["sites"]} == {s: 6 for s in SITES}


@pytest.mark.slow
def test_a_moved_site_gets_a_drift_notice_and_the_stable_one_nothing(
    monitored: dict[str, object],
) -> None:
    doc = monitored["doc"]
    assert isinstance(doc, dict)
    validate(doc)  # the published schema
    assert doc["settings"]["windows"] == [f"2024-{m:02d}" for m in range(3, 9)]
    for site in doc["sites"]:
        assert [w["n"] for w in site["windows"]] == [PER_MONTH] * WATCHED
        assert [w["reference"] for w in site["windows"]] == [True] * 3 + [False] * 3
        # labels known by the end of 2024: all but every fifth case (arrives in 2026)
        labelled = [w["actual"]["n_labelled"] for w in site["windows"]]
        assert all(9 <= n <= 10 for n in labelled), labelled
    by_site = {a["site"]: a for a in doc["alarms"]}
    assert "site-stable" not in by_site
    moved = [a for a in doc["alarms"] if a["site"] == "site-moved"]
    assert moved and all(a["window"] >= "2024-06" for a in moved), moved
    assert {a["kind"] for a in moved} >= {"drift"}
    notice = next(a for a in moved if a["kind"] == "drift")
    assert notice["since"] == "2024-06" and "drift notice" in notice["message"]
    # the scheduler's exit code: 3 for a performance alarm, 4 for drift notices only
    expected = 3 if any(a["kind"] == "performance" for a in moved) else 4
    assert monitored["first"] == expected


@pytest.mark.slow
def test_running_again_appends_no_window_and_late_labels_are_revisions(
    monitored: dict[str, object],
) -> None:
    run, root = monitored["run"], monitored["root"]
    assert isinstance(run, Path) and isinstance(root, Path)
    chain = entries(run / "monitor")
    kinds = [e["kind"] for e in chain]
    assert kinds.count("window") == len(SITES) * WATCHED and "window-replaced" not in kinds
    outcome = json.loads((root / "later" / "monitor-run.json").read_text())
    assert outcome["failed"] == {}
    statuses = [s for sites in outcome["recorded"].values() for s in sites.values()]
    # every window was there already; the labels that arrived in 2026 revise the actual figures
    assert all(s.startswith("unchanged") for s in statuses), statuses
    assert all("labels revision 2" in s for s in statuses), statuses
    added = chain[int(str(monitored["length"])) :]
    assert [e["kind"] for e in added] == ["labels"] * (len(SITES) * WATCHED)
    doc = json.loads((run / "monitor" / "monitor.json").read_text())
    for site in doc["sites"]:
        assert all(w["actual"]["n_labelled"] == PER_MONTH for w in site["windows"])
        assert all(w["actual"]["revisions"] == 2 for w in site["windows"])
    assert monitored["later"] in (3, 4)
    html = (run / "monitor" / "monitor.html").read_text()
    assert "site-moved" in html and "Drift notices" in html


@pytest.mark.slow
def test_only_a_sealed_untampered_run_is_monitored(
    monitored: dict[str, object], tmp_path: Path
) -> None:
    import shutil

    from server.monitoring.design import MonitorRunError, load_watched

    run = monitored["run"]
    assert isinstance(run, Path)
    watched = load_watched(run, "checkpoint.pt")
    # six val cases a site are under eval.min-cases: no threshold chosen, nothing fitted,
    # and the monitor says so rather than claiming a choice
    assert watched.threshold == 0.5 and watched.recalibration == ()
    assert watched.how.startswith("the run's first eval.thresholds value, not chosen: ")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("monitor"))
    (copy / "checkpoint.pt").write_bytes((copy / "checkpoint.pt").read_bytes() + b"\0")
    with pytest.raises(MonitorRunError, match="cannot be monitored.*checkpoint"):
        load_watched(copy, "checkpoint.pt")
    with pytest.raises(MonitorRunError, match="no config.json"):
        load_watched(tmp_path, "checkpoint.pt")
    code = main(["monitor", "--run", str(tmp_path), "--windows", "2024-03"])
    assert code == 1  # failed to run: nothing is said about the model's health
