"""The phantom as DICOM series: the same voxels, grid and acquisition as its NIfTI files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from common.cli import main
from common.config import RunConfig
from common.data import load_split
from common.dicom import read_series
from common.images import load_image
from common.manifest import read_manifest
from common.site_files import inspect_site
from simulations.phantom_dicom import dicom_files, dicom_time, dicomweb_site, write_dicom_site


def test_dicom_time() -> None:
    assert dicom_time(36000) == "100000" and dicom_time(36037.5) == "100037.5"


def test_the_dicom_phantom_loads_as_the_nifti_phantom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["phantom", "--scenario", "liver-2", "--out", str(tmp_path / "nii"),
                 "--dicom", str(tmp_path / "dcm")]) == 0  # fmt: skip
    assert "as DICOM series (2 sites)" in capsys.readouterr().out
    nii_site, dcm_site = tmp_path / "nii" / "site-b", tmp_path / "dcm" / "site-b"
    cfg = RunConfig()
    dcm, problems = inspect_site(dcm_site, cfg.data.channels, cfg.task)
    assert problems == [] and len(dicom_files(dcm_site)) == 3 * 40
    nii = read_manifest(nii_site, cfg.data.channels, cfg.task)
    # acquisition columns left out of the manifest come back from the headers
    header = (dcm_site / "manifest.csv").read_text().splitlines()[0]
    assert "vendor" not in header and "arterial_delay_s" not in header
    for a, b in zip(nii.cases, dcm.cases, strict=True):
        assert (a.case_id, a.label, a.split) == (b.case_id, b.label, b.split)
        assert {**a.metadata, "modality": "CT"} == dict(b.metadata)
    case = dcm.cases[0]
    series = read_series(case.images[0])
    assert series.shape == (100, 100, 1) and series.spacing[:2] == pytest.approx((1.8, 1.8))
    voxels, grid = load_image(case.images[0]), load_image(nii.cases[0].images[0])
    np.testing.assert_array_equal(np.asarray(voxels), np.asarray(grid))
    # the same grid (a single slice has no through-plane spacing: MONAI says 1 mm)
    in_plane = [0, 1, 3]
    np.testing.assert_allclose(
        np.asarray(voxels.affine)[:, in_plane], np.asarray(grid.affine)[:, in_plane], atol=1e-4
    )
    a_split, b_split = (load_split(m, "test", cfg.data, cfg.task) for m in (nii, dcm))
    assert a_split.case_ids == b_split.case_ids
    torch.testing.assert_close(a_split.images, b_split.images, atol=1e-5, rtol=0)
    assert torch.equal(a_split.masks, b_split.masks)
    assert a_split.livers is not None and b_split.livers is not None  # copied, same grid
    assert torch.equal(a_split.livers, b_split.livers)


def test_uids_follow_the_content_and_the_dicomweb_site_names_them(tmp_path: Path) -> None:
    from simulations.phantom import generate_phantom
    from simulations.scenario import load_scenario

    root = generate_phantom(load_scenario("liver-2"), tmp_path / "nii")
    first, again = (write_dicom_site(root / "site-a", tmp_path / out) for out in ("x", "y"))
    files = dicom_files(first)
    assert [f.relative_to(first) for f in files] == [
        f.relative_to(again) for f in dicom_files(again)
    ]
    assert files[0].read_bytes() == (again / files[0].relative_to(first)).read_bytes()
    with pytest.raises(FileExistsError):
        write_dicom_site(root / "site-a", tmp_path / "x")
    web = dicomweb_site(first, tmp_path / "web")
    rows = list(csv.DictReader((web / "manifest.csv").read_text().splitlines()))
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)  # case 1, arterial
    assert rows[0]["image_arterial"] == f"dicomweb:{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}"
    assert (web / rows[0]["mask"]).read_bytes() == (first / rows[0]["mask"]).read_bytes()
    liver = rows[0]["liver_mask"]
    assert liver and (web / liver).read_bytes() == (root / "site-a" / liver).read_bytes()
    studies = {r["image_arterial"].split("/")[0] for r in rows}
    assert len(studies) == len(rows)  # one study per case, its three phases in it
    assert rows[0]["image_portal"].split("/")[0] == rows[0]["image_arterial"].split("/")[0]
