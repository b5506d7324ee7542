"""Strict manifests: the table's form, where its paths lead, voxel grids and metadata values.

Each test makes one kind of bad input (``common.badcases.BadInput``) in a small synthetic
site (``tests/conftest.py``) and checks that ``hepafed site check`` (``inspect_site``) and
the loader name it: the file, the line or row, the column, and what to do.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common import data as data_module
from common.acquisition import acquisition_summary, survey_site
from common.badcases import BadCaseError, BadInput, Problem
from common.config import RunConfig
from common.data import load_split
from common.manifest import ManifestError, open_manifest, read_manifest
from common.metadata import NUMERIC_METADATA
from common.site_files import inspect_site
from tests.conftest import write_nifti
from tests.dicom_series import ct_volume, write_ct_series

CHANNELS = ("arterial", "portal", "delayed")
TASK = "lesion-malignancy"
SPACING = (1.5, 1.5, 2.5)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_split_cache() -> None:
    data_module._SPLITS.clear()


def _cfg(policy: str = "fail") -> RunConfig:
    return RunConfig().replace(
        {"data.roi-size": 32, "data.context-mm": 0.0, "data.on-bad-case": policy}
    )


def _lines(site: Path) -> list[str]:
    return (site / "manifest.csv").read_text().splitlines()


def _write_lines(site: Path, lines: list[str]) -> None:
    (site / "manifest.csv").write_text("\n".join(lines) + "\n")


def _set_cell(site: Path, column: str, value: str, case: int = 0) -> None:
    path = site / "manifest.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if column not in rows[0]:
        for r in rows:
            r[column] = ""
    rows[case][column] = value
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _table_error(site: Path) -> tuple[Problem, ...]:
    """The problems ``hepafed site check`` prints for a manifest it cannot read at all."""
    with pytest.raises(ManifestError) as err:
        inspect_site(site, CHANNELS, TASK)
    return err.value.problems


def _image(site: Path, case: int = 0, channel: str = "arterial") -> Path:
    return site / f"images/{site.name}-{case:03d}_{channel}.nii.gz"


def _mask(site: Path, case: int = 0) -> Path:
    return site / f"masks/{site.name}-{case:03d}.nii.gz"


def _voxels(path: Path) -> np.ndarray:
    image: nib.Nifti1Image = nib.load(str(path))  # type: ignore[assignment]
    return np.asarray(image.dataobj)


# ---- the table's form ------------------------------------------------------------------------


def test_duplicate_column_is_named_not_last_wins(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=4)
    lines = _lines(site)
    # the second label column inverts every label: DictReader would silently keep it
    _write_lines(
        site,
        [lines[0] + ",label"] + [f"{ln},{1 - int(ln.split(',')[5])}" for ln in lines[1:]],
    )
    (p,) = _table_error(site)
    assert p.kind == BadInput.MANIFEST_DUPLICATE_COLUMN and p.field == "label" and p.line == 1
    assert "column 'label' appears 2 times (columns 6, 9)" in p.message
    assert str(p).startswith(f"{site / 'manifest.csv'}, line 1: label: ")
    for opener in (read_manifest, open_manifest):
        with pytest.raises(ManifestError, match="appears 2 times"):
            opener(site, CHANNELS, TASK)


def test_unnamed_column_is_named(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2)
    _write_lines(site, [ln + "," for ln in _lines(site)])  # a trailing comma on every line
    (p,) = _table_error(site)
    assert (p.kind, p.field, p.line) == (BadInput.MANIFEST_UNNAMED_COLUMN, "column 9", 1)
    assert "has no name in the header" in p.message


def test_row_with_an_extra_field_is_named_not_a_crash(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=4)
    lines = _lines(site)
    lines[2] += ",surprise"  # data row 2 (case -001), file line 3
    _write_lines(site, lines)
    manifest, problems = inspect_site(site, CHANNELS, TASK)  # used to raise AttributeError
    (p,) = problems
    assert (p.kind, p.field, p.row, p.line, p.case_id) == (
        BadInput.MANIFEST_RAGGED_ROW,
        "row",
        2,
        3,
        "site-a-001",
    )
    assert p.message.startswith("9 field(s), but the header has 8 columns: field(s) 9 ")
    assert "'surprise'" in p.message and "quote a value that holds a comma" in p.message
    assert [c.case_id for c in manifest.cases] == ["site-a-000", "site-a-002", "site-a-003"]
    # at work the table is rejected whole: which field is which is a guess
    with pytest.raises(ManifestError, match="header has 8 columns"):
        open_manifest(site, CHANNELS, TASK)


def test_row_with_too_few_fields_names_the_columns_left_empty(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=3)
    lines = _lines(site)
    lines[3] = ",".join(lines[3].split(",")[:6])  # drops split and vendor
    _write_lines(site, lines)
    _, problems = inspect_site(site, CHANNELS, TASK)
    (p,) = problems
    assert (p.kind, p.row, p.line) == (BadInput.MANIFEST_RAGGED_ROW, 3, 4)
    assert "6 field(s), but the header has 8 columns: column(s) split, vendor have no field" in (
        p.message
    )


def test_quoted_commas_and_newlines_are_one_field(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2)
    _set_cell(site, "kernel", "B30f, smooth\nsoft")
    manifest = read_manifest(site, CHANNELS, TASK)
    assert manifest.cases[0].metadata["kernel"] == "B30f, smooth\nsoft"
    assert manifest.cases[1].row == 2


def test_nul_bytes_are_named_with_line_and_byte(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=3)
    raw = (site / "manifest.csv").read_bytes().split(b"\n")
    raw[2] = raw[2][:4] + b"\x00" + raw[2][4:]
    (site / "manifest.csv").write_bytes(b"\n".join(raw))
    (p,) = _table_error(site)
    assert (p.kind, p.line, p.field) == (BadInput.MANIFEST_NUL, 3, "manifest")
    assert p.message.startswith("NUL byte at byte 5 of the line")


def test_many_nul_lines_are_listed_up_to_ten_and_counted(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=14)
    raw = (site / "manifest.csv").read_bytes().replace(b"site-a-", b"site-a\x00")
    (site / "manifest.csv").write_bytes(raw)
    problems = _table_error(site)
    assert [p.line for p in problems] == list(range(2, 12))
    assert problems[-1].message.endswith("; and 4 more line(s) like it")


def test_latin1_bytes_are_an_encoding_error(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=2)
    _set_cell(site, "vendor", "Siemens Healthineers Erlangen", case=1)
    text = (site / "manifest.csv").read_text().replace("Erlangen", "Erlangén")
    (site / "manifest.csv").write_bytes(text.encode("latin-1"))
    (p,) = _table_error(site)
    assert (p.kind, p.line) == (BadInput.MANIFEST_ENCODING, 3)
    col = text.splitlines()[2].index("é") + 1
    assert p.message.startswith(f"byte 0xe9 at byte {col} of the line is not UTF-8")
    assert "'CSV UTF-8'" in p.message


def test_utf16_is_an_encoding_error_and_utf8_bom_is_fine(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=2)
    text = (site / "manifest.csv").read_text()
    (site / "manifest.csv").write_bytes(text.encode("utf-16"))
    (p,) = _table_error(site)
    assert p.kind == BadInput.MANIFEST_ENCODING and "UTF-16" in p.message
    (site / "manifest.csv").write_bytes(text.encode("utf-8-sig"))
    assert len(read_manifest(site, CHANNELS, TASK).cases) == 2


# ---- paths stay inside the site folder -------------------------------------------------------


def _outside_copy(site: Path) -> Path:
    """A copy of case -000's arterial image outside the site folder."""
    outside = site.parent.parent / "elsewhere" / "x.nii.gz"
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_image(site), outside)
    return outside


def _only_problem(site: Path, **kw: object) -> Problem:
    _, problems = inspect_site(site, CHANNELS, TASK, **kw)  # type: ignore[arg-type]
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize("absolute", [False, True], ids=["dotdot", "absolute"])
def test_a_path_out_of_the_site_folder_is_refused(
    site_factory: Callable[..., Path], absolute: bool
) -> None:
    site = site_factory(n_cases=3)
    outside = _outside_copy(site)
    _set_cell(site, "image_arterial", str(outside) if absolute else "../../elsewhere/x.nii.gz")
    p = _only_problem(site)
    assert (p.kind, p.field, p.row, p.case_id) == (
        BadInput.PATH_ESCAPE,
        "image_arterial",
        1,
        "site-a-000",
    )
    assert f"is outside the site folder {site}: give a path inside the site folder" in p.message
    assert "allow a data root" in p.message
    # the summary does not read the file either
    assert survey_site(open_manifest(site, CHANNELS, TASK)).sources == {"NIfTI": 8}


def test_a_data_root_allows_paths_inside_it(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=3)
    outside = _outside_copy(site)
    _set_cell(site, "image_arterial", str(outside))
    manifest, problems = inspect_site(site, CHANNELS, TASK, data_root=outside.parent)
    assert problems == [] and manifest.cases[0].images[0] == outside
    cfg = _cfg()
    manifest = open_manifest(site, cfg.data.channels, cfg.task, data_root=outside.parent)
    assert manifest.row_problems == {}
    assert len(load_split(manifest, "train", cfg.data, cfg.task)) == 2
    # still nothing outside both
    _set_cell(site, "mask", "/etc/hostname")
    p = _only_problem(site, data_root=outside.parent)
    assert p.kind == BadInput.PATH_ESCAPE and f"and the data root {outside.parent}" in p.message


def test_dotdot_that_stays_inside_and_absolute_inside_are_fine(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=2)
    _set_cell(site, "image_arterial", "masks/../images/site-a-000_arterial.nii.gz")
    _set_cell(site, "mask", str(_mask(site)))
    assert inspect_site(site, CHANNELS, TASK)[1] == []


def test_a_symlink_out_of_the_site_folder_is_refused(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=3)
    outside = _outside_copy(site)
    _image(site).unlink()
    _image(site).symlink_to(outside)
    p = _only_problem(site)
    assert (p.kind, p.field) == (BadInput.SYMLINK_ESCAPE, "image_arterial")
    assert f"resolves to {outside}, outside the site folder {site}" in p.message
    # a link that stays inside is fine
    _image(site).unlink()
    _image(site).symlink_to(_image(site, 1))
    assert inspect_site(site, CHANNELS, TASK)[1] == []


def test_a_sibling_folder_whose_name_extends_the_sites_is_outside_it(
    site_factory: Callable[..., Path],
) -> None:
    # /sites/site-a2 starts with the text /sites/site-a but is not inside it
    site = site_factory(n_cases=3)
    sibling = site.parent / f"{site.name}2" / "x.nii.gz"
    sibling.parent.mkdir()
    shutil.copy(_image(site), sibling)
    _set_cell(site, "image_arterial", str(sibling))
    assert _only_problem(site).kind == BadInput.PATH_ESCAPE
    _set_cell(site, "image_arterial", _image(site).relative_to(site).as_posix())
    _image(site).unlink()
    _image(site).symlink_to(sibling)
    assert _only_problem(site).kind == BadInput.SYMLINK_ESCAPE


def test_a_link_loop_is_a_missing_file_not_a_crash(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=3)
    loop = site / "images" / "loop.nii.gz"
    loop.symlink_to(loop)  # opening it fails with ELOOP: it names no file
    _set_cell(site, "image_arterial", "images/loop.nii.gz")
    p = _only_problem(site)
    assert (p.field, p.case_id) == ("image_arterial", "site-a-000")
    assert p.message == f"file not found: {loop}"


def test_a_site_folder_reached_through_a_link_keeps_its_files(
    site_factory: Callable[..., Path], tmp_path: Path
) -> None:
    # the node config may name the site by a link (/srv/site -> /mnt/data/site-a): its
    # files resolve into the real folder, which is the site's
    site = site_factory(n_cases=3)
    link = tmp_path / "linked-site"
    link.symlink_to(site)
    manifest, problems = inspect_site(link, CHANNELS, TASK)
    assert problems == [] and len(manifest.cases) == 3
    # an absolute cell must still name the folder as the node config does
    _set_cell(site, "mask", str(_mask(site)))
    assert _only_problem(link).kind == BadInput.PATH_ESCAPE


def test_a_linked_dicom_slice_out_of_the_site_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site-d"
    write_ct_series(site / "dicom/c0", ct_volume(shape=(8, 8, 3)))
    elsewhere = write_ct_series(tmp_path / "elsewhere", ct_volume(shape=(8, 8, 3), seed=1))
    (site / "dicom/c0/slice001.dcm").unlink()
    (site / "dicom/c0/slice001.dcm").symlink_to(elsewhere[1])
    write_nifti(site / "m.nii.gz", np.ones((8, 8, 3), np.uint8), (0.8, 0.7, 2.0))
    (site / "manifest.csv").write_text("case_id,image_ct,mask,label\nd,dicom/c0,m.nii.gz,1\n")
    _, problems = inspect_site(site, ("ct",), TASK, spatial_dims=3)
    (p,) = problems
    assert p.kind == BadInput.SYMLINK_ESCAPE
    assert p.message.startswith(f"{site / 'dicom/c0/slice001.dcm'} is a symbolic link")


def test_the_loader_fails_or_skips_an_escaping_row(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=6)
    _outside_copy(site)
    _set_cell(site, "image_arterial", "../../elsewhere/x.nii.gz")
    cfg = _cfg("fail")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    assert set(manifest.row_problems) == {"site-a-000"}
    with pytest.raises(BadCaseError) as err:
        load_split(manifest, "train", cfg.data, cfg.task)
    assert err.value.path == str(site / "manifest.csv")
    assert err.value.reason.startswith("image_arterial: ")
    assert "is outside the site folder" in err.value.reason
    assert err.value.reason.endswith("(manifest.csv row 1)")
    skip = _cfg("skip")
    split = load_split(open_manifest(site, CHANNELS, TASK), "train", skip.data, skip.task)
    assert split.case_ids == ("site-a-001", "site-a-003", "site-a-004")


def test_a_link_swapped_after_the_check_is_refused_by_the_loader(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=6)
    cfg = _cfg("fail")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)  # checked: all inside
    outside = _outside_copy(site)
    _mask(site).unlink()
    _mask(site).symlink_to(outside)
    with pytest.raises(BadCaseError) as err:
        load_split(manifest, "train", cfg.data, cfg.task)
    assert (err.value.case_id, err.value.path) == ("site-a-000", str(_mask(site)))
    assert err.value.reason.startswith(f"mask: {_mask(site)} is a symbolic link")


# ---- voxel spacing and grids -----------------------------------------------------------------


def _rewrite_header(path: Path, **fields: object) -> None:
    """Rewrite a NIfTI file with header fields set as given (nibabel keeps them when the
    image has no affine of its own to write back)."""
    img: nib.Nifti1Image = nib.load(str(path))  # type: ignore[assignment]
    out = nib.Nifti1Image(np.asarray(img.dataobj), None, header=img.header.copy())
    for name, value in fields.items():
        out.header[name] = value
    nib.save(out, str(path))


def _zero_sform_spacing(path: Path) -> None:
    """The sform's y row zeroed: the affine nibabel reads has spacing 0 along y."""
    _rewrite_header(path, qform_code=0, sform_code=1, srow_y=[0.0, 0.0, 0.0, 0.0])


def _zero_pixdim(path: Path) -> None:
    """pixdim[2] = 0 with only a qform: nibabel would quietly read 1 mm."""
    _rewrite_header(path, qform_code=1, sform_code=0, pixdim=[1.0, 1.5, 0.0, 2.5, 1, 1, 1, 1])


def test_zero_spacing_in_the_affine_is_named_by_check_and_loader(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=6)
    _zero_sform_spacing(_image(site))
    p = _only_problem(site)
    assert (p.kind, p.field, p.case_id) == (BadInput.ZERO_SPACING, "image_arterial", "site-a-000")
    assert p.message.startswith(
        "voxel spacing (1.5, 0, 2.5) mm in the NIfTI header's affine (sform): every spacing "
        "must be > 0 and finite (from 0.001 to 1000 mm); fix the file's header"
    )
    cfg = _cfg("fail")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    with pytest.raises(BadCaseError) as err:
        load_split(manifest, "train", cfg.data, cfg.task)
    assert (err.value.path, err.value.reason) == (str(_image(site)), f"image_arterial: {p.message}")


def test_zero_pixdim_that_nibabel_would_repair_is_named(
    site_factory: Callable[..., Path],
) -> None:
    site = site_factory(n_cases=2)
    _zero_pixdim(_mask(site, 1))
    p = _only_problem(site)
    assert (p.kind, p.field, p.case_id) == (BadInput.ZERO_SPACING, "mask", "site-a-001")
    assert p.message.startswith("voxel spacing (1.5, 0, 2.5) mm in the NIfTI header (pixdim)")


def test_a_mask_90_mm_off_is_named_by_check_and_loader(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=6)
    affine = np.diag([*SPACING, 1.0])
    affine[0, 3] = 90.0
    nib.save(nib.Nifti1Image(_voxels(_mask(site)), affine), str(_mask(site)))
    p = _only_problem(site)
    assert (p.kind, p.field, p.case_id) == (BadInput.MASK_GEOMETRY, "mask", "site-a-000")
    assert p.message.startswith(
        "not on image_arterial's grid: origin (90, 0, 0) mm is 90 mm ((60, 0, 0) voxels) "
        "from (0, 0, 0) (tolerance 0.5 voxel)"
    )
    cfg = _cfg("fail")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    with pytest.raises(BadCaseError) as err:
        load_split(manifest, "train", cfg.data, cfg.task)
    assert (err.value.path, err.value.reason) == (str(_mask(site)), f"mask: {p.message}")
    skip = _cfg("skip")
    assert len(load_split(manifest, "train", skip.data, skip.task)) == 3


@pytest.mark.parametrize(
    ("change", "bad"),
    [
        ({"offset_x": 0.4 * 1.5}, False),  # 0.4 voxel: within tolerance
        ({"offset_x": 0.6 * 1.5}, True),
        ({"offset_z": 0.6 * 2.5}, True),  # across the single slice too
        ({"spacing_x": 1.5 * 1.0005}, False),  # 0.05 %
        ({"spacing_x": 1.5 * 1.01}, True),  # 1 %
        ({"spacing_z": 5.0}, False),  # a single slice has no through-plane spacing to match
        ({"flip_y": True}, True),
    ],
    ids=["0.4vox", "0.6vox", "0.6vox-z", "spacing-0.05pc", "spacing-1pc", "slab-z", "flip-y"],
)
def test_grid_tolerances(
    site_factory: Callable[..., Path], change: dict[str, float], bad: bool
) -> None:
    site = site_factory(n_cases=1)
    affine = np.diag([*SPACING, 1.0])
    affine[0, 3] = change.get("offset_x", 0.0)
    affine[2, 3] = change.get("offset_z", 0.0)
    affine[0, 0] = change.get("spacing_x", SPACING[0])
    affine[2, 2] = change.get("spacing_z", SPACING[2])
    if change.get("flip_y"):
        affine[1, 1] = -SPACING[1]
    portal = _image(site, channel="portal")
    nib.save(nib.Nifti1Image(_voxels(portal), affine), str(portal))
    _, problems = inspect_site(site, CHANNELS, TASK)
    assert [(p.kind, p.field) for p in problems] == (
        [(BadInput.MASK_GEOMETRY, "image_portal")] if bad else []
    )


# ---- numeric metadata ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "kind", "message"),
    [
        (
            "kvp",
            "120 kV",
            BadInput.METADATA_UNIT,
            "'120 kV' is not a plain number: give the CT tube voltage in kV without a unit or "
            "other text (e.g. 120), or leave the cell empty",
        ),
        (
            "kvp",
            "1e308",
            BadInput.METADATA_RANGE,
            "1e308 kV is outside the plausible CT tube voltage range (>= 40 and <= 200 kV): "
            "correct the value (is the unit kV?) or leave the cell empty",
        ),
        (
            "slice_thickness_mm",
            "-2.5",
            BadInput.METADATA_RANGE,
            "-2.5 mm is outside the plausible slice thickness range (> 0 and <= 20 mm): "
            "correct the value (is the unit mm?) or leave the cell empty",
        ),
        ("field_strength_t", "nan", BadInput.METADATA_RANGE, "nan T is outside"),
        ("field_strength_t", "1500", BadInput.METADATA_RANGE, "1500 T is outside"),
        ("arterial_delay_s", "35 s", BadInput.METADATA_UNIT, "'35 s' is not a plain number"),
        ("portal_delay_s", "-1", BadInput.METADATA_RANGE, "-1 s is outside"),
    ],
)
def test_numeric_metadata_is_a_plausible_number(
    site_factory: Callable[..., Path], column: str, value: str, kind: BadInput, message: str
) -> None:
    site = site_factory(n_cases=6)
    _set_cell(site, column, value)
    p = _only_problem(site)
    assert (p.kind, p.field, p.row, p.case_id) == (kind, column, 1, "site-a-000")
    assert p.message.startswith(message)
    # at work: the case is failed or skipped, never kept with the value dropped
    cfg = _cfg("fail")
    manifest = open_manifest(site, cfg.data.channels, cfg.task)
    assert [q.kind for q in manifest.row_problems["site-a-000"]] == [kind]
    with pytest.raises(BadCaseError) as err:
        load_split(manifest, "train", cfg.data, cfg.task)
    assert err.value.path == str(site / "manifest.csv")
    assert err.value.reason == f"{column}: {p.message} (manifest.csv row 1)"
    skip = _cfg("skip")
    assert len(load_split(manifest, "train", skip.data, skip.task)) == 3


def test_plausible_metadata_passes_and_is_summarised(site_factory: Callable[..., Path]) -> None:
    site = site_factory(n_cases=3)
    for case, (kvp, thick) in enumerate([("120", "2.5"), ("80", "0.625"), ("140.0", "5")]):
        _set_cell(site, "kvp", kvp, case)
        _set_cell(site, "slice_thickness_mm", thick, case)
    _set_cell(site, "arterial_delay_s", "0", 0)
    manifest, problems = inspect_site(site, CHANNELS, TASK)
    assert problems == []
    summary = acquisition_summary(manifest.cases)
    assert summary["kvp"] == {"n": 3, "min": 80.0, "median": 120.0, "max": 140.0}
    assert summary["slice_thickness_mm"]["min"] == 0.625
    assert summary["contrast_delay_s"] == {
        "arterial": {"n": 1, "min": 0.0, "median": 0.0, "max": 0.0}
    }


def test_a_bad_value_from_a_dicom_header_names_the_series(tmp_path: Path) -> None:
    site = tmp_path / "site-d"
    write_ct_series(site / "dicom/c0", ct_volume(shape=(8, 8, 3)), tags={"KVP": "1200"})
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[2:4, 2:4, 1] = 1
    affine = np.diag([-0.8, -0.7, 2.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    site.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(mask, affine), str(site / "m.nii.gz"))
    (site / "manifest.csv").write_text("case_id,image_ct,mask,label\nd,dicom/c0,m.nii.gz,1\n")
    _, problems = inspect_site(site, ("ct",), TASK, spatial_dims=3)
    (p,) = problems
    assert (p.kind, p.field) == (BadInput.METADATA_RANGE, "kvp")
    assert p.message.startswith("1200 kV is outside the plausible CT tube voltage range")
    assert p.message.endswith(
        f"(the value is from the DICOM header of {site / 'dicom/c0'}; a value in the "
        "manifest's kvp column overrides it)"
    )
    # a manifest cell wins over the header, and is what is judged
    (site / "manifest.csv").write_text(
        "case_id,image_ct,mask,label,kvp\nd,dicom/c0,m.nii.gz,1,120\n"
    )
    assert inspect_site(site, ("ct",), TASK, spatial_dims=3)[1] == []


# ---- the docs list every kind ----------------------------------------------------------------


def test_docs_name_every_kind_and_the_range_table() -> None:
    trust = (ROOT / "docs" / "trust.md").read_text()
    bad_cases = (ROOT / "docs" / "bad-cases.md").read_text()
    for kind in BadInput:
        assert f"| `{kind.value}` |" in trust, f"docs/trust.md has no row for {kind.value}"
        assert f"`{kind.value}`" in bad_cases, f"docs/bad-cases.md does not name {kind.value}"
    for column, q in NUMERIC_METADATA.items():
        row = re.search(rf"^\| `{column}` \|(.+)$", bad_cases, re.MULTILINE)
        assert row is not None, f"docs/bad-cases.md's range table has no row for {column}"
        assert q.range_text() in row.group(1)


# ---- through the command -----------------------------------------------------------------------


def test_site_check_prints_named_problems_for_a_ragged_duplicate_manifest(
    site_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from common.cli import main

    site = site_factory(n_cases=3)
    lines = _lines(site)
    lines[1] += ",extra"
    _write_lines(site, lines)
    assert main(["site", "check", str(site)]) == 1  # used to end in AttributeError
    err = capsys.readouterr().err
    assert "1 problem(s):" in err
    assert f"{site / 'manifest.csv'}, line 2, row 1 (case 'site-a-000'): row: 9 field(s)" in err
    good = lines[:1] + [lines[1].removesuffix(",extra")] + lines[2:]
    _write_lines(site, [good[0] + ",label"] + [ln + ",0" for ln in good[1:]])
    assert main(["site", "check", str(site)]) == 1
    assert "column 'label' appears 2 times (columns 6, 9)" in capsys.readouterr().err


def test_the_sites_policy_and_site_check_name_the_data_root(
    site_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``policy.data-root`` reaches the ClientApp's loader; ``site check --data-root`` too;
    the run config has no say."""
    from client.site import open_site
    from common.cli import main

    site = site_factory(n_cases=3)
    outside = _outside_copy(site)
    _set_cell(site, "image_arterial", str(outside))
    cfg = _cfg()
    refused = open_site({"site-dir": str(site)}, cfg).manifest
    assert BadInput.PATH_ESCAPE.value in str(refused.row_problems)
    allowed = open_site({"site-dir": str(site), "policy.data-root": str(outside.parent)}, cfg)
    assert allowed.manifest.row_problems == {}
    assert main(["site", "check", str(site)]) == 1
    assert "is outside the site folder" in capsys.readouterr().err
    assert main(["site", "check", str(site), "--data-root", str(outside.parent)]) == 0
