"""Where the model looks (``sites[].saliency``, eval.saliency = true): per site and model
the share of the Grad-CAM saliency inside the lesion, the chance level and their ratio; and
the same in the liver outside the lesion where the site sent it (``saliency.liver``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.report.html.format import finite
from server.report.html.view_context import Context
from server.report.html.view_read import text

__all__ = ["LiverRow", "SaliencyRow", "SaliencySection", "read_saliency"]


@dataclass(frozen=True)
class LiverRow:
    """The saliency share in the liver outside the lesion against its chance level."""

    in_liver: float | None
    chance: float | None
    ratio: float | None  # in_liver / chance; None when the chance level is 0
    n: str  # cases used (those with a liver mask)


@dataclass(frozen=True)
class SaliencyRow:
    """One site's evaluation of one model: its saliency share in the lesion against chance."""

    site: str
    model: str
    role: str
    in_lesion: float | None  # mean share of the saliency inside the lesion mask
    chance: float | None  # mean share of the image the lesion covers
    ratio: float | None  # in_lesion / chance; None when the chance level is 0
    n: str  # cases used
    liver: LiverRow | None  # the liver outside the lesion; None: the site sent none


@dataclass(frozen=True)
class SaliencySection:
    rows: tuple[SaliencyRow, ...]


def _row(row: Mapping[str, object], block: Mapping[str, object]) -> SaliencyRow:
    return SaliencyRow(
        site=text(row.get("site")),
        model=text(row.get("model")),
        role=text(row.get("role")),
        in_lesion=finite(block.get("in_lesion")),
        chance=finite(block.get("chance")),
        ratio=finite(block.get("ratio")),
        n=text(block.get("n"), "n/a"),
        liver=_liver(liver) if isinstance(liver := block.get("liver"), Mapping) else None,
    )


def _liver(block: Mapping[str, object]) -> LiverRow:
    return LiverRow(
        in_liver=finite(block.get("in_liver")),
        chance=finite(block.get("chance")),
        ratio=finite(block.get("ratio")),
        n=text(block.get("n"), "n/a"),
    )


def read_saliency(ctx: Context) -> SaliencySection | None:
    """The rows of the per-site table that have saliency, in their order; None when none
    has (the run did not ask for it, or no site sent it): no section."""
    rows = tuple(
        _row(r, block) for r in ctx.rows if isinstance(block := r.get("saliency"), Mapping)
    )
    return SaliencySection(rows) if rows else None
