"""`hepafed study --report`: a study's results file as one markdown report per scenario.

Per variant, the mean and seed-to-seed sd of every figure a cell records
(``simulations.study_figures``), and issue 14's target table with the figures
the issue measured before ("now"), the targets and each variant's value. Reads
only the JSONL file: no torch, no Flower.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from simulations.phantom import TRAINING_DATA_VERSION
from simulations.study import OK, Study, phantom_of, read_results

# issue 14's "now" column: liver-5, default training, seeds 2026-2028
ISSUE_NOW = {
    "sd": "0.118 (3 seeds)",
    "worst": "0.391",
    "order": "violated at hospital-e",
    "gap": "+0.090 / -0.090 / +0.006",
    "fp16": "up to 0.048",
    "wall": "about 3.3 min idle",
}
NOW_SCENARIO = "liver-5"
MISSING = "n/a"

Record = Mapping[str, Any]


def latest_ok(records: Sequence[Record], scenario: str) -> list[Record]:
    """The latest successful record of each cell of ``scenario``."""
    by_key: dict[str, Record] = {}
    for r in records:
        if r.get("scenario") == scenario:
            by_key[str(r["key"])] = r
    return [r for r in by_key.values() if r.get("status") == OK]


def group_name(record: Record) -> str:
    """A variant's name, marked when its cells are quick or ran on an earlier phantom (their
    figures are not comparable with the current phantom's: other splits, no val split)."""
    name = str(record["variant"]) + (" (quick)" if record.get("quick") else "")
    phantom = phantom_of(record)
    return name if phantom == TRAINING_DATA_VERSION else f"{name} (phantom {phantom})"


def _stats(values: Sequence[float | None]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    sd = statistics.stdev(vals) if len(vals) > 1 else math.nan
    return statistics.fmean(vals), sd, len(vals)


def _f(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return MISSING
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _get(record: Record, *path: str) -> float | None:
    node: Any = record
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) else None


def worst_training_auc(record: Record) -> float | None:
    roles = record.get("roles", {})
    vals = [v for s, v in record.get("site_auc", {}).items() if roles.get(s) != "external"]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


Getter = Callable[[Record], float | None]
MODEL_LABELS = {"pooled": "pooled model", "fedavg": "FedAvg", "local_mean": "mean local-only"}


def _at(*path: str) -> Getter:
    return lambda r: _get(r, *path)


def _pooled_minus_fedavg(part: str) -> Getter:
    def get(r: Record) -> float | None:
        pooled, fedavg = (
            _get(r, "same_cases", part, "pooled"),
            _get(r, "same_cases", part, "fedavg"),
        )
        return _diff(pooled, fedavg)

    return get


def figure_rows(records: Sequence[Record]) -> list[tuple[str, Getter]]:
    """(label, getter) of every figure a group's records carry."""
    rows: list[tuple[str, Getter]] = [
        ("pooled internal AUC (FedAvg, random effects)", _at("pooled_internal_auc")),
        ("worst training-site AUC", worst_training_auc),
    ]
    sites = sorted({s for r in records for s in r.get("site_auc", {})})
    rows += [(f"FedAvg AUC at {site}", _at("site_auc", site)) for site in sites]
    externals = sorted({s for r in records for s in r.get("external_sites", [])})
    rows += [(f"FedAvg gap at {site}", _at("gap", site)) for site in externals]
    for part in ["internal", *externals]:
        where = "all training sites' test cases" if part == "internal" else part
        for model, label in MODEL_LABELS.items():
            rows.append((f"{label} AUC, {where}", _at("same_cases", part, model)))
        rows.append((f"pooled - FedAvg, {where}", _pooled_minus_fedavg(part)))
    rows.append(("wall time of the cell (min)", lambda r: _div(_get(r, "wall_s"), 60.0)))
    return rows


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _div(a: float | None, b: float) -> float | None:
    return a / b if a is not None else None


COMPRESSION_KEY = "federation.compression"


def compression_cell(records: Sequence[Record], groups: Mapping[str, Sequence[Record]]) -> str:
    """For a variant that compresses updates: the largest change, over the seeds both ran,
    of the pooled internal AUC and of any site's FedAvg AUC against the variant with the
    same overrides but no compression (same seed, same phantom)."""
    overrides = dict(records[0].get("overrides", {})) if records else {}
    if overrides.get(COMPRESSION_KEY, "none") == "none":
        return "—"
    plain = {k: v for k, v in overrides.items() if k != COMPRESSION_KEY}
    base = next((rs for rs in groups.values() if rs and dict(rs[0].get("overrides", {})) == plain
                 and rs[0].get("quick") == records[0].get("quick")
                 and phantom_of(rs[0]) == phantom_of(records[0])), None)  # fmt: skip
    if base is None:
        return "no uncompressed variant with the same overrides"
    by_seed = {r["seed"]: r for r in base}
    pairs = [(r, by_seed[r["seed"]]) for r in records if r["seed"] in by_seed]
    if not pairs:
        return MISSING
    pooled = max(abs(a["pooled_internal_auc"] - b["pooled_internal_auc"]) for a, b in pairs)
    site = max(abs(a["site_auc"][s] - b["site_auc"][s])
               for a, b in pairs for s in a["site_auc"] if s in b["site_auc"])  # fmt: skip
    met = "met" if pooled <= 0.005 and site <= 0.01 else "not met"
    return (f"{overrides[COMPRESSION_KEY]}: at most {pooled:.4f} pooled, {site:.4f} per site "
            f"({len(pairs)} seeds; {met})")  # fmt: skip


def target_table(groups: Mapping[str, Sequence[Record]], scenario: str) -> list[str]:
    """Issue 14's target table: now (the issue's figures), target, each variant."""
    names = list(groups)
    now = scenario == NOW_SCENARIO
    head = ["figure", "now (issue 14)" if now else "now", "target", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, issue: str, target: str, cell: Callable[[Sequence[Record]], str]) -> None:
        values = [cell(groups[n]) for n in names]
        lines.append("| " + " | ".join([label, issue if now else MISSING, target, *values]) + " |")

    def sd_cell(rs: Sequence[Record]) -> str:
        _, sd, n = _stats([_get(r, "pooled_internal_auc") for r in rs])
        return f"{_f(sd)} ({n} seed{'' if n == 1 else 's'})"

    def worst_cell(rs: Sequence[Record]) -> str:
        vals = [v for v in map(worst_training_auc, rs) if v is not None]
        return f"{min(vals):.3f}" if vals else MISSING

    def order_cell(part: str) -> Callable[[Sequence[Record]], str]:
        def cell(rs: Sequence[Record]) -> str:
            p, f, lo = (_stats([_get(r, "same_cases", part, m) for r in rs])[0]
                        for m in ("pooled", "fedavg", "local_mean"))  # fmt: skip
            if not all(math.isfinite(x) for x in (p, f, lo)):
                return MISSING
            order = "order holds" if p >= f >= lo else "order violated"
            return f"{p:.3f} / {f:.3f} / {lo:.3f}: {order}, pooled - FedAvg {p - f:+.3f}"

        return cell

    def gap_cell(site: str) -> Callable[[Sequence[Record]], str]:
        def cell(rs: Sequence[Record]) -> str:
            vals = [v for v in (_get(r, "gap", site) for r in rs) if v is not None]
            if not vals:
                return MISSING
            mean, sd, n = _stats(vals)
            return f"{sum(v > 0 for v in vals)}/{n} positive, {_f(mean, True)} (sd {_f(sd)})"

        return cell

    def wall_cell(rs: Sequence[Record]) -> str:
        mean, _, n = _stats([_get(r, "wall_s") for r in rs])
        return f"{mean / 60:.1f} min (mean of {n})" if n else MISSING

    row("sd of pooled internal AUC across seeds", ISSUE_NOW["sd"], "≤ 0.02", sd_cell)
    row("worst training-site AUC over all seeds", ISSUE_NOW["worst"], "≥ 0.75", worst_cell)
    externals = sorted(
        {s for rs in groups.values() for r in rs for s in r.get("external_sites", [])}
    )
    goal = "holds; pooled - FedAvg ≤ 0.03"
    row("pooled ≥ FedAvg ≥ mean local-only, all training sites' test cases (mean AUCs)",
        ISSUE_NOW["order"], goal, order_cell("internal"))  # fmt: skip
    for site in externals:
        row(f"pooled ≥ FedAvg ≥ mean local-only at {site} (mean AUCs)", ISSUE_NOW["order"],
            goal, order_cell(site))  # fmt: skip
        row(f"FedAvg gap at {site}", ISSUE_NOW["gap"], "positive in every seed, sd ≤ 0.02",
            gap_cell(site))  # fmt: skip
    row("AUC change from `federation.compression=fp16`, same seed", ISSUE_NOW["fp16"],
        "≤ 0.005 pooled, ≤ 0.01 per site", lambda rs: compression_cell(rs, groups))  # fmt: skip
    row("`hepafed simulate` wall time per cell", ISSUE_NOW["wall"], "≤ 10 min", wall_cell)
    return lines


def render(study: Study, records: Sequence[Record], scenario: str) -> str:
    """The markdown report of ``scenario``'s cells."""
    ok = latest_ok(records, scenario)
    order = {v.name: i for i, v in enumerate(study.variants)}
    groups: dict[str, list[Record]] = {}

    def place(r: Record) -> tuple[bool, str, int, int]:  # the current phantom's cells first
        old = phantom_of(r) != TRAINING_DATA_VERSION
        return old, phantom_of(r), order.get(str(r["variant"]), 99), int(r["seed"])

    for r in sorted(ok, key=place):
        groups.setdefault(group_name(r), []).append(r)
    out = [f"# Stability study `{study.name}` on {scenario}", ""]
    if study.description:
        out += [study.description.strip(), ""]
    out += [
        "Generated by `hepafed study --report` from "
        f"`{study.results}` ({len(ok)} finished cells). Every cell is one `hepafed simulate` "
        "run (FedAvg, each site's local-only model, the pooled model) on the scenario's fixed "
        "phantom; only the training `seed` varies. The local-only and pooled models use the "
        "same recipe (lr schedule included) and the same passes over the data as FedAvg "
        "(rounds x local epochs, below).",
        "",
        "## Targets (issue 14)",
        "",
        *target_table(groups, scenario),
        "",
        "sd: sample standard deviation across training seeds. The ordering row gives the mean "
        "AUC of the pooled model / FedAvg / the mean of the local-only models, each on the same "
        "cases.",
        "",
        "## Variants",
        "",
    ]
    for name, rs in groups.items():
        variant = next((v for v in study.variants if v.name == rs[0]["variant"]), None)
        overrides = ", ".join(f"`{k}={v}`" for k, v in rs[0].get("overrides", {}).items())
        budget = rs[0].get("budget", {})
        out += [f"### {name}", ""]
        if variant is not None and variant.description:
            out += [variant.description, ""]
        out += [
            f"Overrides: {overrides or 'none (the defaults)'}. Budget: "
            f"{budget.get('rounds', '?')} rounds x {budget.get('local_epochs', '?')} local "
            f"epochs = {budget.get('passes', '?')} passes over each site's data. "
            f"Seeds: {', '.join(str(r['seed']) for r in rs)}.",
            "",
            "| figure | mean | sd | n | min | max |",
            "|---|---|---|---|---|---|",
        ]
        for label, get in figure_rows(rs):
            vals = [v for v in map(get, rs) if v is not None]
            mean, sd, n = _stats(vals)
            if not n:
                continue
            signed = "gap" in label or " - " in label
            out.append(
                f"| {label} | {_f(mean, signed)} | {_f(sd)} | {n} | {_f(min(vals), signed)} | "
                f"{_f(max(vals), signed)} |"
            )
        out.append("")
    out += cells_section(records, scenario)
    return "\n".join(out) + "\n"


def cells_section(records: Sequence[Record], scenario: str) -> list[str]:
    """Every cell's latest record: status, wall time, run folder; and the commands."""
    latest: dict[str, Record] = {}
    for r in records:
        if r.get("scenario") == scenario:
            latest[str(r["key"])] = r
    out = [
        "## Cells, commands and wall times",
        "",
        "| variant | seed | status | wall (min) | started (UTC) | CPUs | run folder |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(latest.values(), key=lambda r: (str(r.get("started", "")), r["key"])):
        status = str(r.get("status"))
        if status != OK:
            status += f": {str(r.get('error', ''))[:120]}"
        wall = _f(_div(_get(r, "wall_s"), 60.0)).replace(MISSING, "?")
        out.append(
            f"| {group_name(r)} | {r['seed']} | {status} | {wall} | {r.get('started', '')} | "
            f"{r.get('host_cpus', '')} | `{r.get('run_dir', '')}` |"
        )
    commands = sorted({str(r["command"]) for r in latest.values() if r.get("command")})
    out += ["", "Commands that produced these cells:", ""]
    out += [f"    {c}" for c in commands] or ["    (not recorded)"]
    out += [
        "",
        "Wall times are from a shared machine (other work ran beside the study), so they "
        "bound the cost of a run, not its speed on an idle machine.",
    ]
    return out


def write_reports(study: Study) -> list[Path]:
    """One markdown report per scenario with results; the paths written."""
    records = read_results(study.results)
    written = []
    for scenario in study.scenarios:
        if not any(r.get("scenario") == scenario for r in records):
            continue
        path = Path(study.report.replace("{scenario}", scenario))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(study, records, scenario), encoding="utf-8")
        written.append(path)
    return written
