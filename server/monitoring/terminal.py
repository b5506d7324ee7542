"""The terminal view of ``monitor.json``: the model, the counts, each event, each site.

``hepafed monitor`` prints it after writing the files. Performance alarms and drift
notices are named apart (a drift notice is not an alarm). It reads the document alone
and imports nothing of the runtime, nor the HTML renderer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["summary_text"]

PERFORMANCE, DRIFT = "performance", "drift"


def _num(value: object, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a"
    return f"{value:.{digits}f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _records(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _site_line(site: Mapping[str, Any], events: list[Mapping[str, Any]]) -> str:
    """``hospital-a: 24 windows, no alarm; est. AUC 0.84 (ref 0.85)``."""
    name = str(site.get("site", ""))
    windows = _records(site.get("windows"))
    short = sum(1 for w in windows if w.get("insufficient") is True)
    count = _plural(len(windows), "window") + (f" ({short} insufficient)" if short else "")
    mine = [e for e in events if e.get("site") == name]
    states = []
    for kind, label in ((PERFORMANCE, "performance alarm"), (DRIFT, "drift notice")):
        hits = [e for e in mine if e.get("kind") == kind]
        if hits:
            first = hits[0]
            since = f" (since {first['since']})" if first.get("since") else ""
            where = ", ".join(sorted({str(e.get("window")) for e in hits}))
            states.append(f"{label} in {where}{since}")
    if not any(e.get("kind") == PERFORMANCE for e in mine):
        states.insert(0, "no alarm")
    latest = next(
        (w["est_auc"] for w in reversed(windows) if isinstance(w.get("est_auc"), Mapping)), None
    )
    est = _num(latest.get("estimate")) if latest else "n/a"
    reference = _mapping(site.get("reference"))
    ref = (
        f"ref {_num(reference.get('est_auc_mean'))}"
        if reference.get("status") == "ok"
        else "reference insufficient"
    )
    return f"{name}: {count}, {', '.join(states)}; est. AUC {est} ({ref})"


def summary_text(doc: Mapping[str, Any]) -> str:
    """The terminal summary of a ``monitor.json`` document (see the module docstring)."""
    model, settings = _mapping(doc.get("model")), _mapping(doc.get("settings"))
    windows = [str(w) for w in settings.get("windows") or []]
    span = f"windows {windows[0]} to {windows[-1]} ({len(windows)})" if windows else "no windows"
    sha = str(model.get("model_sha256") or "")
    events = _records(doc.get("alarms"))
    alarms = [e for e in events if e.get("kind") == PERFORMANCE]
    notices = [e for e in events if e.get("kind") == DRIFT]
    sites = _records(doc.get("sites"))
    short = sum(1 for s in sites for w in _records(s.get("windows")) if w.get("insufficient"))
    lines = [
        f"monitor of {model.get('task', 'model')} model {sha[:12] or 'n/a'} "
        f"({model.get('checkpoint', 'n/a')}, training run {model.get('training_run_id', 'n/a')})",
        f"{span}, labels as of {settings.get('as_of', 'n/a')}, {_plural(len(sites), 'site')}",
        f"{_plural(len(alarms), 'performance alarm')}, {_plural(len(notices), 'drift notice')}, "
        f"{_plural(short, 'insufficient site-window')}",
    ]
    lines += [f"  performance alarm: {e.get('message', '')}" for e in alarms]
    lines += [f"  drift notice: {e.get('message', '')}" for e in notices]
    lines += [_site_line(s, events) for s in sites]
    return "\n".join(lines)
