"""The phantom's hospitals with their images as DICOM series, as a PACS would hold them.

``write_dicom_site(site_dir, out_dir)`` rewrites one phantom site (``simulations.phantom``,
NIfTI) as a site whose image cells name DICOM series folders::

    out_dir/<site>/manifest.csv
    out_dir/<site>/dicom/<case_id>/<phase>/<n>.dcm   one CT slice per file
    out_dir/<site>/masks/<case_id>.nii.gz            the masks, copied
    out_dir/<site>/livers/<case_id>.nii.gz           the liver masks, copied (if any)

Each series holds the same HU values on the same voxel grid as its NIfTI file, and its
headers carry the acquisition the phantom's manifest recorded (vendor, model, kernel, slice
thickness, kVp, contrast timing), so those columns are left out of the new manifest: the
site reads them from the headers (``common.dicom.acquisition_metadata``). UIDs are derived
from the source files' content, so the same phantom gives the same UIDs, and a PACS that
already holds a series is sent the same instances again.

``dicomweb_site(dicom_site, out_dir)`` is the same site once more with every image cell
naming its series on a DICOMweb server instead (``dicomweb:STUDY_UID/SERIES_UID``), once the
series of ``dicom_files(dicom_site)`` are stored there.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.dicomweb import PREFIX
from simulations.phantom import MANIFEST_CSV, PHASES
from simulations.phantom_folder import MASK_COLUMNS

# manifest column -> DICOM keyword: the acquisition the series' headers carry
HEADER_COLUMNS = {
    "vendor": "Manufacturer",
    "scanner_model": "ManufacturerModelName",
    "kernel": "ConvolutionKernel",
    "slice_thickness_mm": "SliceThickness",
    "kvp": "KVP",
}
BOLUS_START_S = 10 * 3600  # contrast injected at 10:00:00; each phase acquired its delay later
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dicom_time(seconds: float) -> str:
    """Seconds after midnight as a DICOM TM value (``HHMMSS`` or ``HHMMSS.F``)."""
    whole = int(seconds)
    text = (dt.datetime(2000, 1, 1) + dt.timedelta(seconds=whole)).strftime("%H%M%S")
    frac = round(seconds - whole, 3)
    return text + (f"{frac:.3f}"[1:].rstrip("0") if frac else "")


def uid(*parts: str) -> str:
    """A UID that depends only on ``parts``: ``2.25.`` and a name-based (version 5) UUID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(parts)).int}"


def write_series(
    folder: Path,
    hu: np.ndarray,
    affine: np.ndarray,
    tags: Mapping[str, Any],
    study_uid: str,
    series_uid: str,
) -> list[Path]:
    """One file per slice of ``hu`` (X, Y, Z; int16 HU) on the NIfTI grid ``affine``.

    Signed 16-bit pixels with slope 1 and intercept 0 keep every value exactly; ``tags``
    (DICOM keyword -> value) are set on every slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(hu, dtype=np.int16).reshape(hu.shape[0], hu.shape[1], -1)
    # the NIfTI grid as it is, even where rows x columns points against the slice order (the
    # phantom's): MONAI's reader takes the slice axis from the positions, so the series
    # loads with the NIfTI file's affine and array, and the NIfTI mask stays on its grid
    lps = LPS_FROM_RAS @ np.asarray(affine, dtype=np.float64)
    col_mm, row_mm = (float(np.linalg.norm(lps[:3, i])) for i in (0, 1))
    orientation = [*(lps[:3, 0] / col_mm), *(lps[:3, 1] / row_mm)]
    files = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(uid(series_uid, str(k)))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(row_mm), _ds(col_mm)]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "HU"
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).tobytes()
        path = folder / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    return f"{float(value):.6g}"


def _series_tags(row: Mapping[str, str], phase: int, name: str) -> dict[str, Any]:
    """The acquisition of one phase of a case, from the phantom manifest's row."""
    tags: dict[str, Any] = {
        keyword: row[column] for column, keyword in HEADER_COLUMNS.items() if row.get(column)
    }
    tags.update(
        PatientID=row["case_id"],
        PatientName=row["case_id"],
        SeriesNumber=phase + 1,
        SeriesDescription=name,
    )
    delay = row.get(f"{name}_delay_s", "")
    if delay:
        tags["ContrastBolusStartTime"] = dicom_time(BOLUS_START_S)
        tags["AcquisitionTime"] = dicom_time(BOLUS_START_S + float(delay))
    return tags


def write_dicom_site(site_dir: Path, out_dir: Path) -> Path:
    """The phantom site ``site_dir`` with its images as DICOM series, in ``out_dir/<site>``
    (which must not exist yet); returns that folder."""
    site_dir, target = Path(site_dir), Path(out_dir) / Path(site_dir).name
    if target.exists():
        raise FileExistsError(f"{target} exists; refusing to overwrite it")
    raw = (site_dir / MANIFEST_CSV).read_bytes()
    namespace = hashlib.sha256(raw).hexdigest()  # the phantom's scenario, seed and cases
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    header = list(reader.fieldnames or [])
    from_headers = {*HEADER_COLUMNS, *(f"{p}_delay_s" for p in PHASES)}
    columns = [c for c in header if c not in from_headers]
    rows = []
    for row in reader:
        case_id = row["case_id"]
        study = uid(namespace, case_id)
        out = {c: row[c] for c in columns}
        for p, phase in enumerate(PHASES):
            image = site_dir / row[f"image_{phase}"]
            series = uid(namespace, case_id, phase, hashlib.sha256(image.read_bytes()).hexdigest())
            nii: Any = nib.load(str(image))
            folder = Path("dicom") / case_id / phase
            write_series(target / folder, np.asarray(nii.dataobj), nii.affine,
                         _series_tags(row, p, phase), study, series)  # fmt: skip
            out[f"image_{phase}"] = folder.as_posix()
        _copy_masks(row, site_dir, target)
        rows.append(out)
    _write_manifest(target / MANIFEST_CSV, columns, rows)
    return target


def write_dicom_phantom(phantom_dir: Path, out_dir: Path) -> list[Path]:
    """Every site of a phantom folder as ``write_dicom_site`` writes it; the new sites."""
    sites = sorted(p for p in Path(phantom_dir).iterdir() if (p / MANIFEST_CSV).is_file())
    return [write_dicom_site(site, out_dir) for site in sites]


def dicom_files(dicom_site: Path) -> list[Path]:
    """The DICOM files of a site written by ``write_dicom_site``, to store on a PACS."""
    return sorted((Path(dicom_site) / "dicom").rglob("*.dcm"))


def dicomweb_site(dicom_site: Path, out_dir: Path) -> Path:
    """The site ``dicom_site`` with each image cell naming its series on a DICOMweb server
    (``dicomweb:STUDY_UID/SERIES_UID``, from the series' first header), in ``out_dir/<site>``
    with the masks (and liver masks) copied; returns that folder."""
    import pydicom

    dicom_site, target = Path(dicom_site), Path(out_dir) / Path(dicom_site).name
    if target.exists():
        raise FileExistsError(f"{target} exists; refusing to overwrite it")
    with (dicom_site / MANIFEST_CSV).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns, rows = list(reader.fieldnames or []), list(reader)
    for row in rows:
        for column in [c for c in columns if c.startswith("image_")]:
            first = min((dicom_site / row[column]).iterdir())
            ds = pydicom.dcmread(first, stop_before_pixels=True)
            row[column] = f"{PREFIX}{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}"
        _copy_masks(row, dicom_site, target)
    _write_manifest(target / MANIFEST_CSV, columns, rows)
    return target


def _copy_masks(row: Mapping[str, str], source: Path, target: Path) -> None:
    """Copy a case's lesion mask and liver mask (where its row names one), same paths."""
    for column in MASK_COLUMNS:
        if row.get(column):
            (target / row[column]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / row[column], target / row[column])


def _write_manifest(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
