"""Timeline scenario files: CT hospitals that acquire a batch of cases every month for
``months`` months, with scanner and protocol events (docs/phantom.md, "Time: the
liver-timeline scenario").

A timeline scenario is a CT scenario file (``scenario.py``) plus a ``[timeline]`` table
(``start = "YYYY-MM"``, ``months``, ``training_months``, ``label_share``, the label delay),
a ``cases_per_month`` per site instead of ``n_cases``, and ``[[site.event]]`` tables: a
step (``month``, ``set = {...}``) or a linear drift (``month``, ``until``, ``to = {...}``),
each with the ``effect`` it is expected to have. A site's ``n_cases`` becomes its training
months' cases, so the CT check judges their train/val/test split. Every problem names the
file and the dotted key (``site[1].event[0].set.kvp``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from simulations.scenario import ScenarioError, parse_scenario
from simulations.scenario_schema import MISSING, SITE_RULES, Checker, Rule
from simulations.site_profile import SiteProfile

UNLABELLED_GAP_MONTHS = 6  # a label that never arrives is dated this long after the end
EFFECTS = ("performance", "images")  # what an event is expected to do to a deployed model
# what an event may change: the scanner and the protocol, nothing that moves the matrix
# (fov_mm, pixel_spacing_mm, z_extent_mm) or the case mix (the patients)
# fmt: off
EVENT_KEYS = (
    "vendor", "scanner_model", "kvp", "kernel", "hu_scale", "hu_offset", "noise_sigma_hu",
    "dose_factor", "slice_thickness_mm", "bias_field", "arterial_delay_s", "portal_delay_s",
    "delayed_delay_s", "bolus_jitter_s", "motion_mm",
)
# fmt: on
TIMELINE_RULES: dict[str, Rule] = {
    "start": ("str", None, None),
    "months": ("int", 2, 240),
    "training_months": ("int", 1, 239),
    "label_share": ("float", 0.0, 1.0),
    "label_delay_min_days": ("int", 0, 365),
    "label_delay_max_days": ("int", 0, 365),
}
TIMELINE_DEFAULTS = {"label_share": 0.7, "label_delay_min_days": 30, "label_delay_max_days": 120}
CASES_PER_MONTH: Rule = ("int", 1, 5000)
CASES_PER_MONTH_DEFAULT = 60
EVENT_RULES: dict[str, Rule] = {
    "month": ("int", 1, 240),
    "until": ("int", 1, 240),
    "effect": (EFFECTS, None, None),
    "note": ("str", None, None),
    "set": ("table", None, None),
    "to": ("table", None, None),
}
_START = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class Event:
    """A change of a site's parameters: a step from ``month`` on (``until`` None), or a
    linear drift whose first changed month is ``month`` and which reaches ``changes`` at
    ``until`` (and stays there)."""

    month: int
    effect: str
    changes: tuple[tuple[str, Any], ...]
    until: int | None = None
    note: str = ""

    @property
    def kind(self) -> str:
        return "step" if self.until is None else "drift"

    def to_dict(self) -> dict[str, Any]:
        """The event as a scenario file's ``[[site.event]]`` table."""
        table: dict[str, Any] = {"month": self.month, "effect": self.effect, "note": self.note}
        if self.until is None:
            table["set"] = dict(self.changes)
        else:
            table.update(until=self.until, to=dict(self.changes))
        return table


@dataclass(frozen=True)
class TimelineSite:
    """One hospital: its month-1 parameters, its monthly case count and its events, in file
    order. (The profile's ``n_cases`` is not used: the training months hold
    ``cases_per_month`` x ``training_months`` cases.)"""

    profile: SiteProfile
    cases_per_month: int
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class TimelineScenario:
    """CT hospitals acquiring monthly batches from ``start`` (``YYYY-MM``) for ``months``."""

    name: str
    seed: int
    start: str
    months: int
    training_months: int
    sites: tuple[TimelineSite, ...]
    label_share: float = TIMELINE_DEFAULTS["label_share"]
    label_delay_days: tuple[int, int] = (30, 120)
    dims: int = 2
    description: str = ""
    source: str = field(default="", compare=False)

    def month_start(self, month: int) -> date:
        """The first day of month ``month`` (1-based) of the timeline."""
        return month_start(self.start, month)

    @property
    def unlabelled_date(self) -> date:
        """The label date of a case whose label never arrives: the last day of the month
        ``UNLABELLED_GAP_MONTHS`` after the timeline's last month."""
        return self.month_start(self.months + UNLABELLED_GAP_MONTHS + 1) - timedelta(days=1)

    def to_dict(self) -> dict[str, Any]:
        """The scenario as a file's document (``parse_timeline_scenario`` reads it back)."""
        sites = []
        for s in self.sites:
            table = {k: v for k, v in dataclasses.asdict(s.profile).items() if k != "n_cases"}
            table["cases_per_month"] = s.cases_per_month
            table["event"] = [e.to_dict() for e in s.events]
            sites.append(table)
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "dims": self.dims,
            "timeline": {
                "start": self.start,
                "months": self.months,
                "training_months": self.training_months,
                "label_share": self.label_share,
                "label_delay_min_days": self.label_delay_days[0],
                "label_delay_max_days": self.label_delay_days[1],
            },
            "site": sites,
        }


def month_start(start: str, month: int) -> date:
    """The first day of month ``month`` (1-based) of a timeline starting ``start``."""
    year, first = (int(g) for g in _START.fullmatch(start).groups())  # type: ignore[union-attr]
    index = first - 1 + month - 1
    return date(year + index // 12, index % 12 + 1, 1)


def month_profile(site: TimelineSite, month: int) -> SiteProfile:
    """The site's parameters in month ``month``: its events applied in file order, a drift
    moving from the value its first month would have had without it."""
    return _apply(site.profile, site.events, month)


def _apply(profile: SiteProfile, events: tuple[Event, ...], month: int) -> SiteProfile:
    values: dict[str, Any] = {}
    for k, event in enumerate(events):
        if month < event.month:
            continue
        if event.until is None:
            values.update(event.changes)
            continue
        before = _apply(profile, events[:k], event.month)
        share = min(1.0, (month - event.month + 1) / (event.until - event.month + 1))
        for key, target in event.changes:
            value = getattr(before, key) + (target - getattr(before, key)) * share
            values[key] = round(value) if SITE_RULES[key][0] == "int" else round(value, 3)
    return dataclasses.replace(profile, **values)


def _timeline(check: Checker, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The valid ``[timeline]`` table with its defaults, or None if it has a problem."""
    n_before = len(check.problems)
    good = {**TIMELINE_DEFAULTS, **check.table("timeline", raw, TIMELINE_RULES)}
    for key in ("start", "months", "training_months"):
        if key not in raw:
            check.add(f"timeline.{key}", MISSING, "missing required key")
    start = good.get("start")
    match = _START.fullmatch(start) if isinstance(start, str) else None
    if "start" in good and not (match and int(match[1]) >= 1970 and 1 <= int(match[2]) <= 12):
        check.add("timeline.start", start, "must be a month YYYY-MM (e.g. 2024-01), from 1970")
    if len(check.problems) > n_before:
        return None
    if good["training_months"] >= good["months"]:
        check.add(
            "timeline.training_months",
            good["training_months"],
            f"must be smaller than months ({good['months']}): the months after it are monitored",
        )
    low, high = good["label_delay_min_days"], good["label_delay_max_days"]
    if low > high:
        check.add("timeline.label_delay_max_days", high, f"must be at least {low} (the minimum)")
    last = month_start(good["start"], good["months"] + 1) - timedelta(days=1)
    never = month_start(good["start"], good["months"] + UNLABELLED_GAP_MONTHS + 1)
    never -= timedelta(days=1)
    if last + timedelta(days=high) >= never:
        check.add(
            "timeline.label_delay_max_days",
            high,
            f"a label may arrive up to {last + timedelta(days=high)}, not before {never}, the "
            "date given to the labels that never arrive; use a shorter delay",
        )
    if never > date.today():
        check.add(
            "timeline.start",
            good["start"],
            f"the timeline's last date ({never}, the label date of labels that never arrive, "
            f"{UNLABELLED_GAP_MONTHS} months after its end) is after today: a site rejects "
            "dates in the future (common.manifest); start earlier",
        )
    return good if len(check.problems) == n_before else None


def _events(check: Checker, prefix: str, raw: Any, months: int | None) -> list[Event] | None:
    """A site's ``[[site.event]]`` tables, or None if one has a problem."""
    if not (isinstance(raw, list) and all(isinstance(e, dict) for e in raw)):
        check.add(f"{prefix}.event", raw, "must be an array of [[site.event]] tables")
        return None
    n_before = len(check.problems)
    events = []
    for j, table in enumerate(raw):
        key = f"{prefix}.event[{j}]"
        good = check.table(key, table, EVENT_RULES)
        for required in ("month", "effect"):
            if required not in table:
                check.add(f"{key}.{required}", MISSING, "missing required key")
        for bound in ("month", "until"):
            if months is not None and good.get(bound, 1) > months:
                check.add(f"{key}.{bound}", good[bound], f"must be in [1, {months}] (months)")
        if "until" in good and good["until"] <= good.get("month", 0):
            check.add(f"{key}.until", good["until"], "must be after month (a drift's first)")
        changes = _changes(check, key, table, "until" in table)
        if changes is not None and {"month", "effect"} <= good.keys():
            events.append(
                Event(
                    good["month"], good["effect"], changes, good.get("until"), good.get("note", "")
                )
            )
    return events if len(check.problems) == n_before else None


def _changes(check: Checker, key: str, table: dict[str, Any], drift: bool) -> Any:
    """The parameter changes of one event: ``set`` for a step, ``to`` for a drift."""
    name, other = ("to", "set") if drift else ("set", "to")
    if other in table:
        check.add(
            f"{key}.{other}",
            table[other],
            "a drift (with until) takes `to`, a step (no until) takes `set`",
        )
    values = table.get(name)
    if not isinstance(values, dict) or not values:
        check.add(f"{key}.{name}", values if name in table else MISSING, "needs parameters")
        return None
    changes = []
    for param, value in values.items():
        dotted = f"{key}.{name}.{param}"
        if param not in EVENT_KEYS:
            check.add(dotted, value, "unknown key; an event may change " + ", ".join(EVENT_KEYS))
        elif drift and SITE_RULES[param][0] not in ("int", "float"):
            check.add(dotted, value, "a drift moves numbers only: change it with a step (set)")
        elif check.value(dotted, value, SITE_RULES[param]):
            changes.append((param, float(value) if SITE_RULES[param][0] == "float" else value))
    return tuple(changes) if len(changes) == len(values) else None


def _month_checks(check: Checker, prefix: str, site: TimelineSite, months: int) -> None:
    """The rule between keys that events can break: the order of the three phases."""
    for month in range(1, months + 1):
        p = month_profile(site, month)
        if not p.arterial_delay_s < p.portal_delay_s < p.delayed_delay_s:
            check.add(
                f"{prefix}.event",
                MISSING,
                f"in month {month} the phases are at {p.arterial_delay_s:g} / "
                f"{p.portal_delay_s:g} / {p.delayed_delay_s:g} s: arterial < portal < delayed",
            )
            return


def _site_tables(
    check: Checker, doc: dict[str, Any], timeline: dict[str, Any] | None
) -> list[tuple[int | None, list[Event] | None]]:
    """Take the timeline keys out of ``doc``'s ``[defaults]`` and ``[[site]]`` tables (in
    place), giving each site the ``n_cases`` of its training months; return each site's
    cases per month and events (None where they have a problem)."""
    months = timeline["months"] if timeline else None
    default_cpm: int | None = CASES_PER_MONTH_DEFAULT
    if isinstance(doc.get("defaults"), dict):
        doc["defaults"] = defaults = dict(doc["defaults"])
        if "cases_per_month" in defaults:
            default_cpm = defaults.pop("cases_per_month")
            if not check.value("defaults.cases_per_month", default_cpm, CASES_PER_MONTH):
                default_cpm = None
        if "event" in defaults:
            check.add("defaults.event", defaults.pop("event"), "events belong to a [[site]]")
    if not isinstance(doc.get("site"), list):
        return []  # the CT check reports it
    per_site: list[tuple[int | None, list[Event] | None]] = []
    sites = []
    for i, raw in enumerate(doc["site"]):
        if not isinstance(raw, dict):
            sites.append(raw)
            continue
        raw, prefix = dict(raw), f"site[{i}]"
        if "n_cases" in raw:
            check.add(
                f"{prefix}.n_cases",
                raw.pop("n_cases"),
                "set by the timeline (cases_per_month x months): give cases_per_month",
            )
        cpm = default_cpm
        if "cases_per_month" in raw:
            cpm = raw.pop("cases_per_month")
            if not check.value(f"{prefix}.cases_per_month", cpm, CASES_PER_MONTH):
                cpm = None
        events = _events(check, prefix, raw.pop("event", []), months)
        # the CT split check judges the training months' cases (a stand-in if unknown)
        raw["n_cases"] = cpm * timeline["training_months"] if cpm and timeline else 100_000
        sites.append(raw)
        per_site.append((cpm, events))
    doc["site"] = sites
    return per_site


def parse_timeline_scenario(data: dict[str, Any], file: str) -> TimelineScenario:
    """Validate a parsed TOML document; raise ScenarioError listing every problem.

    The ``[timeline]`` table, ``cases_per_month`` and the events are checked here, the
    rest by the CT scenario check (``scenario.parse_scenario``), and then the rule between
    keys that events can break (phase order) in every month.
    """
    check = Checker(file)
    timeline = None
    if "timeline" not in data:
        check.add("timeline", MISSING, "missing required key (a table)")
    elif not isinstance(data["timeline"], dict):
        check.add("timeline", data["timeline"], "must be a table")
    else:
        timeline = _timeline(check, data["timeline"])
    doc = {k: v for k, v in data.items() if k != "timeline"}
    per_site = _site_tables(check, doc, timeline)
    ct = None
    try:
        ct = parse_scenario(doc, file)
    except ScenarioError as e:  # its split advice counts a site's training months' cases
        check.problems.extend(
            p.replace(" n_cases = ", " cases_per_month x training_months = ") for p in e.problems
        )
    sites = []
    if ct is not None and timeline is not None:
        for i, (profile, (cpm, events)) in enumerate(zip(ct.sites, per_site, strict=True)):
            if cpm is None or events is None:
                continue
            site = TimelineSite(profile, cpm, tuple(events))
            _month_checks(check, f"site[{i}]", site, timeline["months"])
            sites.append(site)
    if check.problems or ct is None or timeline is None:
        raise ScenarioError(check.problems)
    return TimelineScenario(
        name=ct.name,
        seed=ct.seed,
        start=timeline["start"],
        months=timeline["months"],
        training_months=timeline["training_months"],
        sites=tuple(sites),
        label_share=float(timeline["label_share"]),
        label_delay_days=(timeline["label_delay_min_days"], timeline["label_delay_max_days"]),
        dims=ct.dims,
        description=ct.description,
        source=file,
    )


def validate_timeline_scenario(scenario: TimelineScenario) -> None:
    """Make the checks of a scenario file on a scenario built or changed in code."""
    parse_timeline_scenario(scenario.to_dict(), scenario.source or f"scenario {scenario.name!r}")
