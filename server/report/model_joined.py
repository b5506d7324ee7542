"""The report's ``sites_joined``: the site nodes that joined the run, with the summary of
how each site's images were acquired (``server.sites.SiteInfo``,
``common.acquisition.acquisition_summary``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from server.report.model_base import (
    SITE,
    Count,
    Omittable,
    PositiveCount,
    ReportModel,
    Sha256Hex,
)

AcquisitionCounts = dict[str, PositiveCount]
"""Number of cases per recorded value."""


class AcquisitionRange(ReportModel):
    """Range of a numeric acquisition field over the site's cases that record it."""

    n: PositiveCount = Field(description="Cases that record the field.")
    min: float = Field(description="Smallest value.")
    median: float = Field(description="Median value.")
    max: float = Field(description="Largest value.")


class AcquisitionSummary(ReportModel):
    """Acquisition summary of the site's cases (common.acquisition.acquisition_summary),
    from manifest columns and DICOM headers (a manifest column wins). Aggregates only:
    counts per value and min/median/max ranges, never a per-case value. A field no case
    records is absent; {} when the site sent none."""

    n_cases: Count = Field(description="Cases in the site's manifest.")
    vendor: Omittable[AcquisitionCounts] = Field(
        None,
        description="Cases per scanner vendor (DICOM Manufacturer or manifest column vendor).",
    )
    scanner_model: Omittable[AcquisitionCounts] = Field(
        None,
        description="Cases per scanner model (DICOM ManufacturerModelName or column "
        "scanner_model).",
    )
    kernel: Omittable[AcquisitionCounts] = Field(
        None,
        description="Cases per reconstruction kernel (DICOM ConvolutionKernel or column kernel).",
    )
    slice_thickness_mm: Omittable[AcquisitionRange] = Field(
        None,
        description="Slice thickness in mm (DICOM SliceThickness or column slice_thickness_mm).",
    )
    kvp: Omittable[AcquisitionRange] = Field(
        None, description="Tube voltage in kVp (DICOM KVP or column kvp; CT)."
    )
    field_strength_t: Omittable[AcquisitionRange] = Field(
        None,
        description="Magnetic field strength in tesla (DICOM MagneticFieldStrength or column "
        "field_strength_t; MRI).",
    )
    contrast_delay_s: Omittable[dict[str, AcquisitionRange]] = Field(
        None,
        description="Contrast timing per channel: seconds after bolus start (DICOM "
        "AcquisitionTime - ContrastBolusStartTime, or column <channel>_delay_s).",
    )


class SiteJoined(ReportModel):
    """A site node that joined the federation (server.federation.SiteInfo)."""

    node_id: Annotated[str, Field(pattern=r"^[0-9]+$")] = Field(
        description="Flower node id (unsigned 64-bit integer) as a decimal string, so JSON "
        "readers keep every digit."
    )
    name: str = Field(description=SITE)
    role: Literal["train", "external"] = Field(
        description="train: a training site; external: designated external "
        "(federation.external-sites)."
    )
    n_train: Count = Field(description="Training cases at the site.")
    n_test: Count = Field(description="Test cases at the site.")
    n_val: Omittable[Count] = Field(
        None,
        description='Validation cases at the site (query reply key "n-val"): never trained '
        "on, they select the model and its operating threshold, so that neither uses the test "
        "split. 0 from a site that sent no count; absent in reports from before it was "
        "recorded.",
    )
    manifest_sha256: Sha256Hex = Field(description="SHA-256 (hex) of the site's manifest file.")
    acquisition: Omittable[AcquisitionSummary] = Field(
        None,
        description="How the site's images were acquired: counts per vendor, scanner model "
        "and kernel, and ranges of slice thickness, kVp, field strength and contrast timing "
        '(query reply key "acquisition"). Optional: absent in reports from before it was '
        "recorded.",
    )
