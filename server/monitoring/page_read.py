"""``monitor.json`` read into the page's model (``server.monitoring.page``): this is the
only code that reads the document; alarms and notices are grouped into lasting changes
(``grouped``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from server.monitoring.page import (
    DRIFT,
    PERFORMANCE,
    STATISTIC_NAMES,
    Change,
    Chart,
    Check,
    CheckRow,
    Event,
    Header,
    MonitorPage,
    Reference,
    Row,
    Site,
)
from server.report.html.charts.cusum import cusum_svg
from server.report.html.charts.svg import FLAG_COLOUR, Ids
from server.report.html.charts.timeline import NOTICE_COLOUR, Point, timeline_svg
from server.report.html.format import finite, fmt_g
from server.report.html.labels import TASK_NAMES
from server.report.html.view_provenance import HASH_CHARS, Hash
from server.report.html.view_read import estimate, get, mapping, records, text

__all__ = ["grouped", "read_monitor"]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(value: object) -> int:
    """A count given as a number or as the list of what it counts."""
    return len(value) if isinstance(value, list) else _int(value) or 0


def _setting(value: object) -> str:
    v = finite(value)
    return "n/a" if v is None else fmt_g(v)


def _point(block: object) -> Point | None:
    e = estimate(block)
    return None if e.estimate is None else Point(e.estimate, e.lo, e.hi)


def _header(doc: Mapping[str, Any]) -> Header:
    model, settings = mapping(doc.get("model")), mapping(doc.get("settings"))
    windows = [text(w) for w in settings.get("windows") or []]
    full = text(model.get("model_sha256"))
    short = full[:HASH_CHARS] + ("\u2026" if len(full) > HASH_CHARS else "")
    recal = model.get("recalibration")
    ab = [v for v in map(finite, recal) if v is not None] if isinstance(recal, list) else []
    task = text(model.get("task"))
    return Header(
        model_hash=Hash(full, short) if full else None,
        checkpoint=text(model.get("checkpoint")),
        run_id=text(model.get("training_run_id")),
        task=TASK_NAMES.get(task, task),
        threshold=finite(model.get("threshold")),
        threshold_how=text(model.get("threshold_how")),
        recalibration=(ab[0], ab[1]) if len(ab) == 2 else None,
        created=text(doc.get("created")),
        first=windows[0] if windows else "",
        last=windows[-1] if windows else "",
        n_windows=len(windows),
        as_of=text(settings.get("as_of")),
        reference_windows=_int(settings.get("reference_windows")),
        false_alarm_rate=_setting(settings.get("false_alarm_rate")),
        charts_per_site=_int(settings.get("charts_per_site")),
        arl0=finite(settings.get("arl0")),
        k=finite(settings.get("cusum_k")),
        h=finite(settings.get("cusum_h")),
        level_pct=f"{fmt_g(100 * (finite(settings.get('level')) or 0.95))}%",
        min_cases=_int(settings.get("min_cases")),
    )


def _event(alarm: Mapping[str, Any], anchors: Mapping[str, str]) -> Event:
    statistic = text(alarm.get("statistic"))
    return Event(
        site=text(alarm.get("site")),
        anchor=anchors.get(text(alarm.get("site")), ""),
        window=text(alarm.get("window")),
        statistic=STATISTIC_NAMES.get(statistic, statistic),
        value=finite(alarm.get("value")),
        reference=finite(alarm.get("reference")),
        z=finite(alarm.get("z")),
        since=text(alarm.get("since")),
        message=text(alarm.get("message")),
    )


def _row(w: Mapping[str, Any], alarms: set[str], notices: set[str]) -> Row:
    actual = mapping(w.get("actual"))
    window = text(w.get("window"))
    return Row(
        window=window,
        n=_int(w.get("n")),
        insufficient=w.get("insufficient") is True,
        reference=w.get("reference") is True,
        est_auc=estimate(w.get("est_auc")),
        actual_auc=estimate(actual.get("auc")),
        labelled=_int(actual.get("n_labelled")),
        labelled_pos=_int(actual.get("n_labelled_pos")),
        labels_insufficient=actual.get("insufficient") is True,
        embedding=finite(get(w, "drift", "embedding")),
        intensity=finite(get(w, "drift", "intensity")),
        revisions=_int(actual.get("revisions")),
        replaced=_int(w.get("replaced")),
        alarm=window in alarms,
        notice=window in notices,
    )


def _reference(block: object) -> Reference:
    r = mapping(block)
    return Reference(
        ok=r.get("status") == "ok",
        windows=tuple(text(w) for w in r.get("windows") or []),
        n_cases=_int(r.get("n_cases")),
        est_auc_mean=finite(r.get("est_auc_mean")),
        est_auc_sd=finite(r.get("est_auc_sd")),
        actual_auc=finite(r.get("actual_auc")),
        actual_auc_se=finite(r.get("actual_auc_se")),
        actual_windows=_count(r.get("actual_windows")),
    )


def _check_row(r: Mapping[str, Any]) -> CheckRow:
    covered = r.get("covered")
    return CheckRow(
        window=text(r.get("window")),
        estimate=estimate(r),
        actual=finite(r.get("actual")),
        error=finite(r.get("error")),
        covered=covered if isinstance(covered, bool) else None,
        n_labelled=_int(r.get("n_labelled")),
    )


def _chart(c: Mapping[str, Any], ids: Ids) -> Chart:
    statistic = text(c.get("statistic"))
    name = STATISTIC_NAMES.get(statistic, statistic)
    kind = text(c.get("kind"))
    windows = [text(w) for w in c.get("windows") or []]
    cusum = [finite(v) for v in c.get("cusum") or []]
    limit = finite(c.get("limit"))
    alarms = tuple(text(w) for w in c.get("alarms") or [])
    ran = bool(windows) and len(cusum) == len(windows) and limit is not None
    ran = ran and any(v is not None for v in cusum)
    svg = None
    if ran:
        assert limit is not None
        colour = FLAG_COLOUR if kind == PERFORMANCE else NOTICE_COLOUR
        svg = cusum_svg(
            ids, windows, cusum, limit, title=f"CUSUM of {name}", alarms=alarms, colour=colour
        )
    return Chart(name, kind, text(c.get("side")), svg, text(c.get("note")), alarms)


def _site(
    s: Mapping[str, Any], anchor: str, events: list[Mapping[str, Any]], h: Header, ids: Ids
) -> Site:
    name = text(s.get("site"))
    mine = [e for e in events if text(e.get("site")) == name]
    alarms = {text(e.get("window")) for e in mine if e.get("kind") == PERFORMANCE}
    notices = {text(e.get("window")) for e in mine if e.get("kind") == DRIFT}
    windows = records(s.get("windows"))
    reference = _reference(s.get("reference"))
    timeline = None
    if windows:
        timeline = timeline_svg(
            ids,
            [text(w.get("window")) for w in windows],
            title=f"{name}: estimated and actual AUC by window",
            estimate=[_point(w.get("est_auc")) for w in windows],
            actual=[_point(get(w, "actual", "auc")) for w in windows],
            reference=reference.est_auc_mean,
            shaded={text(w.get("window")) for w in windows if w.get("reference") is True},
            insufficient={text(w.get("window")) for w in windows if w.get("insufficient") is True},
            alarms=alarms,
            notices=notices,
            names=("estimated AUC", "actual AUC"),
            level_pct=h.level_pct,
        )
    check = mapping(s.get("estimate_check"))
    status = "alarm" if alarms else "notice" if notices else "ok"
    return Site(
        name=name,
        anchor=anchor,
        status=status,
        reference=reference,
        timeline=timeline,
        charts=tuple(_chart(c, ids) for c in records(s.get("charts"))),
        changes=tuple(
            Change(
                text(c.get("window")),
                text(c.get("previous")),
                text(c.get("field")),
                text(c.get("before"), "n/a"),
                text(c.get("after"), "n/a"),
            )
            for c in records(s.get("acquisition_changes"))
        ),
        check=Check(
            windows=_int(check.get("windows")) or len(records(check.get("rows"))),
            mae=finite(check.get("mae")),
            coverage=finite(check.get("coverage")),
            rows=tuple(_check_row(r) for r in records(check.get("rows"))),
        ),
        rows=tuple(_row(w, alarms, notices) for w in windows),
    )


def read_monitor(doc: Mapping[str, Any]) -> MonitorPage:
    """The view model of ``doc`` (a ``monitor.json`` document)."""
    ids = Ids()
    header = _header(doc)
    sites = records(doc.get("sites"))
    anchors: dict[str, str] = {}
    for i, s in enumerate(sites, start=1):
        anchors.setdefault(text(s.get("site")), f"site-{i}")
    events = records(doc.get("alarms"))
    windows = [text(w) for w in get(doc, "settings", "windows") or []]
    return MonitorPage(
        header=header,
        alarms=grouped(
            (_event(e, anchors) for e in events if e.get("kind") == PERFORMANCE), windows
        ),
        notices=grouped((_event(e, anchors) for e in events if e.get("kind") == DRIFT), windows),
        insufficient_windows=_int(get(doc, "summary", "insufficient_windows")) or 0,
        sites=tuple(
            _site(s, f"site-{i}", events, header, ids) for i, s in enumerate(sites, start=1)
        ),
        version=text(doc.get("monitor_version")),
    )


def grouped(events: Iterable[Event], windows: Sequence[str]) -> tuple[Event, ...]:
    """One row per lasting change: a chart restarts after each alarm, so a change that lasts
    signals again in the next windows, each alarm's ``since`` the window after the one
    before. Such a run of one site's statistic becomes one row naming its first window, its
    last and how many, with the last one's value and z and the first one's message."""
    order = {w: i for i, w in enumerate(windows)}
    rows: list[list[Event]] = []
    last: dict[tuple[str, str], list[Event]] = {}
    for e in sorted(events, key=lambda e: (e.site, e.statistic, order.get(e.window, -1))):
        run = last.get((e.site, e.statistic))
        follows = (
            run is not None
            and e.since in order
            and run[-1].window in order
            and order[e.since] <= order[run[-1].window] + 1
        )
        if run is not None and follows:
            run.append(e)
        else:
            last[(e.site, e.statistic)] = [e]
            rows.append(last[(e.site, e.statistic)])
    out = []
    for run in rows:
        first, end = run[0], run[-1]
        if len(run) > 1:
            span = f"{first.window} to {end.window} ({len(run)} windows)"
            first = replace(first, window=span, value=end.value, z=end.z)
        out.append(first)
    return tuple(sorted(out, key=lambda e: (e.window, e.site, e.statistic)))
