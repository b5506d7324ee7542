"""The terminal view of a report: per-site table, pooled internal vs external, gaps, flags.

``hepafed simulate`` and ``hepafed report`` print it after writing the files; it reads
the ``report.json`` document alone and imports nothing of the runtime.
"""

from __future__ import annotations

from typing import Any

from server.report.html import skipped_text
from server.report.privacy import privacy_lines


def format_summary(report: dict[str, Any]) -> str:
    """The terminal summary: per-site table, pooled internal vs external, gaps, flags."""
    level = round(100 * report["settings"]["level"])
    lines = [f"report ({report['design']} design, {report['task']})", ""]
    head = (
        f"{'site':<12} {'model':<22} {'role':<9} {'n':>4} {'prev':>5}  "
        f"{'AUC [' + str(level) + '% CI]':<22} {'sens':>5} {'spec':>5} {'slope':>5} "
        f"{'ECE':>5}  {'drift':>6}"
    )
    lines += [head, "-" * len(head)]
    for r in report["sites"]:
        if r["insufficient"]:
            lines.append(
                f"{r['site']:<12} {r['model']:<22} {r['role']:<9} {r['n']:>4}  insufficient data"
            )
            continue
        auc = r.get("auc")
        auc_txt = f"{auc['estimate']:.3f} [{auc['lo']:.3f}, {auc['hi']:.3f}]" if auc else "n/a"
        op = r.get("thresholds", [{}])[0] if r.get("thresholds") else {}
        sens = _fmt(op.get("sensitivity", {}).get("estimate"))
        spec = _fmt(op.get("specificity", {}).get("estimate"))
        cal = r.get("calibration", {})
        slope = _fmt(cal.get("slope", {}).get("estimate"), 2)
        ece = _fmt(cal.get("ece"))
        drift = _fmt(r["drift"].get("frechet_relative"), 3)
        prev = _fmt(r.get("prevalence"), 2)
        lines.append(
            f"{r['site']:<12} {r['model']:<22} {r['role']:<9} {r['n']:>4} {prev:>5}  "
            f"{auc_txt:<22} {sens:>5} {spec:>5} {slope:>5} {ece:>5}  {drift:>6}"
        )
    for r in report["sites"]:
        if text := skipped_text(r):
            lines.append(f"{r['site']} ({r['model']}): {text}, not in n (data.on-bad-case = skip)")
    lines += recalibrated_lines(report)
    lines += saliency_lines(report)
    lines.append("")
    pooled = report["pooled"]
    for role in ("internal", "external"):
        block = pooled.get(role)
        if block:
            a = block["auc"]
            pi = a["prediction_interval"]
            lines.append(
                f"pooled {role:<8} AUC {a['estimate']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}]"
                f"  k={block['k']}  I²={a['i2']:.1f}%  tau²={a['tau2']:.4f}"
                f"  prediction interval [{_fmt(pi['lo'])}, {_fmt(pi['hi'])}]"
            )
    diff = (pooled.get("difference") or {}).get("auc")
    if diff:
        lines.append(
            f"internal - external AUC {diff['estimate']:+.3f} "
            f"[{diff['lo']:+.3f}, {diff['hi']:+.3f}], p = {_fmt(diff['p'], 4)}"
        )
    for g in report["gaps"]:
        d = g["gap"]
        lines.append(
            f"gap at {g['site']} ({g['model']}): internal {g['internal_auc']:.3f} vs "
            f"{g['external_auc']:.3f}, difference {d['estimate']:+.3f} "
            f"[{d['lo']:+.3f}, {d['hi']:+.3f}], p = {_fmt(d['p'], 4)}"
        )
    sp = report["drift_vs_degradation"]["spearman"]
    if sp["rho"] is not None:
        lines.append(
            f"drift vs AUC drop: Spearman rho {sp['rho']:+.2f} (p = {_fmt(sp['p'], 3)}, "
            f"n = {sp['n']})"
        )
    lines += lesion_type_lines(report)
    lines += threshold_lines(report)
    lines += privacy_lines(report)
    lines += training_noise_lines(report)
    lines.append("")
    if report["flags"]:
        lines.append("flags:")
        lines += [f"  [{f['kind']}] {f['message']}" for f in report["flags"]]
    else:
        lines.append("flags: none")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def lesion_type_lines(report: dict[str, Any]) -> list[str]:
    """Task lesion-type's three-way view: each site's macro AUC, and per class the pooled
    internal and external one-vs-rest AUC and their difference."""
    block = report.get("lesion_type")
    if not block:
        return []
    lines = ["", "three-way lesion type (one-vs-rest, argmax; the rows above: benign vs malignant)"]
    for r in block["sites"]:
        m = r["macro"]
        shown = (
            "insufficient data"
            if r["insufficient"] or m is None or m["estimate"] is None
            else f"macro AUC {m['estimate']:.3f} [{_fmt(m['lo'])}, {_fmt(m['hi'])}]"
        )
        counts = "/".join(str(v) for v in r["class_n"])
        lines.append(f"  {r['site']} ({r['model']}, {r['role']}, n {counts}): {shown}")
    for g in block["gap"]:
        d = g["difference"]
        diff = (
            f"difference {d['estimate']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], "
            f"p = {_fmt(d['p'], 4)}"
            if d and d["estimate"] is not None
            else "difference n/a"
        )
        lines.append(
            f"  {g['class_name']:<17} pooled internal {_fmt(g['internal_auc'])}, "
            f"external {_fmt(g['external_auc'])}, {diff}"
        )
    return lines


def training_noise_lines(report: dict[str, Any]) -> list[str]:
    """Each site's AUC, the pooled AUCs and the gaps over the seeds (``--seeds N``)."""
    block = report.get("training_noise")
    if not block:
        return []
    seeds = block["seeds"]
    level = round(100 * block["level"])
    lines = [
        "",
        f"training noise over {len(seeds)} seeds ({', '.join(map(str, seeds))}; the rows "
        f"above are seed {seeds[0]}'s): mean [{level}% CI with training noise], "
        "between-seed sd, test-sampling se",
    ]
    figures = [(f"{s['site']} ({s['model']})", s["auc"], "") for s in block["sites"]]
    figures += [
        (f"{s['site']} ({s['model']}) macro", s["macro_auc"], "")
        for s in block["sites"]
        if s.get("macro_auc")
    ]
    figures += [(f"pooled {k}", block["pooled"][k], "") for k in ("internal", "external")]
    figures += [("pooled internal - external", block["pooled"]["difference"], "+")]
    figures += [(f"gap at {g['site']} ({g['model']})", g["gap"], "+") for g in block["gaps"]]
    for name, fig, sign in figures:
        c = fig["combined"]
        if c is None:
            lines.append(f"  {name:<34} n/a (fewer than 2 seeds have it)")
            continue
        lines.append(
            f"  {name:<34} {c['estimate']:{sign}.3f} [{c['lo']:{sign}.3f}, {c['hi']:{sign}.3f}]"
            f"  sd {_fmt(c['between_sd'])}  se {_fmt(c['within_se'])}"
        )
    if len(seeds) < 5:
        lines.append("  (fewer than 5 seeds: the between-seed sd is itself uncertain)")
    return lines


def threshold_lines(report: dict[str, Any]) -> list[str]:
    """How each model's operating threshold (sens, spec above) was chosen, and its
    probabilities recalibrated."""
    choices = report["settings"].get("threshold_choices") or []
    lines = []
    for c in choices:
        if c["rule"] == "fixed":
            lines.append(
                f"operating threshold of {c['model']}: {c['threshold']:g} (fixed, not chosen): "
                f"{c['reason']}"
            )
        else:
            where = f"validation at {', '.join(c['sites'])}" if c["sites"] else "no validation"
            how = c["rule"] if c["chosen"] else "kept, not chosen"
            lines.append(
                f"operating threshold of {c['model']}: {c['threshold']:g} ({how}; {where}): "
                f"{c['reason']}"
            )
        if recal := c.get("recalibration"):
            lines.append(f"  {recalibration_text(recal)}")
    return lines


def recalibration_text(recal: dict[str, Any]) -> str:
    """A model's recalibration (settings.threshold_choices[].recalibration) in one line."""
    if not recal["fitted"]:
        return f"Recalibration not fitted: {recal['reason']}"
    sites = recal["sites"]
    return (
        f"Recalibration ({recal['method']}): a = {recal['intercept']:.3f}, "
        f"b = {recal['slope']:.3f}, fitted on {recal['n']} validation cases of "
        f"{'site' if len(sites) == 1 else 'sites'} {', '.join(sites)}"
    )


def saliency_lines(report: dict[str, Any]) -> list[str]:
    """Each site's Grad-CAM saliency share in the lesion, and in the liver outside it,
    against chance (eval.saliency); the liver's "not available" where the site sent none
    (no liver masks, or fewer cases with one than its policy.min-cell)."""
    lines = []
    for r in report["sites"]:
        if sal := r.get("saliency"):
            liver = sal.get("liver")
            in_liver = (
                f"in liver outside it {_pct(liver['in_liver'])} vs chance "
                f"{_pct(liver['chance'])}, ratio {_fmt(liver['ratio'], 2)} (n = {liver['n']})"
                if liver
                else "in liver outside it not available"
            )
            lines.append(
                f"{r['site']} ({r['model']}): saliency in lesion {_pct(sal['in_lesion'])} vs "
                f"chance {_pct(sal['chance'])}, ratio {_fmt(sal['ratio'], 2)} "
                f"(n = {sal['n']}); {in_liver}"
            )
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def recalibrated_lines(report: dict[str, Any]) -> list[str]:
    """Each site's calibration before → after recalibration, on the same test cases."""
    lines = []
    for r in report["sites"]:
        cal = r.get("calibration") or {}
        after = cal.get("recalibrated")
        if not after:
            continue
        pairs = [
            ("ECE", cal["ece"], after["ece"], 3),
            ("Brier", cal["brier"], after["brier"], 3),
            ("CITL", cal["citl"]["estimate"], after["citl"]["estimate"], 2),
            ("slope", cal["slope"]["estimate"], after["slope"]["estimate"], 2),
        ]
        shown = ", ".join(f"{name} {_fmt(x, d)} → {_fmt(y, d)}" for name, x, y, d in pairs)
        lines.append(f"{r['site']} ({r['model']}): recalibrated: {shown}")
    return lines
