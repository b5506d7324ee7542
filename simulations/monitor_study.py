"""The monitoring study: one trained model watched over simulated histories of a timeline
scenario, scored against the events the phantom knows (docs/results/monitor-liver-timeline.md).

A history is the timeline scenario generated with another phantom seed: the same hospitals,
events and months, other patients, images and label delays. The model (``--run``, trained by
``hepafed simulate --scenario liver-timeline`` on the first months of the scenario's own
seed) is monitored over every history by the real ``monitor`` design in simulation
(``simulations.monitor_cli.monitor_simulated``), each into its own monitoring folder.

Each site's alarms are scored by what its events are (``simulations.timeline_scenario``):

- no event (stable): any alarm or notice over all windows is a false one;
- a performance step (one month): the first performance alarm at or after the event's window,
  counted as detected within 2 windows when it falls in the event's window or one of the
  next two;
- a performance drift (from a month to ``until``): the first performance alarm at or after
  the drift's start, its delay in windows;
- an image-only event: a drift notice at or after the event and no performance alarm at all.

And the label-free estimate against the actual AUC of the labels that arrived, per window:
without shift (every window of a site without events, and every site's windows before its
first event) and under shift (the windows from the event on).

The study is resumable: a history whose ``monitor.json`` exists is not run again; the
phantoms of finished histories are removed unless ``--keep-phantoms``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulations.monitor_cli import monitor_simulated
from simulations.timeline import generate_timeline_phantom, load_timeline_scenario
from simulations.timeline_scenario import TimelineScenario, TimelineSite

STABLE, STEP, DRIFT, IMAGES = "stable", "step", "drift", "images"
DETECT_WITHIN = 2  # windows after the event's own


def site_kind(site: TimelineSite) -> str:
    """What the site's first event is (the study's scenario has at most one per site)."""
    if not site.events:
        return STABLE
    event = site.events[0]
    if event.effect != "performance":
        return IMAGES
    return DRIFT if event.until else STEP


def window_of(spec: TimelineScenario, month: int) -> str:
    return f"{spec.month_start(month):%Y-%m}"


def score_site(doc: dict[str, Any], spec: TimelineScenario, site: TimelineSite) -> dict[str, Any]:
    """One site of one history against its events (module docstring)."""
    windows = list(doc["settings"]["windows"])
    name = site.profile.name
    alarms = [a for a in doc["alarms"] if a["site"] == name]
    perf = [windows.index(a["window"]) for a in alarms if a["kind"] == "performance"]
    drift = [windows.index(a["window"]) for a in alarms if a["kind"] == "drift"]
    kind = site_kind(site)
    out: dict[str, Any] = {"site": name, "kind": kind, "performance": perf, "drift": drift}
    rows = next(s for s in doc["sites"] if s["site"] == name)["estimate_check"]["rows"]
    event = windows.index(window_of(spec, site.events[0].month)) if site.events else len(windows)
    out["event_index"] = event if site.events else None
    out["calm_rows"] = [r for r in rows if windows.index(r["window"]) < event]
    out["shift_rows"] = [r for r in rows if windows.index(r["window"]) >= event]
    after_perf = [i for i in perf if i >= event]
    after_drift = [i for i in drift if i >= event]
    if kind == STABLE:
        out["ok"] = not perf and not drift
    elif kind == STEP:
        out["delay"] = after_perf[0] - event if after_perf else None
        out["ok"] = out["delay"] is not None and out["delay"] <= DETECT_WITHIN
        out["false_before"] = len([i for i in perf if i < event])
    elif kind == DRIFT:
        out["delay"] = after_perf[0] - event if after_perf else None
        out["notice_delay"] = after_drift[0] - event if after_drift else None
        out["ok"] = out["delay"] is not None
    else:
        out["ok"] = bool(after_drift) and not perf
        out["notice_delay"] = after_drift[0] - event if after_drift else None
    out["actual_change"] = _actual_change(doc, name, windows, event)
    return out


def _actual_change(doc: dict[str, Any], site: str, windows: list[str], event: int) -> float | None:
    """Mean actual AUC over the windows from the event on minus before it (labels that
    arrived), or None when either side has none."""
    rows = next(s for s in doc["sites"] if s["site"] == site)["windows"]
    before: list[float] = []
    after: list[float] = []
    for r in rows:
        auc = (r.get("actual") or {}).get("auc")
        if auc is None or auc.get("estimate") is None:
            continue
        (before if windows.index(r["window"]) < event else after).append(auc["estimate"])
    if not before or not after or event >= len(windows):
        return None
    return statistics.fmean(after) - statistics.fmean(before)


def run_histories(
    run: Path,
    scenario: str,
    seeds: Sequence[int],
    data_dir: Path,
    out_root: Path,
    windows: str,
    as_of: str,
    keep_phantoms: bool = False,
) -> dict[int, float]:
    """Monitor the model over each history not yet done; seconds per history run now."""
    spec = load_timeline_scenario(scenario)
    took: dict[int, float] = {}
    for seed in seeds:
        folder = out_root / f"seed-{seed}"
        if (folder / "monitor" / "monitor.json").is_file():
            continue
        start = time.monotonic()
        phantom = data_dir / "phantom" / f"{spec.name}-seed{seed}"
        generate_timeline_phantom(spec, phantom, seed=seed)
        cache = data_dir / "cache" / phantom.name
        settings = {
            "eval.design": "monitor",
            "monitor.model-run": str(run.resolve()),
            "monitor.windows": windows,
            "monitor.folder": str((folder / "monitor").resolve()),
            "monitor.as-of": as_of,
        }
        if (folder / "monitor").exists():  # an interrupted history: start it again
            shutil.rmtree(folder / "monitor")
        invocation = (folder / f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}").resolve()
        monitor_simulated(settings, str(phantom.resolve()), str(cache.resolve()), invocation)
        took[seed] = time.monotonic() - start
        (folder / "seconds.json").write_text(json.dumps({"seconds": took[seed]}))
        if not keep_phantoms and seed != spec.seed:
            shutil.rmtree(phantom, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
    return took


def score_study(scenario: str, out_root: Path) -> dict[str, Any]:
    """Every finished history scored (module docstring)."""
    spec = load_timeline_scenario(scenario)
    histories = []
    for path in sorted(out_root.glob("seed-*/monitor/monitor.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        seconds_file = path.parent.parent / "seconds.json"
        seconds = (
            json.loads(seconds_file.read_text())["seconds"] if seconds_file.is_file() else None
        )
        histories.append(
            {
                "seed": int(path.parent.parent.name.removeprefix("seed-")),
                "seconds": seconds,
                "sites": [score_site(doc, spec, s) for s in spec.sites],
                "settings": doc["settings"],
            }
        )
    return {"scenario": spec.name, "histories": histories}


def _rate(values: list[bool]) -> str:
    return f"{sum(values)} of {len(values)}" if values else "no history"


def _mae(rows: list[dict[str, Any]]) -> tuple[str, str, int]:
    if not rows:
        return "—", "—", 0
    mae = statistics.fmean(abs(r["error"]) for r in rows)
    covered = statistics.fmean(1.0 if r["covered"] else 0.0 for r in rows)
    return f"{mae:.3f}", f"{covered:.0%}", len(rows)


def study_markdown(scored: dict[str, Any], command: str) -> str:
    """The results page's tables from ``score_study``."""
    histories = scored["histories"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for h in histories:
        for s in h["sites"]:
            by_kind.setdefault(s["kind"], []).append(s)
    lines = [
        f"Histories: {len(histories)} (phantom seeds "
        f"{', '.join(str(h['seed']) for h in histories)}).",
        "",
    ]
    if histories:
        st = histories[0]["settings"]
        lines += [
            f"Windows {st['windows'][0]}..{st['windows'][-1]} ({len(st['windows'])} months), "
            f"labels known as of {st['as_of']}; reference period {st['reference_windows']} "
            f"windows per site; false-alarm rate {st['false_alarm_rate']} per site and "
            f"window over {st['charts_per_site']} charts (ARL0 {st['arl0']:.0f} windows per "
            f"chart, CUSUM k {st['cusum_k']}, h {st['cusum_h']:.2f}).",
            "",
        ]
    lines += ["| site kind | target | result |", "|---|---|---|"]
    step = by_kind.get(STEP, [])
    delays = [s["delay"] for s in step if s["delay"] is not None]
    lines.append(
        f"| performance step | alarmed within {DETECT_WITHIN} windows of the event in "
        f">= 18 of 20 | {_rate([s['ok'] for s in step])} (delays "
        f"{', '.join(str(d) for d in delays) or 'none'}; missed "
        f"{sum(1 for s in step if s['delay'] is None)}) |"
    )
    stable = by_kind.get(STABLE, [])
    lines.append(
        f"| stable | no alarm over all windows in >= 19 of 20 | "
        f"{_rate([s['ok'] for s in stable])} |"
    )
    drift = by_kind.get(DRIFT, [])
    d_delays = [s["delay"] for s in drift if s["delay"] is not None]
    lines.append(
        f"| gradual drift | alarmed, delay reported | {_rate([s['ok'] for s in drift])} "
        f"(delays in windows after the drift's start: "
        f"{', '.join(str(d) for d in d_delays) or 'none'}) |"
    )
    images = by_kind.get(IMAGES, [])
    lines.append(
        f"| image-only change | drift notice and no performance alarm in >= 18 of 20 | "
        f"{_rate([s['ok'] for s in images])} (performance alarms in "
        f"{sum(1 for s in images if s['performance'])}; no notice in "
        f"{sum(1 for s in images if s.get('notice_delay') is None)}) |"
    )
    calm = [r for h in histories for s in h["sites"] for r in s["calm_rows"]]
    shifted = [r for h in histories for s in h["sites"] for r in s["shift_rows"]]
    mae, cover, n = _mae(calm)
    lines.append(
        f"| label-free AUC, no shift | MAE <= 0.03, interval covers >= 90 % | MAE {mae}, "
        f"covers {cover} ({n} windows) |"
    )
    mae, cover, n = _mae(shifted)
    lines.append(
        f"| label-free AUC, under shift | measured | MAE {mae}, covers {cover} ({n} windows) |"
    )
    changes = {
        kind: [s["actual_change"] for s in by_kind.get(kind, []) if s["actual_change"] is not None]
        for kind in (STEP, DRIFT, IMAGES)
    }
    lines += [
        "",
        "Actual AUC change at the event (mean over the windows after it minus before, "
        "labels that arrived; mean over histories):",
        "",
    ]
    for kind, values in changes.items():
        if values:
            lines.append(f"- {kind}: {statistics.fmean(values):+.3f} (n = {len(values)})")
    seconds = [h["seconds"] for h in histories if h["seconds"]]
    if seconds:
        lines += [
            "",
            f"Wall time per history (phantom and monitoring): "
            f"{statistics.fmean(seconds) / 60:.1f} min (mean of {len(seconds)}).",
        ]
    lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.monitor_study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, help="the trained run's folder")
    parser.add_argument("--scenario", default="liver-timeline")
    parser.add_argument("--histories", type=int, default=20)
    parser.add_argument("--windows", default="2024-07..2025-12")
    parser.add_argument("--as-of", default="2025-12-31")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="runs/monitor-study")
    parser.add_argument("--report", help="write the scored tables (markdown) to this file")
    parser.add_argument("--keep-phantoms", action="store_true")
    parser.add_argument("--score-only", action="store_true", help="only score what is done")
    args = parser.parse_args(argv)
    spec = load_timeline_scenario(args.scenario)
    seeds = [spec.seed + i for i in range(args.histories)]
    out_root = Path(args.out)
    if not args.score_only:
        run_histories(
            Path(args.run),
            args.scenario,
            seeds,
            Path(args.data_dir),
            out_root,
            args.windows,
            args.as_of,
            args.keep_phantoms,
        )
    scored = score_study(args.scenario, out_root)
    (out_root / "scores.json").write_text(json.dumps(scored, indent=1))
    command = (
        f"python -m simulations.monitor_study --run {args.run} --histories "
        f"{args.histories} --out {args.out}"
    )
    text = study_markdown(scored, command)
    if args.report:
        Path(args.report).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
