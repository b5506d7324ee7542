"""A whole run folder checked against its audit trail: the chain and its signed head, whether
the run ended, the report and its signature, every checkpoint, the report's model hashes.

The trail records the SHA-256 of every checkpoint it writes (``checkpoint`` entries), of the
report files (``report``, sealed by the ``final`` entry and the head), and each model's
``common.signing`` hash. A checkpoint or report file that does not match is named: swapped
(it is another recorded checkpoint, e.g. another model's or an older round's), edited,
missing, or not written by this run at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.audit_check import AuditError, AuditReport, entries, verify_trail
from server.trust import REPORT_FILES, REPORT_SIGNATURE, file_sha256, report_problems

CHECKPOINT_KIND = "checkpoint"
REPORT_KIND = "report"
CHECKPOINT_GLOB = "checkpoint*.pt"


@dataclass(frozen=True)
class RunAudit:
    """What ``verify_run`` found: the trail's own report, and every problem in the folder
    (the trail's first). A run that did not end is not a problem: ``finished`` is False."""

    trail: AuditReport
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True when nothing in the folder contradicts the trail."""
        return not self.problems

    @property
    def finished(self) -> bool:
        """Whether the run ended: its trail is sealed by a ``final`` entry and the head."""
        return self.trail.final


def recorded_checkpoints(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Checkpoint file name -> data of the last ``checkpoint`` entry that wrote it."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        data = item.get("data")
        if item.get("kind") == CHECKPOINT_KIND and isinstance(data, dict) and "file" in data:
            out[str(data["file"])] = data
    return out


def _every_checkpoint(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """SHA-256 -> the first ``checkpoint`` entry that recorded it (any file, any round)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        data = item.get("data")
        if item.get("kind") == CHECKPOINT_KIND and isinstance(data, dict):
            out.setdefault(str(data.get("sha256", "")), data)
    return out


def _which(data: Mapping[str, Any]) -> str:
    return f"model {data.get('model')!r}, round {data.get('round')}"


def checkpoint_problem(path: Path, items: list[dict[str, Any]]) -> str | None:
    """Why the checkpoint file ``path`` is not the one the trail (``items``) recorded, or None.

    Names a missing file, one swapped for another recorded checkpoint (another model's, or an
    older round of the same model), an edited one, and one the trail never recorded."""
    recorded = recorded_checkpoints(items).get(path.name)
    if recorded is None:
        if not path.exists():
            return None
        return (
            f"{path.name}: not recorded in the audit trail: not written by this run (left "
            "from an earlier run in this folder, or planted); move it out of the run folder"
        )
    if not path.exists():
        return f"{path.name}: missing (the audit trail recorded it for {_which(recorded)})"
    digest = file_sha256(path)
    if digest == recorded.get("sha256"):
        return None
    other = _every_checkpoint(items).get(digest)
    if other is not None:
        return (
            f"{path.name}: swapped: it is {other.get('file')} of {_which(other)}, not the "
            f"checkpoint the audit trail recorded for {_which(recorded)}"
        )
    return (
        f"{path.name}: edited or replaced: its SHA-256 {digest[:12]}... is not "
        f"{str(recorded.get('sha256'))[:12]}..., which the audit trail recorded for "
        f"{_which(recorded)}"
    )


def checkpoint_problems(run_dir: Path, items: list[dict[str, Any]]) -> list[str]:
    """Every checkpoint the trail recorded or the folder holds, checked by SHA-256."""
    names = set(recorded_checkpoints(items)) | {p.name for p in run_dir.glob(CHECKPOINT_GLOB)}
    found = (checkpoint_problem(run_dir / name, items) for name in sorted(names))
    return [problem for problem in found if problem]


def _recorded_report(trail: AuditReport, items: list[dict[str, Any]]) -> dict[str, str] | None:
    """The report hashes the run vouches for: sealed by the head, else the last ``report``."""
    if trail.report is not None:
        return dict(trail.report)
    reports = [i for i in items if i.get("kind") == REPORT_KIND]
    return dict(reports[-1]["data"].get("files", {})) if reports else None


def report_file_problems(
    run_dir: Path, trail: AuditReport, items: list[dict[str, Any]], key: Any | None
) -> list[str]:
    """The report files against the hashes the trail recorded, and ``report.sig.json``
    against those hashes, this run's id and the server key (a public key, or None)."""
    recorded = _recorded_report(trail, items)
    if recorded is None:
        return [
            f"{name}: present, but the audit trail records no report: it was not written by "
            "this run's server, or the trail was cut back before its report entry"
            for name in REPORT_FILES
            if (run_dir / name).exists()
        ]
    problems = []
    for name, digest in sorted(recorded.items()):
        path = run_dir / name
        if not path.exists():
            problems.append(f"{name}: missing (the audit trail recorded it)")
        elif file_sha256(path) != digest:
            problems.append(f"{name}: changed since the audit trail recorded its hash")
    problems += report_problems(run_dir, key)
    problems += _signature_statement_problems(run_dir, recorded, trail.run_id)
    return problems


def _signature_statement_problems(
    run_dir: Path, recorded: Mapping[str, str], run_id: str
) -> list[str]:
    """``report.sig.json``'s statement must name this run and the hashes the trail holds."""
    try:
        statement = json.loads((run_dir / REPORT_SIGNATURE).read_text())["statement"]
        files, run = dict(statement["files"]), statement["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # missing or unreadable: report_problems names it
    problems = []
    if files != dict(recorded):
        problems.append(
            f"{REPORT_SIGNATURE}: it signs other report hashes than the audit trail recorded: "
            "edited, or taken from another run"
        )
    if run_id and run != run_id:
        problems.append(f"{REPORT_SIGNATURE}: it signs run {run!r}, not this run {run_id!r}")
    return problems


def provenance_problems(run_dir: Path, items: list[dict[str, Any]]) -> list[str]:
    """report.json's model hashes against each model's hash in its ``checkpoint`` entry."""
    try:
        report = json.loads((run_dir / REPORT_FILES[0]).read_text(encoding="utf-8"))
        hashes = dict(report["provenance"]["model_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return []  # no report yet, or one the hash checks already name
    by_model = {str(d.get("model")): d for d in recorded_checkpoints(items).values()}
    problems = []
    for model, digest in sorted(hashes.items()):
        want = by_model.get(model, {}).get("model_sha256")
        if want is not None and digest != want:
            problems.append(
                f"{REPORT_FILES[0]}: the model_sha256 of {model!r} ({str(digest)[:12]}...) is "
                f"not the one the audit trail recorded for its checkpoint ({str(want)[:12]}...)"
            )
    return problems


def verify_run(
    run_dir: Path | str,
    verify: Callable[[bytes, bytes], bool] | None = None,
    key: Any | None = None,
) -> RunAudit:
    """Check ``RUN_DIR``: the trail (``verify_trail``); when it is intact, the report files,
    their signature, the report's model hashes and every checkpoint against it.

    ``verify`` checks the head signature, ``key`` (the same server public key) the report's.
    """
    folder = Path(run_dir)
    trail = verify_trail(folder, verify)
    if not trail.ok:
        return RunAudit(trail, list(trail.problems))
    try:
        items = entries(folder)
    except (OSError, AuditError) as e:  # verified a moment ago: changed while we read it
        return RunAudit(trail, [f"the audit trail changed while it was checked: {e}"])
    problems = report_file_problems(folder, trail, items, key)
    problems += provenance_problems(folder, items)
    problems += checkpoint_problems(folder, items)
    return RunAudit(trail, problems)
