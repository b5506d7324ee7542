"""DICOM series folders as image sources: header checks, geometry, acquisition metadata.

A manifest image cell may name a folder holding one DICOM series (one file per
slice). Before any voxel is loaded, ``read_series`` reads every file's header
(never the pixel data) and rejects a folder that would load wrong: a file that
is not DICOM, several series in one folder, slices that disagree in size,
pixel spacing or orientation, duplicate or missing instance numbers, or
uneven slice positions (a missing slice shows up as a gap twice the step).
Voxels are then loaded by MONAI's ``PydicomReader`` (see
``common.images.SiteImageReader``), which applies RescaleSlope/Intercept (so CT
values are Hounsfield units) and returns the same RAS affine convention as
NIfTI, so orientation, resampling and windowing treat both sources alike.

``acquisition_metadata`` reads the acquisition tags of the first file (in file
name order) of a series; ``common.manifest`` puts them into a case's metadata,
where a non-empty manifest column of the same name wins.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# metadata key -> DICOM keyword (read from the first file of a series)
ACQUISITION_TAGS: dict[str, str] = {
    "vendor": "Manufacturer",
    "scanner_model": "ManufacturerModelName",
    "kernel": "ConvolutionKernel",
    "slice_thickness_mm": "SliceThickness",
    "kvp": "KVP",
    "field_strength_t": "MagneticFieldStrength",
    "modality": "Modality",
    "contrast_agent": "ContrastBolusAgent",
}
# contrast timing: seconds from ContrastBolusStartTime to AcquisitionTime (or SeriesTime)
DELAY_SUFFIX = "_delay_s"
_GEOMETRY_TAGS = (
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
_HEADER_TAGS = [
    *_GEOMETRY_TAGS,
    "SeriesInstanceUID",
    "SliceThickness",
    *ACQUISITION_TAGS.values(),
    "ContrastBolusStartTime",
    "AcquisitionTime",
    "SeriesTime",
]
SPACING_TOLERANCE = 0.01  # relative deviation of a slice gap from the series' step


class DicomSeriesError(ValueError):
    """A DICOM series folder that cannot be loaded correctly; the message says why."""


@dataclass(frozen=True)
class DicomSeries:
    """A checked series: its files in slice order and its voxel grid (array axes X, Y, Z)."""

    folder: Path
    files: tuple[Path, ...]  # in InstanceNumber order, as MONAI stacks them
    shape: tuple[int, int, int]  # (Columns, Rows, slices), the loaded array's spatial shape
    spacing: tuple[float, float, float]  # mm along the array axes


def is_dicom_source(path: Path | str) -> bool:
    """Whether a manifest image cell names a DICOM source (a folder or a ``.dcm`` file)."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() == ".dcm"


def series_files(folder: Path) -> list[Path]:
    """The regular files directly in a series folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file())


def _read_header(path: Path) -> Any:
    """A file's header without pixel data; raises ``InvalidDicomError`` if not DICOM."""
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)


def read_series(folder: Path | str) -> DicomSeries:
    """Read every header of a series folder, check it loads correctly, return its grid.

    Raises ``DicomSeriesError`` naming every problem found.
    """
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = series_files(folder)
    if not files:
        raise DicomSeriesError(f"DICOM series folder {folder} holds no files")
    headers: list[tuple[Path, Any]] = []
    not_dicom: list[str] = []
    for f in files:
        try:
            headers.append((f, _read_header(f)))
        except (InvalidDicomError, OSError, ValueError) as e:
            not_dicom.append(f"{f.name} ({type(e).__name__})")
    problems: list[str] = []
    if not_dicom:
        problems.append(f"not DICOM file(s): {', '.join(not_dicom)}")
    missing = [
        f"{f.name} lacks {', '.join(t for t in _GEOMETRY_TAGS if t not in ds)}"
        for f, ds in headers
        if any(t not in ds for t in _GEOMETRY_TAGS)
    ]
    if missing:
        problems.append("slice(s) without the tags that place them: " + "; ".join(missing))
    if problems or not headers:
        raise DicomSeriesError(_join(folder, problems or ["no DICOM slice"]))
    problems += _consistency(headers)
    if problems:
        raise DicomSeriesError(_join(folder, problems))
    headers.sort(key=lambda h: int(h[1].InstanceNumber))
    step, problems = _slice_step(headers)
    if problems:
        raise DicomSeriesError(_join(folder, problems))
    first = headers[0][1]
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    if step is None:  # a single slice: its thickness is the best guess of the third axis
        step = float(first.get("SliceThickness") or 1.0)
    return DicomSeries(
        folder,
        tuple(f for f, _ in headers),
        (int(first.Columns), int(first.Rows), len(headers)),
        (col_mm, row_mm, step),
    )


def _join(folder: Path, problems: Sequence[str]) -> str:
    return f"DICOM series {folder}: " + "; ".join(problems)


def _consistency(headers: Sequence[tuple[Path, Any]]) -> list[str]:
    """Differences between slices that would make one series several grids."""
    problems: list[str] = []
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers} - {""}
    if len(uids) > 1:
        problems.append(f"{len(uids)} series (SeriesInstanceUID) in one folder; give one per cell")
    first_f, first = headers[0]
    for f, ds in headers[1:]:
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            problems.append(
                f"{f.name} is {ds.Rows}x{ds.Columns}, {first_f.name} {first.Rows}x{first.Columns}"
            )
        if not np.allclose(
            [float(v) for v in ds.PixelSpacing], [float(v) for v in first.PixelSpacing]
        ):
            problems.append(f"{f.name} has PixelSpacing {list(ds.PixelSpacing)}, not ")
            problems[-1] += f"{list(first.PixelSpacing)} as {first_f.name}"
        if not np.allclose(
            [float(v) for v in ds.ImageOrientationPatient],
            [float(v) for v in first.ImageOrientationPatient],
            atol=1e-4,
        ):
            problems.append(f"{f.name} has a different ImageOrientationPatient")
    numbers = [int(ds.InstanceNumber) for _, ds in headers]
    dupes = sorted({n for n in numbers if numbers.count(n) > 1})
    if dupes:
        problems.append(f"duplicate InstanceNumber(s) {dupes}")
    return problems


def _slice_step(headers: Sequence[tuple[Path, Any]]) -> tuple[float | None, list[str]]:
    """The uniform distance between consecutive slices, or the problems that prevent one."""
    if len(headers) < 2:
        return None, []
    iop = np.array([float(v) for v in headers[0][1].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array(
        [np.dot([float(v) for v in ds.ImagePositionPatient], normal) for _, ds in headers]
    )
    gaps = np.diff(pos)
    names = [f.name for f, _ in headers]
    if np.any(np.abs(gaps) < 1e-3):
        i = int(np.argmin(np.abs(gaps)))
        return None, [f"{names[i]} and {names[i + 1]} lie at the same position"]
    if not (np.all(gaps > 0) or np.all(gaps < 0)):
        return None, ["slice positions do not move one way in InstanceNumber order"]
    step = float(np.median(np.abs(gaps)))
    off = np.abs(np.abs(gaps) - step) > max(SPACING_TOLERANCE * step, 1e-3)
    if off.any():
        bad = [
            f"{abs(gaps[i]):.3g} mm between {names[i]} and {names[i + 1]}"
            for i in np.flatnonzero(off)
        ]
        return None, [
            f"inconsistent slice spacing: the series steps {step:.3g} mm but has "
            + ", ".join(bad)
            + " (a missing or extra slice?)"
        ]
    return step, []


def acquisition_metadata(folder: Path | str, channel: str = "") -> dict[str, str]:
    """Acquisition tags of the first DICOM file of a series, as metadata text.

    Keys are those of ``ACQUISITION_TAGS`` that the header holds, and
    ``<channel>_delay_s`` (contrast timing) when both ContrastBolusStartTime and
    AcquisitionTime (or SeriesTime) are present. Returns ``{}`` for a folder
    whose first file cannot be read (``read_series`` reports that).
    """
    from pydicom.errors import InvalidDicomError

    p = Path(folder)
    try:
        files = series_files(p) if p.is_dir() else [p]
        ds = _read_header(files[0])
    except (InvalidDicomError, OSError, ValueError, IndexError):
        return {}
    out: dict[str, str] = {}
    for key, keyword in ACQUISITION_TAGS.items():
        value = ds.get(keyword)
        if value is None or str(value).strip() == "":
            continue
        if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
            value = "/".join(str(v) for v in value)  # e.g. a multi-valued kernel
        out[key] = _number_text(str(value).strip())
    delay = _contrast_delay(ds)
    if delay is not None and channel:
        out[f"{channel}{DELAY_SUFFIX}"] = _number_text(f"{delay:.1f}")
    return out


def _number_text(text: str) -> str:
    """``"120.0"`` -> ``"120"``; other text unchanged."""
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else text


def _contrast_delay(ds: Any) -> float | None:
    """Seconds from contrast bolus start to acquisition, if the header says both."""
    start = _dicom_time(ds.get("ContrastBolusStartTime"))
    acq = _dicom_time(ds.get("AcquisitionTime")) or _dicom_time(ds.get("SeriesTime"))
    if start is None or acq is None:
        return None
    delay = acq - start
    return delay if delay >= 0 else delay + 86400.0  # acquired after midnight


def _dicom_time(value: Any) -> float | None:
    """A DICOM TM value (``HHMMSS.ffffff``, parts optional) as seconds after midnight."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().replace(":", "")
    try:
        whole, _, frac = text.partition(".")
        hh, mm, ss = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
        t = dt.timedelta(hours=hh, minutes=mm, seconds=ss)
        return t.total_seconds() + (float(f"0.{frac}") if frac else 0.0)
    except ValueError:
        return None
