"""Training noise in the report: the same run with several training seeds, combined.

``hepafed simulate --seeds N`` (and ``hepafed report --combine RUN...``) trains the
same federation N times with seeds ``seed, seed + 1, ...`` on the same phantom and
splits. Every seed's report is built as usual; this module combines them into the
``training_noise`` block of one report:

- per site and model: the AUC of each seed, their mean, the mean test-sampling
  (DeLong) standard error, the between-seed standard deviation and an interval that
  includes both (``common.stats.seeds``: mean-over-seeds estimand, variance
  ``U + B / S``, Satterthwaite df); for ``lesion-type`` the three-way macro AUC the
  same way (its variance from the classes' covariance, ``common.stats.multiclass``);
- the pooled internal and external AUC and their difference, combined the same way
  from each seed's pooled estimate and its standard error (a seed's federated model
  serves every site, so training noise is shared across sites: combining per seed
  keeps that correlation, pooling per-site means would not);
- per site, the internal-external gap, combined the same way, and a flag
  ``gap-within-training-noise`` where the combined interval includes 0 although at
  least one seed's own interval excluded it: one training run alone would have
  reported a degradation (or an improvement) that the seeds do not support.

A figure missing in a seed (insufficient data, a site that did not report) is left
out of that figure's combination, and the seeds used are listed; with fewer than two
it has no combined interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.files import write_atomic
from common.stats import combine_seeds
from common.stats.seeds import SeedCombined
from server.report.files import REPORT_HTML, REPORT_JSON, ReportError, load_report, validate
from server.report.html import render_html
from server.report.site_statistics import json_float

METHOD = (
    "mean over training seeds on the same test cases; variance = mean test-sampling "
    "variance + between-seed variance / seeds (Rubin's rules for a mean-over-training "
    "estimand), t interval with Satterthwaite df (common.stats.seeds)"
)
FLAG = "gap-within-training-noise"


AUC_RANGE = (0.0, 1.0)
DIFFERENCE_RANGE = (-1.0, 1.0)


def _combined(
    seeds: Sequence[int],
    values: Sequence[tuple[float, float] | None],
    level: float,
    bounds: tuple[float, float] = AUC_RANGE,
) -> dict[str, Any]:
    """Per-seed estimates (estimate, variance; None where missing) -> the JSON block; the
    interval is clipped to the figure's range, as a single AUC's Wald interval is."""
    used = [(s, v) for s, v in zip(seeds, values, strict=True) if v is not None]
    block: dict[str, Any] = {
        "per_seed": [None if v is None else json_float(v[0]) for v in values],
        "seeds_used": [s for s, _ in used],
    }
    if len(used) < 2:
        return {**block, "combined": None}
    c: SeedCombined = combine_seeds([v[0] for _, v in used], [v[1] for _, v in used])
    lo, hi = c.ci(level)
    block["combined"] = {
        "estimate": json_float(c.estimate),
        "lo": json_float(max(bounds[0], lo)),
        "hi": json_float(min(bounds[1], hi)),
        "se": json_float(c.se),
        "df": None if math.isinf(c.df) else json_float(c.df),
        "within_se": json_float(math.sqrt(c.within)),
        "between_sd": json_float(c.between_sd),
    }
    return block


def _value(block: Mapping[str, Any] | None, se_key: str) -> tuple[float, float] | None:
    """(estimate, variance) of a report block, None when it has no usable estimate."""
    if not block:
        return None
    est = block.get("estimate")
    if est is None:
        return None
    if se_key == "variance":
        var = block.get("variance")
    else:
        se = block.get("se")
        var = None if se is None else se * se
    return None if var is None else (float(est), float(var))


def _excludes_zero(block: Mapping[str, Any]) -> bool:
    lo, hi = block.get("lo"), block.get("hi")
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def training_noise(
    runs: Sequence[tuple[int, Mapping[str, Any]]], level: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``training_noise`` block of ``runs`` ((seed, report document), two or more, in
    seed order) and the flags it raises."""
    if len(runs) < 2:
        raise ValueError(f"training noise needs reports from at least 2 seeds, got {len(runs)}")
    seeds = [seed for seed, _ in runs]
    docs = [doc for _, doc in runs]
    designs = {d["design"] for d in docs}
    if len(designs) != 1:
        raise ValueError(f"the runs use different evaluation designs: {sorted(designs)}")

    keys: list[tuple[str, str]] = []
    roles: dict[tuple[str, str], str] = {}
    for d in docs:
        for r in d["sites"]:
            key = (r["site"], r["model"])
            if key not in roles:
                keys.append(key)
                roles[key] = r["role"]
    by_seed = [{(r["site"], r["model"]): r for r in d["sites"]} for d in docs]
    # lesion-type: each site's three-way macro AUC too (the rows above are its binary view)
    three_way = [
        {(r["site"], r["model"]): r for r in (d.get("lesion_type") or {}).get("sites", [])}
        for d in docs
    ]
    sites = []
    for site, model in keys:
        entry: dict[str, Any] = {
            "site": site,
            "model": model,
            "role": roles[(site, model)],
            "auc": _combined(
                seeds,
                [_value(rows.get((site, model), {}).get("auc"), "variance") for rows in by_seed],
                level,
            ),
        }
        if any(three_way):
            macro = [
                _value(rows.get((site, model), {}).get("macro"), "variance") for rows in three_way
            ]
            entry["macro_auc"] = _combined(seeds, macro, level)
        sites.append(entry)
    pooled = {
        role: _combined(
            seeds, [_value((d["pooled"].get(role) or {}).get("auc"), "se") for d in docs], level
        )
        for role in ("internal", "external")
    }
    pooled["difference"] = _combined(
        seeds,
        [_value((d["pooled"].get("difference") or {}).get("auc"), "se") for d in docs],
        level,
        DIFFERENCE_RANGE,
    )

    gap_keys: list[tuple[str, str]] = []
    for d in docs:
        for g in d["gaps"]:
            if (g["site"], g["model"]) not in gap_keys:
                gap_keys.append((g["site"], g["model"]))
    gaps_by_seed = [{(g["site"], g["model"]): g["gap"] for g in d["gaps"]} for d in docs]
    gaps: list[dict[str, Any]] = []
    flags: list[dict[str, Any]] = []
    for site, model in gap_keys:
        per_seed = [by.get((site, model)) for by in gaps_by_seed]
        block: dict[str, Any] = {
            "site": site,
            "model": model,
            "gap": _combined(seeds, [_value(g, "se") for g in per_seed], level, DIFFERENCE_RANGE),
        }
        gaps.append(block)
        combined = block["gap"]["combined"]
        alone = [(s, g) for s, g in zip(seeds, per_seed, strict=True) if g and _excludes_zero(g)]
        if combined is not None and not _excludes_zero(combined) and alone:
            seed, g = alone[0]
            flags.append(
                {
                    "site": site,
                    "model": model,
                    "role": roles.get((site, model), "external"),
                    "kind": FLAG,
                    "message": (
                        f"{site}: gap {combined['estimate']:+.3f} "
                        f"[{combined['lo']:+.3f}, {combined['hi']:+.3f}] over "
                        f"{len(block['gap']['seeds_used'])} seeds includes 0, though seed "
                        f"{seed} alone reported [{g['lo']:+.3f}, {g['hi']:+.3f}]"
                        f"{f' (and {len(alone) - 1} more seeds)' if len(alone) > 1 else ''}: "
                        "within training noise"
                    ),
                }
            )
    result: dict[str, Any] = {
        "seeds": seeds,
        "level": level,
        "method": METHOD,
        "sites": sites,
        "pooled": pooled,
        "gaps": gaps,
    }
    return result, flags


def combined_report(
    runs: Sequence[tuple[int, Mapping[str, Any]]], run_dirs: Sequence[str]
) -> dict[str, Any]:
    """One report for several seeds: the first seed's report (every section as a single
    run shows it, labelled as that seed's) with the ``training_noise`` block and its
    flags added."""
    first = dict(runs[0][1])
    level = float(first["settings"]["level"])
    block, flags = training_noise(runs, level)
    block["runs"] = list(run_dirs)
    return {**first, "training_noise": block, "flags": [*first["flags"], *flags]}


def seed_list(first: int, count: int) -> list[int]:
    """``count`` consecutive training seeds from ``first`` (``--seeds N``)."""
    if count < 2:
        raise ValueError(f"--seeds {count}: training noise needs at least 2 seeds (5 or more)")
    return [first + i for i in range(count)]


def seed_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    """The ``seed-SEED`` run folders under ``out_dir`` that hold a report, in seed order."""
    found = []
    for d in out_dir.glob("seed-*"):
        suffix = d.name.removeprefix("seed-")
        if suffix.lstrip("-").isdigit() and (d / REPORT_JSON).is_file():
            found.append((int(suffix), d))
    return sorted(found)


def write_combined_report(out_dir: Path, runs: Sequence[tuple[int, Path]]) -> dict[str, Any]:
    """Combine the reports of ``runs`` ((seed, run folder), two or more) into
    ``out_dir``'s report.json and report.html (validated like any report)."""
    if len(runs) < 2:
        raise ReportError(
            f"{out_dir}: training noise needs the reports of at least 2 seeds "
            f"(seed-SEED/report.json), found {len(runs)}"
        )
    docs = [(seed, load_report(run)) for seed, run in runs]
    names = [
        str(run.relative_to(out_dir)) if run.is_relative_to(out_dir) else str(run)
        for _, run in runs
    ]
    try:
        report = combined_report(docs, names)
    except ValueError as e:
        raise ReportError(f"{out_dir}: cannot combine the seeds' reports: {e}") from None
    validate(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / REPORT_JSON, json.dumps(report, indent=2))
    write_atomic(out_dir / REPORT_HTML, render_html(report))
    return report
