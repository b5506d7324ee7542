"""The page's view model: typed, read-only values built from the report document.

``read_page(report)`` is where the ``report.json`` dict is read (through the ``view_*``
modules, one per part of the page); the templates see only the ``Page`` it returns.
Every missing or malformed value is resolved here once, and everything the page shows
that needs computing (site order and colours, flag numbers, the operating-threshold
table, forest rows, notes, the charts) is computed here, so the templates only place
values, format numbers and choose between fixed texts.

- ``view_read``: reading helpers and ``Estimate``;
- ``view_context``: page-wide facts (design, level, flag numbering, site colours);
- ``view_summary``: masthead, reading guide, summary cards, flags;
- ``view_training_noise``: several seeds combined (``--seeds N``);
- ``view_sites``: the per-site table and the threshold choices;
- ``view_saliency``: where the model looks (Grad-CAM saliency in the lesion);
- ``view_recalibration``: each model's recalibration, and calibration before and after;
- ``view_forest``: the forest plots;
- ``view_pooled``: internal vs external (difference, gaps, folds);
- ``view_lesion_type``: task lesion-type's three-way view;
- ``view_curves``: ROC curves, reliability diagrams, drift vs degradation;
- ``view_matrix``: the model x site matrix;
- ``view_provenance``: privacy, provenance and the footer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.report.html.charts.svg import Ids
from server.report.html.view_context import read_context
from server.report.html.view_curves import (
    Calibration,
    DriftSection,
    RocSection,
    read_calibration,
    read_drift,
    read_roc,
)
from server.report.html.view_forest import ForestSection, read_forest
from server.report.html.view_lesion_type import LesionTypeSection, read_lesion_type
from server.report.html.view_matrix import Matrix, read_matrix
from server.report.html.view_pooled import InternalExternal, read_internal_external
from server.report.html.view_provenance import (
    Footer,
    Privacy,
    Provenance,
    read_footer,
    read_privacy,
    read_provenance,
)
from server.report.html.view_saliency import SaliencySection, read_saliency
from server.report.html.view_sites import SitesSection, read_sites
from server.report.html.view_summary import (
    FlagItem,
    Guide,
    Header,
    Summary,
    read_flags,
    read_guide,
    read_header,
    read_summary,
)
from server.report.html.view_training_noise import TrainingNoiseSection, read_training_noise

__all__ = ["Page", "read_page"]


@dataclass(frozen=True)
class Page:
    """Everything the page shows, one attribute per section, in page order."""

    header: Header
    guide: Guide
    summary: Summary
    training_noise: TrainingNoiseSection | None  # None: a single run
    flags: tuple[FlagItem, ...]
    sites: SitesSection
    saliency: SaliencySection | None  # None: no site row has saliency
    forest: ForestSection
    internal_external: InternalExternal
    lesion_type: LesionTypeSection | None  # None: a task other than lesion-type
    roc: RocSection
    calibration: Calibration
    drift: DriftSection
    matrix: Matrix
    privacy: Privacy | None  # None: the run had no differential privacy
    provenance: Provenance
    footer: Footer


def read_page(report: Mapping[str, Any]) -> Page:
    """The view model of ``report`` (a ``report.json`` document)."""
    ctx = read_context(report)
    ids = Ids()  # one counter for the page: the charts' element ids stay unique
    return Page(
        header=read_header(ctx),
        guide=read_guide(ctx),
        summary=read_summary(ctx),
        training_noise=read_training_noise(ctx),
        flags=read_flags(ctx),
        sites=read_sites(ctx),
        saliency=read_saliency(ctx),
        forest=read_forest(ctx, ids),
        internal_external=read_internal_external(ctx),
        lesion_type=read_lesion_type(ctx),
        roc=read_roc(ctx, ids),
        calibration=read_calibration(ctx, ids),
        drift=read_drift(ctx, ids),
        matrix=read_matrix(ctx),
        privacy=read_privacy(ctx),
        provenance=read_provenance(ctx),
        footer=read_footer(ctx),
    )
