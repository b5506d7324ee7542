"""Report files: build ``report.json`` from a run folder, render HTML, print a summary.

``write_report(run_dir)`` reads what the run recorded (config.json,
evaluations.json, rounds.jsonl, the checkpoints), builds the report
(``server.report.build``), validates it (``server.report.schema``: the models that
``report.schema.json`` is generated from) and writes
``report.json`` and the self-contained ``report.html``. ``render(run_dir)``
re-renders the HTML from ``report.json`` alone (``hepafed report RUN_DIR``).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

from common.files import write_atomic
from common.keys import RecordPhase
from common.signing import state_hash
from server.designs import Evaluation
from server.records import (
    checkpoint_name,
    load_checkpoint,
    read_config,
    read_evaluations,
    read_rounds,
)
from server.report.build import build_report
from server.report.html import render_html
from server.report.model import REPORT_VERSION
from server.report.privacy import privacy_section
from server.report.schema import ReportError, validate
from server.report.schema import schema as schema  # re-exported: callers read it here

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def code_version() -> str:
    """hepafed's installed version, plus the git commit when run from a checkout."""
    try:
        version = importlib.metadata.version("hepafed")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+g{commit}" if commit else version


def provenance(run_dir: Path, sites: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Model hashes (``common.signing.state_hash`` of each checkpoint: the hash the audit
    trail and the signatures use), manifest hashes, code version, the config's source."""
    hashes = {}
    for model in models:
        path = run_dir / checkpoint_name(model)
        if path.exists():
            hashes[model] = state_hash(load_checkpoint(path)["model"])
    return {
        "run_dir": str(run_dir.resolve()),
        "model_sha256": hashes,
        "manifest_sha256": {str(s["name"]): str(s.get("manifest_sha256", "")) for s in sites},
        "code_version": code_version(),
    }


def failed_evaluations(run_dir: Path) -> dict[str, dict[str, str]]:
    """model -> site -> reason, for final evaluations a site did not deliver."""
    out: dict[str, dict[str, str]] = {}
    for entry in read_rounds(run_dir):
        if entry.get("phase") == RecordPhase.FINAL_EVALUATE and entry.get("failed"):
            out.setdefault(entry["model"], {}).update(entry["failed"])
    return out


def threshold_choices(run_dir: Path) -> list[dict[str, Any]]:
    """Each model's recorded operating-threshold choice (``server.threshold_choice``), the
    last one per model, in the order they were made: a chosen threshold, or a fixed one
    with a recalibration fitted on validation data."""
    out: dict[str, dict[str, Any]] = {}
    for entry in read_rounds(run_dir):
        if entry.get("phase") != RecordPhase.THRESHOLD:
            continue
        if entry.get("rule") != "fixed" or "recalibration" in entry:
            out[entry["model"]] = {k: v for k, v in entry.items() if k != "phase"}
    return list(out.values())


def write_report(
    run_dir: Path | str,
    extra: list[Evaluation] | None = None,
    extra_choices: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build, validate and write report.json and report.html for a finished run;
    ``extra``: evaluations made outside the run (a simulation's pooled baseline), with
    their threshold choices ``extra_choices``."""
    run_dir = Path(run_dir)
    try:
        recorded = read_config(run_dir)
        evaluations = [Evaluation.from_dict(d) for d in read_evaluations(run_dir)]
    except (OSError, ValueError, KeyError) as err:
        raise ReportError(f"{run_dir} is not a finished hepafed run: {err}") from err
    evaluations += extra or []
    models = sorted({e.model for e in evaluations})
    report = build_report(
        evaluations,
        recorded["config"],
        recorded["sites"],
        provenance={
            **provenance(run_dir, recorded["sites"], models),
            "config": recorded["config"],
        },
        failed=failed_evaluations(run_dir),
        privacy=privacy_section(read_rounds(run_dir), recorded["config"]),
        threshold_choices=[*threshold_choices(run_dir), *(extra_choices or [])],
    )
    validate(report)
    write_atomic(run_dir / REPORT_JSON, json.dumps(report, indent=1, allow_nan=False))
    write_atomic(run_dir / REPORT_HTML, render_html(report))
    return report


def load_report(path: Path | str) -> dict[str, Any]:
    """A report.json (or the run folder holding one), validated against the schema."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    try:
        report = dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ReportError(
            f"{path} does not exist: run `hepafed simulate` or a federation first"
        ) from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON: {err}") from None
    validate(upgrade(report))
    return report


def upgrade(report: dict[str, Any]) -> dict[str, Any]:
    """A report of an earlier layout brought to the current one, in place.

    1.0 -> 1.1 added what each site did to a model before scoring it
    (``adaptation``) and the run's hooks (``settings.hooks``); a 1.0 run had no
    hooks, so every site scored the model as received. (Since then only optional
    blocks were added: ``settings.threshold_choices``, ``training_noise``, a joined
    site's ``n_val``; a report without them used the first of its thresholds and one
    seed.)"""
    if report.get("report_version") == "1.0":
        report.setdefault("settings", {}).setdefault("hooks", [])
        rows = [*report.get("sites", []), *report.get("matrix", [])]
        for fold in report.get("folds") or []:
            rows += fold.get("sites", []) if isinstance(fold, dict) else []
        for row in rows:
            row.setdefault("adaptation", "none")
        report["report_version"] = REPORT_VERSION
    return report


def render(path: Path | str) -> Path:
    """Re-render report.html next to report.json from the JSON alone."""
    report = load_report(path)
    target = (Path(path) if Path(path).is_dir() else Path(path).parent) / REPORT_HTML
    write_atomic(target, render_html(report))
    return target
