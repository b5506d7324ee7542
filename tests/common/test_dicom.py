"""DICOM series folders as image sources: loading, HU, geometry, metadata, broken series."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.acquisition import acquisition_summary
from common.config_sections import DataConfig
from common.data import load_split
from common.dicom import DicomSeriesError, acquisition_metadata, read_series
from common.images import image_geometry, load_image
from common.manifest import parse_manifest
from common.site_files import inspect_site
from tests.dicom_series import (
    ct_volume,
    make_mixed_site,
    ras_affine,
    write_ct_series,
    write_nifti_volume,
)

CHANNELS = ("ct",)
TASK = "lesion-malignancy"


def test_series_loads_in_hu_with_the_nifti_affine(tmp_path: Path) -> None:
    hu = ct_volume()
    write_ct_series(tmp_path / "series", hu)
    write_nifti_volume(tmp_path / "volume.nii.gz", hu)
    dcm, nii = load_image(tmp_path / "series"), load_image(tmp_path / "volume.nii.gz")
    # RescaleSlope 0.5 / RescaleIntercept -1024 are applied: the values are HU again
    assert tuple(dcm.shape) == hu.shape
    np.testing.assert_array_equal(np.asarray(dcm), hu.astype(np.float32))
    np.testing.assert_allclose(np.asarray(dcm.affine), ras_affine((0.8, 0.7, 2.0), (-10, -20, 30)))
    np.testing.assert_allclose(np.asarray(dcm.affine), np.asarray(nii.affine), atol=1e-6)


def test_series_and_nifti_give_the_same_tensor_through_the_site_pipeline(tmp_path: Path) -> None:
    site = make_mixed_site(tmp_path, n_pairs=2)
    manifest, problems = inspect_site(site, CHANNELS, TASK, spatial_dims=3)
    assert problems == []
    cfg = DataConfig(
        channels=CHANNELS, spatial_dims=3, roi_size=16, spacing_mm=1.0, window_min=-150.0
    )
    split = load_split(manifest, "train", cfg, TASK)
    assert split.case_ids == ("dcm-0", "nii-0", "dcm-1", "nii-1")
    for i in (0, 2):
        dcm, nii = split.images[i], split.images[i + 1]
        assert dcm.shape == (1, 16, 16, 8)
        assert float(dcm.std()) > 0.01  # real image content, not padding
        torch.testing.assert_close(dcm, nii, atol=1e-5, rtol=0)
        torch.testing.assert_close(split.masks[i], split.masks[i + 1])


def test_windowing_sees_hounsfield_units(tmp_path: Path) -> None:
    """A series of constant 50 HU maps to (50 + 150) / 400 = 0.5 in the default window."""
    hu = np.full((16, 16, 4), 50, np.int16)
    write_ct_series(tmp_path / "s", hu)
    img = load_image(tmp_path / "s")
    assert float(img.min()) == float(img.max()) == 50.0
    cfg = DataConfig()
    assert (50.0 - cfg.window_min) / (cfg.window_max - cfg.window_min) == 0.5


def test_geometry_and_acquisition_come_from_the_headers(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", ct_volume(), tags={"ConvolutionKernel": ["FC18", "LUNG"]})
    series = read_series(tmp_path / "s")
    assert series.shape == (24, 20, 6) and series.spacing == pytest.approx((0.8, 0.7, 2.0))
    assert [f.name for f in series.files] == [f"slice{k:03d}.dcm" for k in range(6)]
    geo = image_geometry(tmp_path / "s")
    assert geo.shape == (24, 20, 6) and geo.spacing == pytest.approx((0.8, 0.7, 2.0))
    assert acquisition_metadata(tmp_path / "s", "arterial") == {
        "vendor": "GE MEDICAL SYSTEMS",
        "scanner_model": "Revolution CT",
        "kernel": "FC18/LUNG",
        "slice_thickness_mm": "2",
        "kvp": "120",
        "modality": "CT",
        "contrast_agent": "Iomeprol",
        "arterial_delay_s": "35.5",  # 10:15:35.5 - 10:15:00
    }


def test_mr_field_strength_is_read(tmp_path: Path) -> None:
    write_ct_series(
        tmp_path / "mr", ct_volume(), tags={"MagneticFieldStrength": "1.5", "Modality": "MR"}
    )
    meta = acquisition_metadata(tmp_path / "mr")
    assert meta["field_strength_t"] == "1.5" and meta["modality"] == "MR"
    assert "_delay_s" not in "".join(meta)  # no channel given: no timing key


def _rewrite_manifest(site: Path, extra: dict[str, dict[str, str]]) -> None:
    path = site / "manifest.csv"
    rows = list(csv.DictReader(path.read_text().splitlines()))
    fields = list(rows[0]) + sorted({k for v in extra.values() for k in v})
    for row in rows:
        row.update(extra.get(row["case_id"], {}))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def test_dicom_metadata_fills_the_case_and_manifest_columns_win(tmp_path: Path) -> None:
    site = make_mixed_site(tmp_path, n_pairs=2)
    _rewrite_manifest(site, {"dcm-0": {"vendor": "Canon", "kvp": ""}, "nii-0": {"kernel": "soft"}})
    manifest, problems = parse_manifest(site, CHANNELS, TASK)
    assert problems == []
    meta = {c.case_id: dict(c.metadata) for c in manifest.cases}
    assert meta["dcm-0"]["vendor"] == "Canon"  # the manifest cell wins
    assert meta["dcm-0"]["kvp"] == "120"  # an empty cell does not
    assert meta["dcm-1"]["vendor"] == "GE MEDICAL SYSTEMS"
    assert meta["dcm-1"]["ct_delay_s"] == "35.5"
    assert meta["nii-0"]["kernel"] == "soft" and meta["nii-0"]["vendor"] == ""
    summary = acquisition_summary(manifest.cases)
    assert summary["n_cases"] == 4
    assert summary["vendor"] == {"Canon": 1, "GE MEDICAL SYSTEMS": 1}
    assert summary["kernel"] == {"STANDARD": 2, "soft": 1}
    assert summary["kvp"] == {"n": 2, "min": 120.0, "median": 120.0, "max": 120.0}
    assert summary["contrast_delay_s"] == {"ct": {"n": 2, "min": 35.5, "median": 35.5, "max": 35.5}}
    assert "field_strength_t" not in summary


def test_broken_series_are_named_per_case(tmp_path: Path) -> None:
    site = make_mixed_site(tmp_path, n_pairs=4)
    (site / "dicom/case0/slice002.dcm").unlink()  # a missing slice
    (site / "dicom/case1/notes.txt").write_text("not an image")
    shutil.rmtree(site / "dicom/case2")  # uneven slice positions
    write_ct_series(site / "dicom/case2", ct_volume(), positions=[0, 2, 4, 7, 9, 11])
    for f in (site / "dicom/case3").iterdir():  # a folder of nothing but non-DICOM
        f.write_bytes(b"\0" * 200)
    _, problems = inspect_site(site, CHANNELS, TASK, spatial_dims=3)
    by_case = {p.case_id: p for p in problems}
    assert set(by_case) == {"dcm-0", "dcm-1", "dcm-2", "dcm-3"}
    assert all(p.field == "image_ct" for p in problems)
    assert "inconsistent slice spacing" in by_case["dcm-0"].message
    assert "4 mm between slice001.dcm and slice003.dcm" in by_case["dcm-0"].message
    assert "not DICOM file(s): notes.txt" in by_case["dcm-1"].message
    assert "3 mm between slice002.dcm and slice003.dcm" in by_case["dcm-2"].message
    assert "not DICOM file(s): slice000.dcm" in by_case["dcm-3"].message
    with pytest.raises(DicomSeriesError, match="missing or extra slice"):
        load_image(site / "dicom/case0")  # the loader refuses what the check refuses


def test_mixed_series_and_duplicate_slices_are_rejected(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "a", ct_volume(shape=(8, 8, 3)))
    write_ct_series(tmp_path / "b", ct_volume(shape=(8, 8, 3)))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src in ("a", "b"):
        for f in (tmp_path / src).iterdir():
            shutil.copy(f, mixed / f"{src}-{f.name}")
    with pytest.raises(DicomSeriesError, match="2 series") as err:
        read_series(mixed)
    assert "duplicate InstanceNumber(s) [1, 2, 3]" in str(err.value)


def test_single_slice_series_runs_the_2d_pipeline_like_a_nifti_slice(tmp_path: Path) -> None:
    site = tmp_path / "site-2d"
    hu = ct_volume(shape=(40, 40, 1))
    write_ct_series(site / "dicom/c0", hu)
    write_nifti_volume(site / "c0.nii.gz", hu)
    mask = np.zeros(hu.shape, np.uint8)
    mask[15:20, 15:20, 0] = 1
    write_nifti_volume(site / "m0.nii.gz", mask)
    (site / "manifest.csv").write_text(
        "case_id,image_ct,mask,label,split\n"
        "d,dicom/c0,m0.nii.gz,1,train\nn,c0.nii.gz,m0.nii.gz,1,train\n"
    )
    manifest, problems = inspect_site(site, CHANNELS, TASK, spatial_dims=2)
    assert problems == []
    assert tuple(load_image(site / "dicom/c0").shape) == (40, 40, 1)
    cfg = DataConfig(channels=CHANNELS, spatial_dims=2, roi_size=16, spacing_mm=1.0)
    split = load_split(manifest, "train", cfg, TASK)
    assert split.images.shape == (2, 1, 16, 16) and float(split.images[0].std()) > 0.01
    torch.testing.assert_close(split.images[0], split.images[1], atol=1e-5, rtol=0)
