"""The per-site table: one row per site and model, classification or segmentation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.format import finite
from server.report.html.view_context import Context, FlagRef
from server.report.html.view_read import Estimate, estimate, get, mapping, records, text
from server.report.html.view_recalibration import RecalibrationFit, read_fit

__all__ = [
    "ClassificationCells",
    "Drift",
    "RowIdent",
    "SegmentationCells",
    "SiteRow",
    "SitesSection",
    "ThresholdLine",
    "adaptation_text",
    "read_sites",
    "skipped_text",
]


@dataclass(frozen=True)
class RowIdent:
    """The first three cells of a row: site and model, role, number of cases."""

    site: str
    model: str
    role: str
    all_cases: bool  # scored on all the site's cases, not its test split
    adaptation: str  # how the site adapted the model first; "" when it did not
    n: str
    skipped: str  # the bad cases the site left out (``skipped_text``), "" when none


@dataclass(frozen=True)
class Drift:
    """A site's data against the internal sites': embedding and intensity drift."""

    frechet: float | None
    w1: float | None
    psi: float | None


@dataclass(frozen=True)
class ClassificationCells:
    prevalence: float | None
    auc: Estimate
    sensitivity: Estimate  # this and the next three at the operating threshold
    specificity: Estimate
    ppv: Estimate
    npv: Estimate
    slope: Estimate
    citl: Estimate
    ece: float | None
    brier: float | None
    drift: Drift


@dataclass(frozen=True)
class SegmentationCells:
    dice: Estimate  # the mean with its CI
    median: float | None
    q1: float | None
    q3: float | None
    sd: float | None
    hd95_mean: float | None
    hd95_cases: str
    drift: Drift


@dataclass(frozen=True)
class SiteRow:
    """A row: statistics for one kind of task, or neither when the site had too few cases."""

    ident: RowIdent
    flags: tuple[FlagRef, ...]
    insufficient: bool
    n_pos: str
    n_neg: str
    classification: ClassificationCells | None
    segmentation: SegmentationCells | None


@dataclass(frozen=True)
class ThresholdLine:
    """How one model's operating threshold was chosen (settings.threshold_choices)."""

    model: str
    threshold: float | None
    chosen: bool
    fixed: bool  # eval.threshold-rule = fixed: listed for its recalibration, not chosen
    reason: str
    sites: str  # comma-separated
    sensitivity: float | None  # pooled over the validation cases, at the threshold
    specificity: float | None
    recalibration: RecalibrationFit | None  # None: none was asked for


@dataclass(frozen=True)
class SitesSection:
    segmentation: bool
    loso: bool
    level_pct: str
    threshold_text: str
    rows: tuple[SiteRow, ...]
    missing: str  # joined sites without a row, comma-separated; "" when none
    choices: tuple[ThresholdLine, ...] = ()
    recalibrated: bool = False  # some row also has its calibration after recalibration

    @property
    def choices_caption(self) -> str:
        """The caption of the threshold-choice table."""
        recal = any(c.recalibration is not None for c in self.choices)
        if all(c.fixed for c in self.choices):
            return (
                "Recalibration, fitted on validation data only (never the test split); "
                "operating thresholds fixed"
            )
        what = "Operating thresholds and recalibration" if recal else "Operating thresholds"
        return f"{what}, chosen on validation data only (never the test split)"


def _threshold_line(choice: Mapping[str, Any]) -> ThresholdLine:
    t = finite(choice.get("threshold"))
    at = next((c for c in records(choice.get("candidates")) if finite(c.get("threshold")) == t), {})
    return ThresholdLine(
        model=text(choice.get("model")),
        threshold=t,
        chosen=bool(choice.get("chosen")),
        fixed=choice.get("rule") == "fixed",
        reason=text(choice.get("reason")),
        sites=", ".join(str(x) for x in choice.get("sites") or []),
        sensitivity=finite(at.get("sensitivity")),
        specificity=finite(at.get("specificity")),
        recalibration=read_fit(choice),
    )


def skipped_text(row: Mapping[str, Any]) -> str:
    """'skipped cases: N (id, id, ...)' for a row whose site left bad cases out, else ''."""
    skipped = mapping(row.get("skipped_cases"))
    n = int(skipped.get("n") or 0)
    if not n:
        return ""
    ids = [str(i) for i in skipped.get("ids") or []]
    more = ", \u2026" if 0 < len(ids) < n else ""
    return f"skipped cases: {n}" + (f" ({', '.join(ids)}{more})" if ids else "")


def adaptation_text(row: Mapping[str, Any]) -> str:
    """How a site adapted the model before scoring it, for display; "" when it did not."""
    adaptation = str(row.get("adaptation") or "none")
    return "" if adaptation == "none" else adaptation.replace("-", " ")


def _drift(row: Mapping[str, Any]) -> Drift:
    d = mapping(row.get("drift"))
    return Drift(
        finite(d.get("frechet_relative")), finite(d.get("wasserstein1")), finite(d.get("psi"))
    )


def _classification(ctx: Context, row: Mapping[str, Any]) -> ClassificationCells:
    op = ctx.operating_table(row)
    cal = mapping(row.get("calibration"))
    return ClassificationCells(
        prevalence=finite(row.get("prevalence")),
        auc=estimate(row.get("auc")),
        sensitivity=estimate(op.get("sensitivity")),
        specificity=estimate(op.get("specificity")),
        ppv=estimate(op.get("ppv")),
        npv=estimate(op.get("npv")),
        slope=estimate(cal.get("slope")),
        citl=estimate(cal.get("citl")),
        ece=finite(cal.get("ece")),
        brier=finite(cal.get("brier")),
        drift=_drift(row),
    )


def _segmentation(row: Mapping[str, Any]) -> SegmentationCells:
    dice = mapping(row.get("dice"))
    return SegmentationCells(
        dice=estimate(dice),
        median=finite(dice.get("median")),
        q1=finite(dice.get("q1")),
        q3=finite(dice.get("q3")),
        sd=finite(dice.get("sd")),
        hd95_mean=finite(get(row, "hd95_mm", "mean")),
        hd95_cases=text(mapping(row.get("hd95_mm")).get("n", 0)),
        drift=_drift(row),
    )


def _row(ctx: Context, row: Mapping[str, Any]) -> SiteRow:
    insufficient = bool(row.get("insufficient"))
    ident = RowIdent(
        site=text(row.get("site")),
        model=text(row.get("model")),
        role=text(row.get("role")),
        all_cases=row.get("split") == "all",
        adaptation=adaptation_text(row),
        n=text(row.get("n")),
        skipped=skipped_text(row),
    )
    return SiteRow(
        ident=ident,
        flags=ctx.flags_of(row.get("site"), row.get("model")),
        insufficient=insufficient,
        n_pos=text(row.get("n_pos")),
        n_neg=text(row.get("n_neg")),
        classification=None if insufficient or ctx.segmentation else _classification(ctx, row),
        segmentation=_segmentation(row) if ctx.segmentation and not insufficient else None,
    )


def read_sites(ctx: Context) -> SitesSection:
    in_rows = {text(r.get("site")) for r in ctx.rows}
    missing = [n for n in (text(s.get("name")) for s in ctx.joined) if n not in in_rows]
    return SitesSection(
        segmentation=ctx.segmentation,
        loso=ctx.loso,
        level_pct=ctx.level_pct,
        threshold_text=ctx.threshold_text,
        rows=tuple(_row(ctx, r) for r in ctx.rows),
        missing=", ".join(missing),
        choices=tuple(_threshold_line(c) for c in ctx.choices),
        recalibrated=any(
            isinstance(get(r, "calibration", "recalibrated"), Mapping) for r in ctx.rows
        ),
    )
