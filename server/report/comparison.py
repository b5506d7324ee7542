"""The comparison report: methods side by side over seeds (``hepafed simulate --compare``).

Per method and seed, from the sites' summaries alone:
- internal AUC: random-effects pooled AUC over the training sites' test splits
  (``eval.pooling``, logit scale) with its CI, tau^2 and I^2;
- external AUC: the external site's AUC with its DeLong CI (pooled, as above,
  when there are several external sites);
- the gap: internal minus external, with a z-based CI for independent patients.

Over seeds: mean and sample standard deviation (ddof = 1) of each, and against
the baseline method (``fedavg`` when present) the ratio of mean gaps and the
paired per-seed change in external AUC. The target for a method is a
gap ratio <= 0.5 or a mean external gain larger than the baseline's
seed-to-seed standard deviation of external AUC. The gap ratio is reported only
where the baseline has a gap: a positive mean larger than its seed-to-seed
standard deviation (a ratio to a gap of about zero says nothing); a gap halved
because the method's internal AUC fell by more than the baseline's seed sd
does not meet the target.

Three-class summaries (task ``lesion-type``: ``class_n`` / ``class_auc``) add the
three-way view (``server.report.lesion_type``), per role over the sites that sent
their one-vs-rest (OvR) AUCs: per class the OvR AUC (one site: its own; several:
random-effects pooled on the logit scale, ``ovr_pooled`` with ``eval.pooling``,
``eval.hartung-knapp``), and the macro AUC, the mean of the three. With one site the
macro AUC is that site's ``macro_auc`` with its CI; with several it is the mean of the
three pooled class AUCs, an estimate without CI (lo/hi null): the classes share
patients, and their covariance is not carried through pooling. The macro is null when
a class has no pooled AUC. Other tasks' comparisons have none of these keys.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from common.stats import AUCResult
from common.summary import SiteSummary
from server.designs import EXTERNAL, INTERNAL, Evaluation
from server.report.lesion_type import (
    CLASSES,
    K,
    has_aucs,
    has_classes,
    pooled_role,
    site_macro,
)
from server.report.pooling import difference, pooled_block
from server.report.settings import ReportSettings
from server.report.site_statistics import auc_se, json_float

COMPARISON_VERSION = "1.0"


def _single_auc(s: SiteSummary, level: float) -> dict[str, Any] | None:
    if s.insufficient or s.auc is None or s.auc_var is None:
        return None
    a = AUCResult(s.auc, s.auc_var, s.n_pos, s.n_neg)
    lo, hi = a.ci(level)
    return {"estimate": a.auc, "lo": lo, "hi": hi, "se": auc_se(a)}


def _pooled(summaries: Mapping[str, SiteSummary], cfg: ReportSettings) -> dict[str, Any] | None:
    if len(summaries) == 1:
        (s,) = summaries.values()
        single = _single_auc(s, cfg.level)
        return None if single is None else {**single, "k": 1, "i2": None, "tau2": None}
    block = pooled_block(summaries, cfg)
    if block is None:
        return None
    a = block["auc"]
    return {
        "estimate": a["estimate"],
        "lo": a["lo"],
        "hi": a["hi"],
        "se": a["se"],
        "k": block["k"],
        "i2": a["i2"],
        "tau2": a["tau2"],
    }


def is_three_way(evaluations: Iterable[Evaluation]) -> bool:
    """Whether the summaries are three-class ones (class counts or OvR AUCs)."""
    return any(e.summary.class_n or e.summary.class_auc for e in evaluations)


def _three_way(
    evaluations: Sequence[Evaluation], cfg: ReportSettings
) -> tuple[dict[str, Any] | None, list[float | None]]:
    """Macro AUC and the K per-class OvR AUCs over one role's sites (module docstring)."""
    usable = [e for e in evaluations if has_classes(e.summary) and has_aucs(e.summary)]
    classes: list[float | None] = [None] * K
    if len(usable) == 1:
        s = usable[0].summary
        classes = [json_float(a) for a in s.class_auc]
        site = site_macro(s, cfg)
        if site is None:
            return None, classes
        return {**{k: site[k] for k in ("estimate", "lo", "hi")}, "k": 1}, classes
    pooled = pooled_role(usable, cfg)  # None only when no site is usable
    if pooled is None:
        return None, classes
    classes = [_estimate(c["auc"]) for c in pooled["per_class"]]
    known = [c for c in classes if c is not None]
    mean = statistics.fmean(known) if len(known) == K else None
    return {"estimate": mean, "lo": None, "hi": None, "k": len(usable)}, classes


def method_result(
    evaluations: Sequence[Evaluation], cfg: ReportSettings, three_way: bool | None = None
) -> dict[str, Any]:
    """One method at one seed: pooled internal, external and the gap; with ``three_way``
    (default: whether the summaries are three-class ones) also the macro and per-class
    OvR AUCs of each role."""
    internal = {e.site: e.summary for e in evaluations if e.role == INTERNAL}
    external = {e.site: e.summary for e in evaluations if e.role == EXTERNAL}
    pooled_int, pooled_ext = _pooled(internal, cfg), _pooled(external, cfg)
    gap = None
    if pooled_int is not None and pooled_ext is not None:
        gap = difference(
            pooled_int["estimate"],
            pooled_int["se"],
            pooled_ext["estimate"],
            pooled_ext["se"],
            cfg.level,
        )
    if three_way is None:
        three_way = is_three_way(evaluations)
    extra: dict[str, Any] = {}
    if three_way:
        for role in (INTERNAL, EXTERNAL):
            macro, classes = _three_way([e for e in evaluations if e.role == role], cfg)
            extra[f"macro_{role}"], extra[f"class_{role}"] = macro, classes
    return {
        "internal": pooled_int,
        "external": pooled_ext,
        "gap": gap,
        "sites": {
            e.site: {
                "role": e.role,
                "auc": _single_auc(e.summary, cfg.level),
                "adaptation": e.adaptation,
            }
            for e in sorted(evaluations, key=lambda e: e.site)
        },
        **extra,
    }


def _mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "sd": statistics.stdev(xs) if len(xs) > 1 else None,
        "n": len(xs),
    }


def _estimate(block: Mapping[str, Any] | None, key: str = "estimate") -> float | None:
    return None if block is None else block.get(key)


def build_comparison(
    per_seed: Mapping[int, Sequence[Evaluation]],
    methods: Mapping[str, Sequence[str]],
    config: Mapping[str, Any],
    baseline: str = "fedavg",
) -> dict[str, Any]:
    """The comparison document; ``methods``: name -> hook descriptions, in run order."""
    cfg = ReportSettings.from_flat(config)
    base = baseline if baseline in methods else next(iter(methods))
    three_way = is_three_way(e for evals in per_seed.values() for e in evals)
    results: dict[str, dict[int, dict[str, Any]]] = {
        m: {
            seed: method_result([e for e in evals if e.model == m], cfg, three_way)
            for seed, evals in per_seed.items()
        }
        for m in methods
    }
    base_ext = {s: _estimate(r["external"]) for s, r in results[base].items()}
    base_gap = _mean_sd([_estimate(r["gap"]) for r in results[base].values()])
    base_spread = _mean_sd(list(base_ext.values()))["sd"]
    base_internal = _mean_sd([_estimate(r["internal"]) for r in results[base].values()])
    base_has_gap = (
        base_gap["mean"] is not None
        and base_gap["mean"] > 0
        and (base_gap["sd"] is None or base_gap["mean"] > base_gap["sd"])
    )
    out: dict[str, Any] = {}
    for m, by_seed in results.items():
        ext = [_estimate(r["external"]) for r in by_seed.values()]
        gaps = _mean_sd([_estimate(r["gap"]) for r in by_seed.values()])
        gains = [
            e - b
            for s, r in by_seed.items()
            if (e := _estimate(r["external"])) is not None and (b := base_ext.get(s)) is not None
        ]
        gain = _mean_sd(gains)
        # a ratio of gaps means something only where the baseline has a gap: positive
        # and larger than its own seed-to-seed standard deviation
        ratio = (
            gaps["mean"] / base_gap["mean"] if gaps["mean"] is not None and base_has_gap else None
        )
        halves = ratio is not None and ratio <= 0.5
        internal = _mean_sd([_estimate(r["internal"]) for r in by_seed.values()])
        # a gap that shrinks because the internal AUC fell is no gain at a new site
        internal_fell = (
            internal["mean"] is not None
            and base_internal["mean"] is not None
            and internal["mean"] < base_internal["mean"] - (base_internal["sd"] or 0.0)
        )
        beats = (
            m != base
            and gain["mean"] is not None
            and base_spread is not None
            and gain["mean"] > base_spread
        )
        out[m] = {
            "hooks": list(methods[m]),
            "adaptation": sorted(
                {
                    site["adaptation"]
                    for r in by_seed.values()
                    for site in r["sites"].values()
                    if site["role"] == EXTERNAL
                }
            ),
            "seeds": {str(s): r for s, r in by_seed.items()},
            "internal_auc": internal,
            "internal_i2": _mean_sd([_estimate(r["internal"], "i2") for r in by_seed.values()]),
            "external_auc": _mean_sd(ext),
            "gap": gaps,
            "vs_baseline": {
                "gap_ratio": ratio,
                "external_gain": gain,
                "halves_gap": bool(halves) and m != base,
                "internal_fell": bool(internal_fell) and m != base,
                "gain_beats_seed_spread": bool(beats),
            },
        }
        if three_way:
            out[m].update(_three_way_over_seeds(list(by_seed.values())))
    doc: dict[str, Any] = {
        "comparison_version": COMPARISON_VERSION,
        "baseline": base,
        "baseline_external_sd": base_spread,
        "seeds": sorted(per_seed),
        "level": cfg.level,
        "pooling": cfg.pooling,
        "methods": out,
    }
    if three_way:
        doc["classes"] = list(CLASSES)
    return doc


def _three_way_over_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds of the macro and per-class OvR AUCs of each role."""
    out: dict[str, Any] = {}
    for role in (INTERNAL, EXTERNAL):
        out[f"macro_{role}_auc"] = _mean_sd([_estimate(r[f"macro_{role}"]) for r in per_seed])
        out[f"class_{role}_auc"] = [
            _mean_sd([r[f"class_{role}"][k] for r in per_seed]) for k in range(K)
        ]
    return out


def _pm(block: Mapping[str, Any], digits: int = 3) -> str:
    if block.get("mean") is None:
        return "n/a"
    sd = block.get("sd")
    return f"{block['mean']:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def _ci(block: Mapping[str, Any] | None) -> str:
    if not block:
        return "n/a"
    return f"{block['estimate']:.3f} [{block['lo']:.3f}, {block['hi']:.3f}]"


def comparison_markdown(doc: Mapping[str, Any], title: str, command: str) -> str:
    """The comparison as markdown: the summary table, then every seed with CIs."""
    base = doc["baseline"]
    pct = f"{100 * doc['level']:g} %"
    lines = [
        f"# {title}",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"Seeds {', '.join(str(s) for s in doc['seeds'])}; mean ± sd over seeds. Internal AUC: "
        f"random-effects pooled ({doc['pooling']}, logit scale) over the training sites' "
        "test splits; external AUC: every case of the external site; gap = internal - "
        f"external. Against {base}: ratio of mean gaps, and the paired per-seed change in "
        "external AUC. Target: gap ratio ≤ 0.5, or an external gain above the "
        f"seed-to-seed sd of {base}'s external AUC "
        f"({_fmt(doc['baseline_external_sd'])}). The gap ratio is shown only where "
        f"{base}'s mean gap is positive and larger than its seed-to-seed sd. A smaller "
        "gap from a lower internal AUC (by more than the baseline's seed sd) does not "
        "count: read the gap with the two AUC columns.",
        "",
        "| method | hooks | unseen site gets | internal AUC | I² | external AUC | gap "
        f"| gap / {base} | Δ external vs {base} | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in doc["methods"].items():
        vs = m["vs_baseline"]
        i2 = m["internal_i2"]
        # I² is in percent, as metafor reports it
        i2_text = "n/a" if i2["mean"] is None else f"{i2['mean']:.0f} %"
        if i2["mean"] is not None and i2["sd"] is not None:
            i2_text += f" ± {i2['sd']:.0f}"
        if name == base:
            target = "baseline"
        elif m["gap"]["mean"] is None and m["external_auc"]["mean"] is None:
            target = "n/a (no external site)"
        elif vs["gain_beats_seed_spread"] or (vs["halves_gap"] and not vs["internal_fell"]):
            target = "met"
        elif vs["halves_gap"]:
            target = "not met (gap halved by a lower internal AUC)"
        else:
            target = "not met"
        lines.append(
            f"| {name} | {', '.join(m['hooks']) or '—'} | {', '.join(m['adaptation'])} "
            f"| {_pm(m['internal_auc'])} | {i2_text} | {_pm(m['external_auc'])} "
            f"| {_pm(m['gap'])} | {_fmt(vs['gap_ratio'], 2)} "
            f"| {_pm(vs['external_gain']) if name != base else '—'} | {target} |"
        )
    if "classes" in doc:
        lines += _three_way_markdown(doc)
    lines += [
        "",
        f"## Every seed ({pct} CIs)",
        "",
        "| method | seed | internal AUC [CI] | I² | external AUC [CI] | gap [CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in doc["methods"].items():
        for seed, r in m["seeds"].items():
            i2 = (r["internal"] or {}).get("i2")
            gap = r["gap"]
            gap_text = (
                "n/a"
                if gap is None
                else (f"{gap['estimate']:+.3f} [{gap['lo']:+.3f}, {gap['hi']:+.3f}]")
            )
            lines.append(
                f"| {name} | {seed} | {_ci(r['internal'])} "
                f"| {'n/a' if i2 is None else f'{i2:.0f} %'} "
                f"| {_ci(r['external'])} | {gap_text} |"
            )
    return "\n".join(lines) + "\n"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _three_way_markdown(doc: Mapping[str, Any]) -> list[str]:
    """The three-way table: macro OvR AUC of each role and the external AUC of each class."""
    classes = doc["classes"]
    lines = [
        "",
        "## Three-way (macro one-vs-rest AUC)",
        "",
        f"Mean ± sd over seeds. Macro AUC: the mean of the {len(classes)} one-vs-rest AUCs "
        f"({', '.join(classes)}). With one site of a role, that site's macro AUC; with "
        f"several, the mean of each class's AUC pooled over them (random-effects, "
        f"{doc['pooling']}, logit scale). Class columns: the external one-vs-rest AUC "
        "(pooled as above).",
        "",
        "| method | internal macro AUC | external macro AUC | "
        + " | ".join(f"external AUC: {c}" for c in classes)
        + " |",
        "|---|---|---|" + "---|" * len(classes),
    ]
    for name, m in doc["methods"].items():
        cells = [_pm(m["macro_internal_auc"]), _pm(m["macro_external_auc"])]
        cells += [_pm(c) for c in m["class_external_auc"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
