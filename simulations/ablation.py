"""Which part of a hospital's shift degrades a trained model: a phantom ablation.

The phantom draws every case from random streams seeded by (seed, site name,
case index), so a hospital regenerated with one acquisition factor changed
holds the same patients and lesions, scanned differently. ``ablate`` scores a
checkpoint on the hospital as scanned, then with each factor group set to a
reference (training) hospital's values, then with every acquisition factor
set to the reference: the AUC recovered by each reversal shows which factor
drives the degradation, and whether a harmonisation or test-time hook could
in principle undo it. Paired on the same patients, so differences between
rows are free of sampling noise in the case mix (though not in the model's
scores).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from client.site import Instructions, open_site, site_evaluate
from common.config import RunConfig
from common.hooks import HookPoint, HookSet, hook_class
from common.keys import EVAL_ALL
from common.stats import AUCResult
from server.records import load_checkpoint
from simulations.phantom import write_site
from simulations.scenario import Scenario, load_scenario
from simulations.site_profile import SiteProfile

# acquisition factor groups (SiteProfile fields); case mix is never changed
FACTORS: dict[str, tuple[str, ...]] = {
    "kVp (iodine contrast)": ("kvp",),
    "contrast timing": ("arterial_delay_s", "portal_delay_s", "delayed_delay_s"),
    "reconstruction kernel": ("kernel",),
    "dose and slice thickness": ("dose_factor", "slice_thickness_mm"),
    "HU calibration": ("hu_scale", "hu_offset"),
    "bias field (shading)": ("bias_field",),
    "pixel spacing and field of view": ("pixel_spacing_mm", "fov_mm"),
}
AS_SCANNED, ALL_REVERTED = "as scanned", "every acquisition factor"


def variants(site: SiteProfile, reference: SiteProfile) -> dict[str, dict[str, tuple[Any, Any]]]:
    """Variant name -> the fields it changes (from, to); only fields that differ."""
    out: dict[str, dict[str, tuple[Any, Any]]] = {AS_SCANNED: {}}
    every: dict[str, tuple[Any, Any]] = {}
    for name, fields in FACTORS.items():
        changed = {
            f: (getattr(site, f), getattr(reference, f))
            for f in fields
            if getattr(site, f) != getattr(reference, f)
        }
        if changed:
            out[f"{name} as at {reference.name}"] = changed
            every.update(changed)
    if len(out) > 2:
        out[f"{ALL_REVERTED} as at {reference.name}"] = every
    return out


def ablate(
    scenario: str | Path,
    site: str,
    checkpoint: Path,
    work_dir: Path,
    reference: str = "",
    hooks: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per variant: the changed fields and the checkpoint's AUC [CI] there.

    The checkpoint is scored as an unseen site would score it: with the hooks it
    was trained with (a FedBN or SiloBN model re-estimates its statistics, a Nyul
    model maps onto its stored standard scale) plus the test-time ``hooks``."""
    spec: Scenario = load_scenario(scenario)
    by_name = {s.name: s for s in spec.sites}
    if site not in by_name:
        raise ValueError(f"scenario {spec.name!r} has no site {site!r}; it has {sorted(by_name)}")
    ref_name = reference or next(s.name for s in spec.sites if s.role != "external")
    if ref_name not in by_name:
        raise ValueError(f"--reference {ref_name!r} is not a site of {spec.name!r}")
    saved = load_checkpoint(checkpoint)
    trained = RunConfig.from_flat(saved["config"])
    # the hooks the model was trained with stay (harmonisation, local layers); test-time
    # hooks are the caller's choice
    keep = [h for h in trained.hooks.use if set(hook_class(h).points) != {HookPoint.TEST_TIME}]
    cfg = trained.replace({"hooks.use": ",".join(dict.fromkeys([*keep, *hooks]))})
    shared_text = str(saved.get("shared_statistics") or "")
    if HookSet(cfg).shares_statistics and not shared_text:
        raise ValueError(
            f"{checkpoint} was trained with hooks {list(keep)} that pool statistics, but it "
            "does not store them (written by an older hepafed): it cannot be scored alone"
        )
    todo = Instructions(
        model="ablation", shared_statistics=json.loads(shared_text) if shared_text else {}
    )
    arrays = ArrayRecord(saved["model"])
    rows: list[dict[str, Any]] = []
    for name, changed in variants(by_name[site], by_name[ref_name]).items():
        profile = dataclasses.replace(by_name[site], **{f: to for f, (_, to) in changed.items()})
        site_dir = work_dir / f"variant-{len(rows)}" / site
        if site_dir.exists():
            shutil.rmtree(site_dir)
        write_site(profile, spec.seed, spec.dims, site_dir)
        node = open_site({"site-dir": str(site_dir)}, cfg)
        summary, adaptation = site_evaluate(node, arrays, cfg, EVAL_ALL, instructions=todo)
        auc = None
        if not summary.insufficient and summary.auc is not None and summary.auc_var is not None:
            auc = AUCResult(summary.auc, summary.auc_var, summary.n_pos, summary.n_neg)
        lo, hi = auc.ci(cfg.eval.level) if auc is not None else (None, None)
        rows.append(
            {
                "variant": name,
                "changed": {f: [a, b] for f, (a, b) in changed.items()},
                "n": summary.n,
                "auc": None if auc is None else auc.auc,
                "lo": lo,
                "hi": hi,
                "adaptation": adaptation,
            }
        )
    return rows


def ablation_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table, with the AUC change from the site as scanned."""
    base = rows[0]["auc"] if rows and rows[0]["auc"] is not None else None
    lines = [
        "| variant | changed | AUC [95 % CI] | change |",
        "|---|---|---|---|",
    ]
    for r in rows:
        changed = ", ".join(f"{f} {a}→{b}" for f, (a, b) in r["changed"].items()) or "—"
        if r["auc"] is None:
            lines.append(f"| {r['variant']} | {changed} | insufficient data | |")
            continue
        delta = "" if base is None or r is rows[0] else f"{r['auc'] - base:+.3f}"
        lines.append(
            f"| {r['variant']} | {changed} | {r['auc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] "
            f"| {delta} |"
        )
    return "\n".join(lines) + "\n"
