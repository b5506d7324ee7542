"""Synthetic CT DICOM series (and the same volume as NIfTI) for the image-source tests."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

SLOPE, INTERCEPT = 0.5, -1024.0
TAGS = {
    "Manufacturer": "GE MEDICAL SYSTEMS",
    "ManufacturerModelName": "Revolution CT",
    "ConvolutionKernel": "STANDARD",
    "KVP": "120",
    "ContrastBolusAgent": "Iomeprol",
    "ContrastBolusStartTime": "101500",
    "AcquisitionTime": "101535.5",
}


def ct_volume(shape: tuple[int, int, int] = (24, 20, 6), seed: int = 0) -> np.ndarray:
    """Integer HU values in (X, Y, Z) with a bright blob, distinct along every axis."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    hu = 40 + 3 * x - 2 * y + 5 * z + rng.integers(-10, 10, shape)
    blob = (x - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2 <= 16
    return np.where(blob, hu + 120, hu).astype(np.int16)


def ras_affine(
    spacing: tuple[float, float, float], origin_lps: tuple[float, float, float]
) -> np.ndarray:
    """The NIfTI (RAS) affine of a series with identity orientation in DICOM (LPS)."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (-origin_lps[0], -origin_lps[1], origin_lps[2])
    return affine


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.7, 2.0),
    origin_lps: tuple[float, float, float] = (-10.0, -20.0, 30.0),
    tags: Mapping[str, str | list[str]] | None = None,  # a list: a multi-valued element
    positions: list[float] | None = None,
) -> list[Path]:
    """One file per slice of ``hu`` (X, Y, Z): stored = (HU - intercept) / slope.

    Axial slices, rows along +Y and columns along +X of the patient (LPS), slice
    k at ``origin + positions[k]`` on the z axis (default ``k * spacing[2]``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    stored = np.round((hu.astype(np.float64) - INTERCEPT) / SLOPE).astype(np.uint16)
    zs = positions if positions is not None else [k * spacing[2] for k in range(hu.shape[2])]
    files = []
    for k, dz in enumerate(zs):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = "CT"
        ds.PatientID = "phantom"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [origin_lps[0], origin_lps[1], origin_lps[2] + dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (Y), column spacing (X)
        ds.SliceThickness = spacing[2]
        ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        for keyword, value in {**TAGS, **(tags or {})}.items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k % hu.shape[2]].T).tobytes()
        path = folder / f"slice{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_nifti_volume(
    path: Path,
    array: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.7, 2.0),
    origin_lps: tuple[float, float, float] = (-10.0, -20.0, 30.0),
) -> None:
    """``array`` (X, Y, Z) as NIfTI with the affine equivalent to ``write_ct_series``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, ras_affine(spacing, origin_lps)), str(path))


def make_mixed_site(root: Path, name: str = "site-dicom", n_pairs: int = 2) -> Path:
    """A one-channel (``ct``) 3-D site: each volume once as DICOM series, once as NIfTI."""
    site = root / name
    rows = []
    for i in range(n_pairs):
        hu = ct_volume(seed=i)
        mask = np.zeros(hu.shape, np.uint8)
        mask[10:14, 8:12, 2:4] = 1
        write_nifti_volume(site / f"masks/case{i}.nii.gz", mask)
        write_ct_series(site / f"dicom/case{i}", hu)
        write_nifti_volume(site / f"images/case{i}.nii.gz", hu)
        for kind, image in (("dcm", f"dicom/case{i}"), ("nii", f"images/case{i}.nii.gz")):
            rows.append(
                {
                    "case_id": f"{kind}-{i}",
                    "image_ct": image,
                    "mask": f"masks/case{i}.nii.gz",
                    "label": str(i % 2),
                    "split": "train",
                }
            )
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return site
