"""What a site's images are and how they were acquired, summarised as counts and ranges.

Two consumers:

- ``acquisition_summary`` (and its JSON text, ``acquisition_json``) is what a
  ClientApp sends the server in its ``query`` reply (``SiteKey.ACQUISITION``)
  and what the report shows per site: case counts per vendor, scanner model and
  kernel, and min/median/max of slice thickness, kVp, field strength and
  contrast timing. Aggregates only: no per-case value leaves the site.
- ``survey_site`` / ``format_survey`` is the summary ``hepafed site check``
  prints: cases, splits, labels, channels, image sizes and voxel spacing (from
  image headers, no voxel data), and the same acquisition summary.

Values come from a case's metadata: manifest columns, completed by DICOM
headers for series folders (see ``common.manifest``).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.dates import acquired_line
from common.dicom import DELAY_SUFFIX, DicomSeriesError
from common.keys import Split
from common.manifest import Case, SiteManifest
from common.metadata import number  # None for a blank or implausible cell

CATEGORICAL_FIELDS = ("vendor", "scanner_model", "kernel")
NUMERIC_FIELDS = ("slice_thickness_mm", "kvp", "field_strength_t")
CONTRAST_FIELD = "contrast_delay_s"  # summary key: one range per ``<channel>_delay_s`` column
LABELS = {
    "vendor": "vendor",
    "scanner_model": "scanner model",
    "kernel": "kernel",
    "slice_thickness_mm": "slice thickness (mm)",
    "kvp": "kVp",
    "field_strength_t": "field strength (T)",
}
AXES = ("x", "y", "z")


OTHER = "other"  # the category that values recorded for fewer than min_cell cases merge into


def value_range(values: Iterable[float], min_cell: int = 1) -> dict[str, float] | None:
    """``{"n", "min", "median", "max"}`` of the values, or None if there are fewer than
    ``min_cell`` (at least one): a range of fewer cases is not reported."""
    vals = sorted(values)
    if len(vals) < max(1, min_cell):
        return None
    return {"n": len(vals), "min": vals[0], "median": statistics.median(vals), "max": vals[-1]}


def small_categories(counts: Counter[str], min_cell: int) -> dict[str, int]:
    """Counts per value with the values of fewer than ``min_cell`` cases merged into
    ``"other"``, itself left out when it still holds fewer than ``min_cell``."""
    kept = {k: v for k, v in counts.items() if v >= min_cell and k != OTHER}
    other = sum(v for k, v in counts.items() if k not in kept)
    if other and other >= min_cell:
        kept[OTHER] = other
    return dict(sorted(kept.items()))


def acquisition_summary(cases: Sequence[Case], min_cell: int = 1) -> dict[str, Any]:
    """Counts and ranges of the cases' acquisition metadata (fields nobody recorded are left out).

    The small-cell rule ``min_cell`` (k, the site's ``policy.min-cell`` when it leaves the
    site): values of fewer than k cases merge into ``"other"`` (left out below k), and a
    range over fewer than k cases is left out.

    ``{"n_cases": N, "vendor": {value: count}, "scanner_model": {...}, "kernel": {...},
    "slice_thickness_mm": {"n", "min", "median", "max"}, "kvp": ..., "field_strength_t": ...,
    "contrast_delay_s": {channel: {"n", "min", "median", "max"}}}``
    """
    out: dict[str, Any] = {"n_cases": len(cases)}
    for name in CATEGORICAL_FIELDS:
        counts = Counter(c.metadata[name] for c in cases if c.metadata.get(name))
        if kept := small_categories(counts, min_cell):
            out[name] = kept
    for name in NUMERIC_FIELDS:
        values = (v for c in cases if (v := number(name, c.metadata.get(name))) is not None)
        rng = value_range(values, min_cell)
        if rng is not None:
            out[name] = rng
    channels = sorted(
        {k[: -len(DELAY_SUFFIX)] for c in cases for k in c.metadata if k.endswith(DELAY_SUFFIX)}
    )
    delays = {}
    for ch in channels:
        key = f"{ch}{DELAY_SUFFIX}"
        values = (v for c in cases if (v := number(key, c.metadata.get(key))) is not None)
        rng = value_range(values, min_cell)
        if rng is not None:
            delays[ch] = rng
    if delays:
        out[CONTRAST_FIELD] = delays
    return out


def acquisition_json(cases: Sequence[Case], min_cell: int) -> str:
    """``acquisition_summary`` under the small-cell rule ``min_cell`` as compact JSON text
    (a Flower ConfigRecord holds strings): what a site's query reply carries."""
    summary = acquisition_summary(cases, min_cell)
    return json.dumps(summary, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SiteSurvey:
    """What ``hepafed site check`` prints about a site."""

    name: str
    manifest: str
    n_cases: int
    splits: dict[str, int]
    labels: dict[str, int]
    channels: tuple[str, ...]
    size: dict[str, dict[str, float]]  # axis -> range of image sizes (voxels)
    spacing: dict[str, dict[str, float]]  # axis -> range of voxel spacing (mm)
    sources: dict[str, int]  # "NIfTI" / "DICOM series" / "DICOM file" / "DICOMweb series"
    acquisition: dict[str, Any] = field(default_factory=dict)
    acquired: str | None = None  # first and last acquisition date (manifest ``acquired``)


def _source_kind(manifest: SiteManifest, img: Path) -> str:
    """How an image reached the site: a NIfTI file, a DICOM series folder or file, or a
    series retrieved from the site's DICOMweb server."""
    from common.dicom import is_dicom_source

    if img in manifest.retrieved:
        return "DICOMweb series"
    if not is_dicom_source(img):
        return "NIfTI"
    return "DICOM series" if img.is_dir() else "DICOM file"


def survey_site(manifest: SiteManifest) -> SiteSurvey:
    """Summarise a parsed manifest; image geometry comes from headers only."""
    from common.images import image_geometry

    sizes: list[tuple[int, ...]] = []
    spacings: list[tuple[float, ...]] = []
    sources: Counter[str] = Counter()
    for case in manifest.cases:
        for img in case.images:
            if not img.exists() or manifest.escape(img):
                continue  # reported as a problem; a file outside the site is never opened
            sources[_source_kind(manifest, img)] += 1
            try:
                geo = image_geometry(img)
            except (DicomSeriesError, OSError, ValueError, AttributeError):
                continue  # unreadable: check_images names it
            sizes.append(geo.shape)
            spacings.append(geo.spacing)
    splits = Counter(c.split for c in manifest.cases)
    labels = Counter(c.label for c in manifest.cases)
    return SiteSurvey(
        name=manifest.name,
        manifest=str(manifest.path),
        n_cases=len(manifest.cases),
        splits={s.value: splits.get(s.value, 0) for s in Split},
        labels={
            "benign": labels.get(0, 0),
            "malignant": labels.get(1, 0),
            # lesion-type: 1 is primary malignant, 2 metastasis
            **({"metastasis": labels[2]} if labels.get(2) else {}),
            "none": labels.get(None, 0),
        },
        channels=manifest.channels,
        size=_per_axis(sizes),
        spacing=_per_axis(spacings),
        sources=dict(sources),
        acquisition=acquisition_summary(manifest.cases),
        acquired=acquired_line(manifest.cases),
    )


def _per_axis(rows: Sequence[tuple[float, ...]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for i, axis in enumerate(AXES):
        rng = value_range(float(r[i]) for r in rows if len(r) > i)
        if rng is not None:
            out[axis] = rng
    return out


def _g(x: float) -> str:
    return f"{x:g}"


def _fmt_range(rng: dict[str, float]) -> str:
    return f"min {_g(rng['min'])}, median {_g(rng['median'])}, max {_g(rng['max'])}"


def format_survey(s: SiteSurvey) -> list[str]:
    """The lines ``hepafed site check`` prints (first line unindented)."""
    lines = [f"site {s.name}: {s.n_cases} cases in {s.manifest}"]
    lines.append("  splits: " + ", ".join(f"{k}={v}" for k, v in s.splits.items()))
    label_text = f"benign={s.labels['benign']} malignant={s.labels['malignant']}"
    if "metastasis" in s.labels:  # three-way labels: 1 is primary malignant
        label_text = (
            f"benign={s.labels['benign']} primary={s.labels['malignant']} "
            f"metastasis={s.labels['metastasis']}"
        )
    if s.labels["none"]:
        label_text += f" unlabelled={s.labels['none']}"
    lines.append(f"  labels: {label_text}")
    lines.append(f"  channels: {', '.join(s.channels)}")
    if s.acquired:
        lines.append(f"  {s.acquired}")
    lines.append("  image sources: " + ", ".join(f"{k}={v}" for k, v in sorted(s.sources.items())))
    for title, ranges in (("image size (voxels)", s.size), ("voxel spacing (mm)", s.spacing)):
        per_axis = "; ".join(
            f"{axis} {_g(r['min'])}/{_g(r['median'])}/{_g(r['max'])}" for axis, r in ranges.items()
        )
        lines.append(f"  {title}, min/median/max: {per_axis or 'no readable header'}")
    acq = s.acquisition
    lines.append("  acquisition (cases per value; ranges over cases):")
    for name in CATEGORICAL_FIELDS:
        counts = acq.get(name)
        text = ", ".join(f"{k}={v}" for k, v in counts.items()) if counts else "not recorded"
        lines.append(f"    {LABELS[name]}: {text}")
    for name in NUMERIC_FIELDS:
        rng = acq.get(name)
        text = f"{_fmt_range(rng)} ({rng['n']} cases)" if rng else "not recorded"
        lines.append(f"    {LABELS[name]}: {text}")
    delays = acq.get(CONTRAST_FIELD) or {}
    if delays:
        lines.append("    contrast timing (s after bolus start):")
        order = [
            *(c for c in s.channels if c in delays),
            *(c for c in delays if c not in s.channels),
        ]
        for ch in order:
            rng = delays[ch]
            lines.append(f"      {ch}: {_fmt_range(rng)} ({rng['n']} cases)")
    else:
        lines.append("    contrast timing: not recorded")
    return lines
