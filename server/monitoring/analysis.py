"""A deployed model's monitoring, site by site and window by window: ``analyse`` turns the
stored window summaries into the ``monitor.json`` document (``server.monitoring.model``).

For each site, over its windows in time order (only those asked for; a window of too few
cases is listed without numbers and skipped by every chart):

- **reference period**: the site's first R sufficient windows (``reference_windows``); with
  fewer than 2, no chart runs;
- **charts**: four one-sided CUSUMs (``common.stats.change_detection``, restarted after each
  alarm) on standardised values z over the windows after the reference period. Two watch
  performance (lower side): the label-free estimated AUC and the actual AUC once labels
  arrive. Two watch the inputs (upper side): the embedding mean (Hotelling T²) and the
  intensity histograms (Jensen-Shannon divergence); their signal is a *drift notice*, since
  inputs can move without costing performance. Each chart is tuned to ARL0 = 4 / alpha
  (Bonferroni over the four), so a site in control raises about alpha false alarms per
  window, all charts together. A window without a statistic's inputs is skipped by that
  chart alone (the actual AUC's chart runs over a gappy series: labels arrive late);
- the acquisition changes between consecutive sufficient windows, and the label-free
  estimate checked against the actual AUC wherever both exist.

**Self-starting charts.** The estimated AUC's and the intensity divergence's in-control
level and spread come from a handful of windows. A new value x standardised with the
predictive t over the n windows of its reference, ``z = Phi^-1(F_t,n-1((x - mean) /
(sd sqrt(1 + 1/n))))``, is exactly N(0, 1) under normality although mean and sd are
estimated from few windows. A *fixed* reference would still share its estimation error with
every later window (the z's correlate through it): with R = 6 the false-alarm rate would be
several times the planned one (eight times at alpha = 0.002, by simulation). So the
reference grows: each window is standardised against the reference period and the earlier
charted windows (Hawkins 1987's self-starting chart), which keeps the z's close to
independent N(0, 1) in control. Two guards keep a change from diluting the reference it is
judged against (with every window joining, a step that multiplied a divergence by 60 was
absorbed after one window and never alarmed): a window beyond 2.5 on the alarm's side does
not join (0.6 % of in-control windows), and at a chart's first alarm the reference goes back
to where the change began and stays there, so a lasting change keeps signalling (the price:
after a *false* alarm that chart's later false alarms come more often; at the default alpha
a chart's first false alarm comes after some 2000 windows on average). The actual AUC's
reference is the reference period's inverse-variance mean AUC, fixed: each window's AUC
variance is known (DeLong), the reference's own variance adds to it, and the correlation
it leaves between windows is small (1 / (R + 1) at equal variances). The intensity
divergences, right-skewed, are charted as logs. The embedding's reference is the pooled
cases of the reference period: its T², like the actual AUC's z, takes a window's spread
from its cases, so a site whose windows differ by more than case sampling raises more of
those than planned.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy import stats

from common.stats.change_detection import Reference, Side, cusum, cusum_limit
from common.window_summary import LABEL_KEYS  # the keys a window's actual figures hold
from server.monitoring.charts import (
    JS_FLOOR,
    ChartInput,
    Point,
    auc_point,
    clip_z,
    est_point,
    hotelling_t2,
    intensity_point,
    js_divergence,
    pooled_moments,
    predictive_z,
    self_starting,
    since_index,
    weighted_auc,
)
from server.monitoring.comparisons import acquisition_changes, estimate_check
from server.monitoring.model import MONITOR_VERSION, validate
from server.monitoring.store import WINDOW, WindowState
from server.monitoring.windows import SiteWindow, read_window, reference_block, window_row

# statistic -> (kind, side), in the order the charts are listed
CHARTS: dict[str, tuple[str, Side]] = {
    "est-auc": ("performance", "lower"),
    "actual-auc": ("performance", "lower"),
    "embedding": ("drift", "upper"),
    "intensity": ("drift", "upper"),
}


@dataclass(frozen=True)
class MonitorSettings:
    """What ``analyse`` charts and how (module docstring)."""

    windows: tuple[str, ...]  # the windows asked for, time order (the whole history)
    as_of: str  # "YYYY-MM-DD": labels known by this date (recorded; the sites applied it)
    reference_windows: int = 6  # R: each site's first R sufficient windows
    false_alarm_rate: float = 0.002  # alpha, per site and window, all its charts together
    cusum_k: float = 0.5
    level: float = 0.95  # of every interval
    min_cases: int = 20  # a window of fewer cases is insufficient, whatever the site said

    def __post_init__(self) -> None:
        bad = [w for w in self.windows if not WINDOW.match(w)]
        if not self.windows or bad:
            raise ValueError(f"windows must be YYYY-MM, YYYY-MM-DD or FROM/TO, got {bad or '()'}")
        if list(self.windows) != sorted(set(self.windows)):
            raise ValueError("windows must be distinct and in time order")
        if not (len(self.as_of) == 10 and WINDOW.match(self.as_of)):
            raise ValueError(f"as_of must be a date YYYY-MM-DD, got {self.as_of!r}")
        if self.reference_windows < 2:
            raise ValueError(f"reference_windows must be at least 2, got {self.reference_windows}")
        if not 0 < self.false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if self.cusum_k <= 0 or not 0.5 <= self.level < 1 or self.min_cases < 1:
            raise ValueError("cusum_k must be > 0, level in [0.5, 1) and min_cases >= 1")

    @property
    def arl0(self) -> float:
        """Each chart's in-control ARL: ``len(CHARTS) / alpha`` (Bonferroni)."""
        return len(CHARTS) / self.false_alarm_rate

    @cached_property
    def cusum_h(self) -> float:
        """The decision interval of a one-sided chart with ARL0 ``arl0`` (either side: the
        same by symmetry); computed once per settings (a Markov-chain root search)."""
        return cusum_limit(self.arl0, self.cusum_k, "upper")


# ---- the four charts' inputs --------------------------------------------------------------


def _est_auc_input(ref: list[SiteWindow], later: list[SiteWindow]) -> ChartInput:
    initial = [w.est_auc for w in ref if w.est_auc is not None]
    charted = [(w.name, w.est_auc) for w in later if w.est_auc is not None]
    why = ""
    if len(initial) < 2:
        why = "not run: fewer than 2 reference windows have an estimated AUC"
    elif np.std(initial) == 0:
        why = "not run: the reference windows' estimated AUC does not vary (sd 0), no scale"
    return ChartInput("est-auc", initial, charted, est_point, why)


def _actual_auc_input(ref: list[SiteWindow], later: list[SiteWindow]) -> ChartInput:
    initial = [w.auc for w in ref if w.auc is not None]
    charted = [(w.name, w.auc) for w in later if w.auc is not None]
    why = "" if len(initial) >= 2 else "not run: fewer than 2 reference windows have an actual AUC"
    # each AUC's variance is known (DeLong), so the reference period alone sets the level:
    # a fixed reference lets no early loss (a window within 2.5 sd) lower it
    how = "CUSUM against the reference period's inverse-variance mean AUC"
    return ChartInput("actual-auc", initial, charted, auc_point, why, how, fixed=True)


def _embedding_input(
    ref: list[SiteWindow], later: list[SiteWindow], drift: dict[str, dict[str, float]]
) -> ChartInput:
    """Hotelling T² against the reference period's pooled cases; fills ``drift`` with every
    window's Mahalanobis distance."""
    parts = [(w.n, *w.emb) for w in ref if w.emb is not None and w.n > 1]
    dims = {m.size for _, m, _ in parts}
    why = ""
    if len(parts) < 2:
        why = "fewer than 2 reference windows have embedding moments"
    elif len(dims) > 1:
        why = "the reference windows' embeddings differ in dimension"
    else:
        m0, s0, n0 = pooled_moments(parts)
        why = "" if np.trace(s0) > 0 else "the reference windows' embeddings do not vary"
    if why:
        return ChartInput("embedding", [], [], est_point, f"not run: {why}")
    d = dims.pop()
    t2 = {}
    for w in [*ref, *later]:
        if w.emb is not None and w.emb[0].size == d:
            t2[w.name], drift[w.name]["embedding"] = hotelling_t2(w.emb[0], w.n, m0, s0, n0)

    def point(_: list[Any], window: str) -> Point:
        z = -stats.norm.ppf(stats.chi2.sf(t2[window], d))  # chi2_d in control
        return Point(drift[window]["embedding"], clip_z(z), 0.0, len(parts))

    charted = [(w.name, w.name) for w in later if w.name in t2]
    how = "CUSUM against the reference period's pooled cases"
    return ChartInput("embedding", [], charted, point, how=how)


def _intensity_input(
    ref: list[SiteWindow], later: list[SiteWindow], drift: dict[str, dict[str, float]]
) -> ChartInput:
    """JS divergence to the reference's pooled histogram; fills ``drift`` with the reference
    windows' leave-one-out divergences."""
    with_hist = [w for w in ref if w.hist is not None]
    shapes = {w.hist.shape for w in with_hist if w.hist is not None}
    if len(with_hist) < 2 or len(shapes) != 1:
        why = "fewer than 2 reference windows have intensity histograms"
        if len(with_hist) >= 2:
            why = "the reference windows' histograms differ in shape"
        return ChartInput("intensity", [], [], intensity_point, f"not run: {why}")
    initial = [w.hist for w in with_hist if w.hist is not None]
    hists = np.stack(initial)
    loo = js_divergence(hists, hists.sum(axis=0) - hists)
    for w, value in zip(with_hist, loo, strict=True):
        drift[w.name]["intensity"] = float(value)
    if np.ptp(np.log(np.maximum(loo, JS_FLOOR))) == 0:
        why = "not run: the reference windows' divergences do not vary (sd 0), no scale"
        return ChartInput("intensity", [], [], intensity_point, why)
    charted = [(w.name, w.hist) for w in later if w.hist is not None and w.hist.shape in shapes]
    return ChartInput("intensity", initial, charted, intensity_point)


# ---- one site -------------------------------------------------------------------------------


LABELS = {
    "est-auc": "estimated AUC",
    "actual-auc": "actual AUC",
    "embedding": "embedding shift (Mahalanobis distance)",
    "intensity": "intensity JS divergence",
}


def _run(inp: ChartInput, site: str, k: float, h: float, after: int) -> tuple[dict, list[dict]]:
    """The chart's block and its alarms."""
    kind, side = CHARTS[inp.statistic]
    block: dict[str, Any] = {"statistic": inp.statistic, "kind": kind, "side": side}
    if inp.not_run:
        empty: dict[str, Any] = {key: [] for key in ("windows", "value", "z", "cusum")}
        return {**block, **empty, "reference": [], "reference_n": [], "limit": h, "alarms": [],
                "note": inp.not_run}, []  # fmt: skip
    windows = [w for w, _ in inp.charted]
    values = [x for _, x in inp.charted]
    if inp.fixed:
        points = [inp.point(list(inp.initial), x) for x in values]
        result = cusum([p.z for p in points], Reference(0.0, 1.0, len(inp.initial)), k, h, side)
    else:
        points, result = self_starting(values, inp.initial, inp.point, k, h, side)
    note = f"{inp.how} over {len(windows)} windows after the reference period"
    if len(windows) < after:
        note += f" ({after - len(windows)} of {after} lack the statistic: a gappy series)"
    sums = [abs(v) for v in result.statistic]
    block |= {
        "windows": windows,
        "value": [p.value for p in points],
        "z": [p.z for p in points],
        "cusum": sums,
        "reference": [p.level for p in points],
        "reference_n": [p.n_ref for p in points],
        "limit": h,
        "alarms": [windows[i] for i in result.alarms],
        "note": note,
    }
    alarms = []
    for i in result.alarms:
        p, window, since = points[i], windows[i], windows[since_index(result, i)]
        what = "performance alarm" if kind == "performance" else "drift notice"
        fmt = ".3f" if kind == "performance" else ".4g"
        message = (
            f"{site} {window}: {LABELS[inp.statistic]} {p.value:{fmt}} against "
            f"{p.level:{fmt}} over {p.n_ref} reference windows (z {p.z:.1f}): {what} "
            f"(CUSUM {sums[i]:.2f} > {h:.2f}, since {since})"
        )
        alarms.append({"site": site, "window": window, "kind": kind, "statistic": inp.statistic,
                       "value": p.value, "reference": p.level, "reference_n": p.n_ref,
                       "z": p.z, "cusum": sums[i], "limit": h, "since": since,
                       "message": message})  # fmt: skip
    return block, alarms


def _site(name: str, ws: list[SiteWindow], cfg: MonitorSettings, h: float) -> tuple[dict, list]:
    """One site's block and its alarms."""
    sufficient = [w for w in ws if not w.insufficient]
    ref, later = sufficient[: cfg.reference_windows], sufficient[cfg.reference_windows :]
    drift: dict[str, dict[str, float]] = {w.name: {} for w in ws}
    charts, alarms = [], []
    if len(ref) >= 2:
        builders = (
            ("est-auc", lambda: _est_auc_input(ref, later)),
            ("actual-auc", lambda: _actual_auc_input(ref, later)),
            ("embedding", lambda: _embedding_input(ref, later, drift)),
            ("intensity", lambda: _intensity_input(ref, later, drift)),
        )
        for statistic, build in builders:
            # a site's values that break a chart's arithmetic (the checks bound them; this
            # is the last guard) stop that chart, said so, never the whole analysis
            try:
                inp = build()
                block, found = _run(inp, name, cfg.cusum_k, h, len(later))
            except (ArithmeticError, ValueError, np.linalg.LinAlgError) as e:
                for values in drift.values():  # nothing of a broken chart is shown
                    values.pop(statistic, None)
                inp = ChartInput(statistic, [], [], est_point, f"not run: {e}")
                block, found = _run(inp, name, cfg.cusum_k, h, len(later))
            charts.append(block)
            alarms += found
            if inp.statistic == "intensity":  # the later windows' divergence, as charted
                for window, value in zip(block["windows"], block["value"], strict=True):
                    drift[window]["intensity"] = value
    in_ref = {w.name for w in ref}
    rows = [window_row(w, w.name in in_ref, drift[w.name], cfg.level) for w in ws]
    site = {
        "site": name,
        "reference": reference_block(ref),
        "windows": rows,
        "charts": charts,
        "acquisition_changes": acquisition_changes(
            [(w.name, w.state.summary.get("acquisition")) for w in sufficient]
        ),
        "estimate_check": estimate_check(rows),
    }
    return site, alarms


# ---- the document -----------------------------------------------------------------------------


def analyse(
    states: Mapping[tuple[str, str], WindowState],
    settings: MonitorSettings,
    model: Mapping[str, Any],
    created: str,
) -> dict[str, Any]:
    """The ``monitor.json`` document of the stored windows ``(site, window) -> state`` over
    ``settings.windows`` (module docstring), checked against its schema."""
    h = settings.cusum_h
    asked = set(settings.windows)
    sites, alarms = [], []
    for name in sorted({site for site, window in states if window in asked}):
        ws = [read_window(states[name, w], settings.min_cases) for w in settings.windows
              if (name, w) in states]  # fmt: skip
        site, found = _site(name, ws, settings, h)
        sites.append(site)
        alarms += found
    alarms.sort(key=lambda a: (a["window"], a["site"], a["kind"], a["statistic"]))

    def with_kind(kind: str) -> list[dict[str, Any]]:
        return [a for a in alarms if a["kind"] == kind]

    doc = {
        "monitor_version": MONITOR_VERSION,
        "created": created,
        "model": dict(model),
        "settings": {
            "windows": list(settings.windows),
            "as_of": settings.as_of,
            "reference_windows": settings.reference_windows,
            "false_alarm_rate": settings.false_alarm_rate,
            "charts_per_site": len(CHARTS),
            "arl0": settings.arl0,
            "cusum_k": settings.cusum_k,
            "cusum_h": h,
            "level": settings.level,
            "min_cases": settings.min_cases,
        },
        "sites": sites,
        "alarms": alarms,
        "summary": {
            "sites": len(sites),
            "windows": sum(len(s["windows"]) for s in sites),
            "performance_alarms": len(with_kind("performance")),
            "drift_notices": len(with_kind("drift")),
            "insufficient_windows": sum(r["insufficient"] for s in sites for r in s["windows"]),
            "sites_with_performance_alarm": sorted({a["site"] for a in with_kind("performance")}),
            "sites_with_drift_notice": sorted({a["site"] for a in with_kind("drift")}),
        },
    }
    validate(doc)
    return doc


def exit_status(doc: Mapping[str, Any], windows: Collection[str]) -> str:
    """The CLI's exit status: "performance" if a performance alarm falls in ``windows``,
    else "drift" if a drift notice does, else "none"."""
    kinds = {a["kind"] for a in doc["alarms"] if a["window"] in windows}
    return "performance" if "performance" in kinds else "drift" if "drift" in kinds else "none"


__all__ = [
    "CHARTS",
    "LABEL_KEYS",
    "MonitorSettings",
    "acquisition_changes",
    "analyse",
    "estimate_check",
    "exit_status",
    "hotelling_t2",
    "js_divergence",
    "pooled_moments",
    "predictive_z",
    "self_starting",
    "since_index",
    "weighted_auc",
]
