"""Every manifest problem gets a named error; nothing is silently dropped."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.manifest import ManifestError, hash_split, list_site_dirs, read_manifest
from common.site_files import check_images, validate_site

CHANNELS = ("arterial", "portal", "delayed")
TASK = "lesion-malignancy"


def rewrite(site: Path, edit: Callable[[list[dict[str, str]]], object]) -> None:
    """Edit the manifest's rows in place (``edit``'s return value is ignored)."""
    path = site / "manifest.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    edit(rows)
    fields = list(rows[0]) if rows else ["case_id"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def problems_of(site: Path, **kw: object) -> list[str]:
    with pytest.raises(ManifestError) as err:
        validate_site(site, CHANNELS, TASK, **kw)  # type: ignore[arg-type]
    return [str(p) for p in err.value.problems]


def test_valid_site_reads_all_cases(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=9)
    m = validate_site(site, CHANNELS, TASK)
    assert [c.case_id for c in m.cases] == [f"site-a-{i:03d}" for i in range(9)]
    assert len(m.split("train")) == 6 and len(m.split("test")) == 3
    assert m.cases[1].label == 1 and m.cases[0].metadata == {"vendor": "test-vendor"}
    assert len(m.sha256) == 64 and m.name == "site-a"
    assert list_site_dirs(site.parent) == [site]


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest.csv.*not found"):
        read_manifest(tmp_path, CHANNELS, TASK)


def test_missing_column_names_it(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=3)
    rewrite(site, lambda rows: [r.pop("image_portal") for r in rows])
    with pytest.raises(ManifestError, match="missing column.*image_portal"):
        read_manifest(site, CHANNELS, TASK)


def test_missing_file(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=3)
    (site / "images" / "site-a-001_portal.nii.gz").unlink()
    (msg,) = problems_of(site)
    assert "row 2" in msg and "site-a-001" in msg and "image_portal" in msg
    assert "file not found" in msg


def test_duplicate_id_label_range_and_split_all_reported(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=4)

    def edit(rows: list[dict[str, str]]) -> None:
        rows[1]["case_id"] = rows[0]["case_id"]
        rows[2]["label"] = "2"
        rows[3]["split"] = "holdout"

    rewrite(site, edit)
    with pytest.raises(ManifestError) as err:
        read_manifest(site, CHANNELS, TASK)
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "duplicate of row 1" in text
    assert "'2' is out of range: use 0 (benign) or 1 (malignant)" in text
    assert "'holdout' is not a valid split; use one of 'train', 'val', 'test'" in text


def test_empty_label_is_an_error_for_classification_only(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2)
    rewrite(site, lambda rows: rows[0].update(label=""))
    with pytest.raises(ManifestError, match="label: empty"):
        read_manifest(site, CHANNELS, TASK)
    m = read_manifest(site, CHANNELS, "lesion-segmentation")
    assert m.cases[0].label is None


def test_unreadable_image(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2)
    (site / "images" / "site-a-000_arterial.nii.gz").write_bytes(b"not a nifti")
    (msg,) = problems_of(site)
    assert "image_arterial" in msg and "unreadable image" in msg


def _save(path: Path, arr: np.ndarray) -> None:
    """Replace a file of a ``site_factory`` site, on the site's grid (1.5, 1.5, 2.5 mm)."""
    nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.5, 2.5, 1.0])), str(path))


def test_nan_voxels(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2, size=16)
    arr = np.zeros((16, 16, 1), np.float32)
    arr[3, 4, 0] = np.nan
    _save(site / "images" / "site-a-001_delayed.nii.gz", arr)
    (msg,) = problems_of(site)
    assert "image_delayed" in msg and "1 NaN/Inf voxel(s)" in msg


def test_shape_mismatch_and_channel_count(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2, size=16)
    _save(site / "images" / "site-a-000_portal.nii.gz", np.zeros((12, 16, 1), np.int16))
    _save(site / "images" / "site-a-001_portal.nii.gz", np.zeros((16, 16, 1, 3), np.int16))
    probs = problems_of(site)
    assert any("channels and mask differ in shape" in p and "site-a-000" in p for p in probs)
    assert any("has 3 components" in p and "site-a-001" in p for p in probs)


def test_volume_when_slices_expected(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=1, size=16)
    _save(site / "images" / "site-a-000_arterial.nii.gz", np.zeros((16, 16, 5), np.int16))
    assert any("data.spatial-dims = 2" in p for p in problems_of(site))


def test_mask_must_be_binary_and_non_empty(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2, size=16)
    _save(site / "masks" / "site-a-000.nii.gz", np.full((16, 16, 1), 2, np.uint8))
    _save(site / "masks" / "site-a-001.nii.gz", np.zeros((16, 16, 1), np.uint8))
    probs = problems_of(site)
    assert any("not binary" in p and "site-a-000" in p for p in probs)
    assert any("is empty" in p and "site-a-001" in p for p in probs)


def _with_livers(site: Path, cells: dict[int, str]) -> None:
    """Give the manifest a ``liver_mask`` column: ``cells`` maps a row to its cell, the other
    rows' cells are empty."""

    def edit(rows: list[dict[str, str]]) -> None:
        for i, row in enumerate(rows):
            row["liver_mask"] = cells.get(i, "")

    rewrite(site, edit)


def test_liver_mask_column_is_optional_and_may_be_empty(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=3, size=16)
    assert all(c.liver_mask is None for c in validate_site(site, CHANNELS, TASK).cases)
    # the lesion mask itself is a valid liver mask (the liver includes the lesion)
    _with_livers(site, {0: "masks/site-a-000.nii.gz", 2: str(site / "masks/site-a-002.nii.gz")})
    m = validate_site(site, CHANNELS, TASK)
    assert [c.liver_mask for c in m.cases] == [
        site / "masks/site-a-000.nii.gz",
        None,
        site / "masks/site-a-002.nii.gz",
    ]
    assert "liver_mask" not in m.cases[0].metadata  # a file column, not metadata


def test_a_missing_liver_mask_file_is_reported_naming_the_column(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=3, size=16)
    _with_livers(site, {1: "livers/site-a-001.nii.gz", 2: "../elsewhere.nii.gz"})
    msgs = problems_of(site)
    assert len(msgs) == 2
    assert "row 2" in msgs[0] and "site-a-001" in msgs[0] and "liver_mask" in msgs[0]
    assert "file not found" in msgs[0]
    assert "row 3" in msgs[1] and "liver_mask" in msgs[1] and "outside" in msgs[1]


def test_liver_mask_must_be_on_the_grid_binary_and_non_empty(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=4, size=16)
    livers = site / "livers"
    livers.mkdir()
    shifted = np.diag([1.5, 1.5, 2.5, 1.0])
    shifted[:3, 3] = (30.0, 0.0, 0.0)  # same shape, 20 voxels off
    liver = np.ones((16, 16, 1), np.uint8)
    nib.save(nib.Nifti1Image(liver, shifted), str(livers / "a.nii.gz"))
    _save(livers / "b.nii.gz", liver * 2)
    _save(livers / "c.nii.gz", liver * 0)
    _save(livers / "d.nii.gz", np.ones((12, 16, 1), np.uint8))
    _with_livers(site, {i: f"livers/{n}.nii.gz" for i, n in enumerate("abcd")})
    manifest = read_manifest(site, CHANNELS, TASK)
    probs = {str(p.case_id): (p.field, p.message) for p in check_images(manifest)}
    assert probs["site-a-000"][0] == "liver_mask"
    assert "not on image_arterial's grid" in probs["site-a-000"][1]
    assert probs["site-a-001"] == ("liver_mask", "values [2.0] are not binary 0/1")
    assert probs["site-a-002"][0] == "liver_mask" and "is empty" in probs["site-a-002"][1]
    assert probs["site-a-003"][0] == "shape" and "liver_mask (12, 16, 1)" in probs["site-a-003"][1]


def test_split_column_optional_uses_stable_hash(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=40)
    rewrite(site, lambda rows: [r.pop("split") for r in rows])
    m = read_manifest(site, CHANNELS, TASK)
    assert [c.split for c in m.cases] == [hash_split(c.case_id) for c in m.cases]
    n_test = len(m.split("test"))
    assert 3 <= n_test <= 18  # ~25 % of 40
    assert check_images(m) == []
