"""The monitoring folder of a deployed model (``server.monitor_store``): linked to a sealed
training trail, append-only, no silent replacement, no duplicates, label revisions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from server.audit import AuditTrail, entries, verify_trail
from server.monitoring.store import MonitorError, MonitorStore

SUMMARY = {"n": 40, "estimated_auc": 0.81, "insufficient": False}


def _training_run(tmp_path: Path, seal: bool = True) -> Path:
    run = tmp_path / "train"
    trail = AuditTrail(run)
    trail.append("config", {"run_id": "run-1"})
    (run / "global_model.pt").write_bytes(b"weights")
    (run / "report.json").write_text("{}")
    if seal:
        trail.seal({"report.json": hashlib.sha256(b"{}").hexdigest()})
    return run


def test_a_monitoring_folder_starts_from_a_sealed_run_and_names_the_model(tmp_path: Path) -> None:
    run = _training_run(tmp_path)
    store = MonitorStore.create(tmp_path / "mon", run, "global_model.pt")
    first = entries(tmp_path / "mon")[0]["data"]
    assert first["model_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert first["training_run_id"] == "run-1"
    head = json.loads((run / "audit.head.json").read_text())
    assert first["training_head_sha256"] == head["hash"]
    assert store.model == first
    # opened again: the same folder, the same model
    again = MonitorStore.create(tmp_path / "mon", run, "global_model.pt")
    assert again.model == first and len(entries(tmp_path / "mon")) == 1


def test_an_unsealed_or_other_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="has not ended"):
        MonitorStore.create(
            tmp_path / "mon", _training_run(tmp_path, seal=False), "global_model.pt"
        )
    run = tmp_path / "train"
    AuditTrail(run).seal({"report.json": hashlib.sha256(b"{}").hexdigest()})
    MonitorStore.create(tmp_path / "mon", run, "global_model.pt")
    (run / "other.pt").write_bytes(b"other weights")
    with pytest.raises(MonitorError, match="one monitoring folder per deployed model"):
        MonitorStore.create(tmp_path / "mon", run, "other.pt")
    with pytest.raises(MonitorError, match="no such checkpoint"):
        MonitorStore.create(tmp_path / "mon2", run, "missing.pt")
    with pytest.raises(MonitorError, match="not a monitoring folder"):
        MonitorStore(tmp_path / "elsewhere")


def test_windows_are_added_once_and_replaced_only_when_asked(tmp_path: Path) -> None:
    store = MonitorStore.create(tmp_path / "mon", _training_run(tmp_path), "global_model.pt")
    assert store.record_window("hospital-a", "2026-11", SUMMARY) == "added"
    assert store.record_window("hospital-a", "2026-11", dict(SUMMARY)) == "unchanged"
    assert len(entries(tmp_path / "mon")) == 2  # nothing duplicated
    changed = {**SUMMARY, "estimated_auc": 0.78}
    with pytest.raises(MonitorError, match="already recorded with another summary"):
        store.record_window("hospital-a", "2026-11", changed)
    with pytest.raises(MonitorError, match="needs a reason"):
        store.record_window("hospital-a", "2026-11", changed, replace=True)
    assert store.record_window("hospital-a", "2026-11", changed, replace=True,
                               reason="cases re-exported") == "replaced"  # fmt: skip
    w = store.windows()[("hospital-a", "2026-11")]
    assert w.summary["estimated_auc"] == 0.78
    assert w.replaced[0]["reason"] == "cases re-exported"
    assert w.replaced[0]["entry"] == entries(tmp_path / "mon")[1]["hash"]
    with pytest.raises(MonitorError, match="name it YYYY-MM"):
        store.record_window("hospital-a", "November", SUMMARY)


def test_late_labels_are_numbered_revisions_and_the_chain_verifies(tmp_path: Path) -> None:
    store = MonitorStore.create(tmp_path / "mon", _training_run(tmp_path), "global_model.pt")
    store.record_window("hospital-b", "2026-10", SUMMARY)
    store.record_window("hospital-a", "2026-11", SUMMARY)
    with pytest.raises(MonitorError, match="record the window first"):
        store.record_labels("hospital-a", "2026-09", {"auc": 0.8})
    assert store.record_labels("hospital-b", "2026-10", {"auc": 0.79, "n_labelled": 12}) == 1
    assert store.record_labels("hospital-b", "2026-10", {"auc": 0.79, "n_labelled": 12}) == 1
    assert store.record_labels("hospital-b", "2026-10", {"auc": 0.74, "n_labelled": 30}) == 2
    state = store.windows()
    assert list(state) == [("hospital-b", "2026-10"), ("hospital-a", "2026-11")]  # time order
    assert state[("hospital-b", "2026-10")].actual == {"auc": 0.74, "n_labelled": 30}
    assert state[("hospital-b", "2026-10")].revisions == 2
    assert verify_trail(tmp_path / "mon").ok
    # tampering with a stored window is evidence: the folder is not continued
    path = tmp_path / "mon" / "audit.jsonl"
    path.write_text(path.read_text().replace("0.74", "0.94"))
    with pytest.raises(Exception, match="does not verify"):
        MonitorStore(tmp_path / "mon")
