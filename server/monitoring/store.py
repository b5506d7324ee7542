"""The monitoring folder of one deployed model: window summaries on a signed, append-only chain.

A model that goes into use is watched window by window (a month, say) at every site.
Each window's site summaries are appended to the model's monitoring folder, whose
``audit.jsonl`` is a hash chain of its own (``server.audit.AuditTrail``: the same
entries, head and signature as a training run's trail), linked to the training run:

- the first entry (kind ``config``) names the model by the SHA-256 of its checkpoint,
  and the training run by its id, the hash of its **sealed** trail head and the report
  hashes that head seals (a run whose trail does not verify or is not sealed is
  refused: monitoring starts from a finished, accounted-for run);
- ``window``: one site's summary of one window (``site``, ``window``, ``summary``);
- ``window-replaced``: the same window run again with a different summary, only when
  asked (``replace=True``), naming the entry it supersedes and why; re-running a
  window with the identical summary appends nothing (nothing is duplicated), and a
  different summary without ``replace`` is refused (nothing is replaced silently);
- ``labels``: the actual figures of a past window once its labels arrive, as numbered
  revisions (revision 1, 2, ... each naming the one before), so a late label changes
  a window's actual figures visibly.

``MonitorStore.windows()`` replays the chain into the current state of every
(site, window). Window names are ``YYYY-MM``, ``YYYY-MM-DD`` or a range of either
joined by ``/``; they sort in time order as text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.audit import AuditError, AuditTrail, entries, verify_trail
from server.audit_check import canonical

WINDOW = re.compile(r"^\d{4}-\d{2}(-\d{2})?(/\d{4}-\d{2}(-\d{2})?)?$")
CONFIG, ADDED, REPLACED, LABELS = "config", "window", "window-replaced", "labels"


class MonitorError(ValueError):
    """A monitoring record that cannot be stored as asked; the message says what to do."""


def digest(obj: Mapping[str, Any]) -> str:
    """SHA-256 of a summary's canonical JSON (the identity of what a site sent)."""
    return hashlib.sha256(canonical(obj)).hexdigest()


@dataclass
class WindowState:
    """One site's window as the chain has it now."""

    site: str
    window: str
    summary: dict[str, Any]
    summary_sha256: str
    entry: str  # hash of the entry that holds the current summary
    replaced: list[dict[str, Any]] = field(default_factory=list)  # superseded entries, reasons
    actual: dict[str, Any] | None = None  # the latest labels revision's figures
    revisions: int = 0


class MonitorStore:
    """Open (or create, with ``create``) the monitoring folder of one model."""

    def __init__(self, folder: Path | str, sign: Callable[[bytes], bytes] | None = None) -> None:
        self.folder = Path(folder)
        items = entries(self.folder) if (self.folder / "audit.jsonl").exists() else []
        if not items or items[0]["kind"] != CONFIG:
            raise MonitorError(
                f"{self.folder} is not a monitoring folder (no model entry): create it with "
                "MonitorStore.create from the model's sealed training run"
            )
        self.trail = AuditTrail(self.folder, sign)  # verifies the chain before continuing it
        self.model = dict(items[0]["data"])

    @classmethod
    def create(
        cls,
        folder: Path | str,
        training_run: Path | str,
        checkpoint: str,
        sign: Callable[[bytes], bytes] | None = None,
        verify: Callable[[bytes, bytes], bool] | None = None,
    ) -> MonitorStore:
        """Start the monitoring folder of ``checkpoint`` (a file name in ``training_run``),
        linked to the training run's sealed trail; ``verify`` checks the training head's
        signature with the server's public key."""
        run = Path(training_run)
        report = verify_trail(run, verify)
        if not report.ok or not report.final:
            why = "; ".join(report.problems) or "the run has not ended (its trail is not sealed)"
            raise MonitorError(
                f"the training run {run} cannot be monitored from: {why}. Monitor the model "
                "of a finished run whose audit trail verifies (hepafed audit RUN)"
            )
        path = run / checkpoint
        if not path.is_file():
            raise MonitorError(f"{path}: no such checkpoint in the training run")
        model_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        target = Path(folder)
        if (target / "audit.jsonl").exists():
            store = cls(target, sign)
            if store.model.get("model_sha256") != model_sha:
                raise MonitorError(
                    f"{target} monitors model {store.model.get('model_sha256', '?')[:12]}, not "
                    f"{model_sha[:12]} ({path}): one monitoring folder per deployed model"
                )
            return store
        head = json.loads((run / "audit.head.json").read_text(encoding="utf-8"))
        trail = AuditTrail(target, sign)
        trail.append(
            CONFIG,
            {
                "run_id": f"monitor-{model_sha[:16]}",
                "model_sha256": model_sha,
                "checkpoint": checkpoint,
                "training_run_id": report.run_id,
                "training_head_sha256": head["hash"],
                "training_report": dict(report.report or {}),
            },
        )
        return cls(target, sign)

    # ---- appending ---------------------------------------------------------------------------

    def record_window(
        self, site: str, window: str, summary: Mapping[str, Any], replace: bool = False,
        reason: str = "",
    ) -> str:  # fmt: skip
        """Store one site's summary of one window: "added", "unchanged" (the identical
        summary is already there) or "replaced" (``replace`` with a ``reason``)."""
        _check_window(window)
        now = digest(summary)
        current = self.windows().get((site, window))
        if current is None:
            self.trail.append(ADDED, {"site": site, "window": window, "summary": dict(summary),
                                      "summary_sha256": now})  # fmt: skip
            return "added"
        if current.summary_sha256 == now:
            return "unchanged"
        if not replace:
            raise MonitorError(
                f"window {window} of site {site!r} is already recorded with another summary "
                f"({current.summary_sha256[:12]}, now {now[:12]}): nothing replaced. Run it "
                "again with replace and a reason to supersede it (both stay on the record)"
            )
        if not reason.strip():
            raise MonitorError(f"replacing window {window} of site {site!r} needs a reason")
        self.trail.append(REPLACED, {"site": site, "window": window, "summary": dict(summary),
                                     "summary_sha256": now, "replaces": current.entry,
                                     "reason": reason})  # fmt: skip
        return "replaced"

    def record_labels(self, site: str, window: str, actual: Mapping[str, Any]) -> int:
        """Store a window's actual figures from labels that arrived; the revision number
        (1 for the first). Identical figures again append nothing."""
        current = self.windows().get((site, window))
        if current is None:
            raise MonitorError(
                f"no summary of window {window} at site {site!r} to attach labels to: record "
                "the window first"
            )
        if current.actual is not None and digest(current.actual) == digest(actual):
            return current.revisions
        revision = current.revisions + 1
        revises = digest(current.actual) if current.actual else None
        record = {"site": site, "window": window, "actual": dict(actual)}
        self.trail.append(LABELS, {**record, "revision": revision, "revises": revises})
        return revision

    # ---- reading -----------------------------------------------------------------------------

    def windows(self) -> dict[tuple[str, str], WindowState]:
        """Every (site, window) as the chain has it now, in time order."""
        state: dict[tuple[str, str], WindowState] = {}
        for e in entries(self.folder):
            d = e["data"]
            key = (str(d.get("site", "")), str(d.get("window", "")))
            if e["kind"] == ADDED:
                state[key] = WindowState(key[0], key[1], d["summary"], d["summary_sha256"],
                                         e["hash"])  # fmt: skip
            elif e["kind"] == REPLACED and key in state:
                old = state[key]
                old.replaced.append({"entry": old.entry, "summary_sha256": old.summary_sha256,
                                     "reason": d["reason"]})  # fmt: skip
                old.summary, old.summary_sha256, old.entry = (
                    d["summary"],
                    d["summary_sha256"],
                    e["hash"],
                )
            elif e["kind"] == LABELS and key in state:
                state[key].actual, state[key].revisions = d["actual"], int(d["revision"])
        return dict(sorted(state.items(), key=lambda kv: (kv[0][1], kv[0][0])))


def _check_window(window: str) -> None:
    if not WINDOW.match(window):
        raise MonitorError(
            f"window {window!r}: name it YYYY-MM, YYYY-MM-DD or a range FROM/TO of either"
        )


__all__ = ["AuditError", "MonitorError", "MonitorStore", "WindowState", "digest"]
