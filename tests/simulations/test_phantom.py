"""The multi-center phantom: files, determinism, atomic writes, physics, and difficulty."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, optimize, stats

from common.manifest import read_manifest as read_site
from common.site_files import check_images
from simulations import anatomy, phantom, physiology, scanner
from simulations.anatomy import LESION_TYPES, MALIGNANT_TYPES
from simulations.phantom import (
    MANIFEST_COLUMNS,
    PHASES,
    PhantomExistsError,
    generate_phantom,
    simulate_case,
)
from simulations.scenario import (
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)
from simulations.site_profile import FLASH_MAX_MM, BenignMix, SiteProfile
from tests.simulations import array_digest


def read_manifest(site_dir: Path) -> list[dict[str, str]]:
    with (site_dir / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def contrast(images: np.ndarray, mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Per phase: mean HU in the lesion minus median HU in a 3-8 mm ring around it."""
    lesion = mask[..., 0] > 0
    dist = ndimage.distance_transform_edt(~lesion) * spacing_mm
    ring = (dist > 3.0) & (dist <= 8.0)
    planes = images[..., 0].astype(np.float64)
    return np.array([p[lesion].mean() - np.median(p[ring]) for p in planes])


@pytest.fixture(scope="module")
def liver2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Scenario, Path]]:
    spec = load_scenario("liver-2")
    out = tmp_path_factory.mktemp("phantom") / "liver-2"
    yield spec, generate_phantom(spec, out)


def tiny(name: str, n_cases: int, **changes: object) -> SiteProfile:
    """A small, fast site; test_fraction 0.5 gives 3 or 4 cases a test and a train split."""
    base: dict[str, object] = {"test_fraction": 0.5, "fov_mm": 120.0, "pixel_spacing_mm": 2.0}
    return SiteProfile(name, n_cases=n_cases, **{**base, **changes})  # type: ignore[arg-type]


def quiet(site: SiteProfile, **changes: object) -> SiteProfile:
    """A site without noise, motion or bolus jitter, to look at the physics itself."""
    base = {"noise_sigma_hu": 0.0, "motion_mm": 0.0, "bolus_jitter_s": 0.0}
    return dataclasses.replace(site, **{**base, **changes})  # type: ignore[arg-type]


def contrasts(site: SiteProfile, label: int, n: int, seed: int = 11) -> np.ndarray:
    """(n, 3) lesion-minus-liver contrasts of n cases simulated in memory."""
    rows = []
    for i in range(n):
        _, grid, images, mask, _ = simulate_case(site, seed, i, label, dims=2)
        rows.append(contrast(images, mask, grid.spacing_mm))
    return np.array(rows)


# --- the site data contract --------------------------------------------------


def test_phantom_json_records_scenario_seed_dims_and_version(liver2: tuple) -> None:
    spec, out = liver2
    meta = json.loads((out / "phantom.json").read_text())
    assert (meta["scenario"], meta["seed"], meta["dims"]) == ("liver-2", spec.seed, 2)
    assert meta["generator_version"] == phantom.GENERATOR_VERSION
    assert meta["resolved_scenario"] == spec.to_dict()
    assert [s["name"] for s in meta["sites"]] == ["site-a", "site-b"]
    assert sorted(p.name for p in out.iterdir()) == ["phantom.json", "site-a", "site-b"]


def test_manifest_columns_and_values_follow_the_contract(liver2: tuple) -> None:
    spec, out = liver2
    for site in spec.sites:
        site_dir = out / site.name
        with (site_dir / "manifest.csv").open(encoding="utf-8") as fh:
            assert fh.readline().strip().split(",") == list(MANIFEST_COLUMNS)
        rows = read_manifest(site_dir)
        assert [r["case_id"] for r in rows] == [
            f"{site.name}-{i:04d}" for i in range(1, site.n_cases + 1)
        ]
        for r in rows:
            for phase in PHASES:
                assert r[f"image_{phase}"] == f"images/{r['case_id']}_{phase}.nii.gz"
                assert (site_dir / r[f"image_{phase}"]).is_file()
            assert r["mask"] == f"masks/{r['case_id']}.nii.gz"
            assert r["lesion_type"] in LESION_TYPES
            assert r["label"] == ("1" if r["lesion_type"] in MALIGNANT_TYPES else "0")
            assert r["split"] in ("train", "val", "test")
            size = float(r["lesion_size_mm"])
            assert site.lesion_size_min_mm <= size <= site.lesion_size_max_mm
            assert r["cirrhosis"] in ("0", "1")
            assert (r["vendor"], r["scanner_model"], r["kernel"]) == (
                site.vendor,
                site.scanner_model,
                site.kernel,
            )
            assert float(r["slice_thickness_mm"]) == site.slice_thickness_mm
            assert float(r["pixel_spacing_mm"]) == site.pixel_spacing_mm
            assert int(r["kvp"]) == site.kvp and float(r["dose_factor"]) == site.dose_factor
            assert float(r["arterial_delay_s"]) == site.arterial_delay_s
            assert float(r["portal_delay_s"]) == site.portal_delay_s
            assert float(r["delayed_delay_s"]) == site.delayed_delay_s
        labels = np.array([int(r["label"]) for r in rows])
        assert labels.sum() == round(site.prevalence * site.n_cases)
        for value in (0, 1):  # the test split, then the val split, is stratified by label
            group = [r for r in rows if int(r["label"]) == value]
            n_test = sum(r["split"] == "test" for r in group)
            assert n_test == round(site.test_fraction * len(group))
            n_val = sum(r["split"] == "val" for r in group)
            assert n_val == round(site.val_fraction * (len(group) - n_test))


def test_external_site_writes_every_case_as_test(tmp_path: Path) -> None:
    site = SiteProfile("far-away", role="external", n_cases=6, fov_mm=120.0, pixel_spacing_mm=2.0)
    spec = Scenario("ext", 5, (site,))
    rows = read_manifest(generate_phantom(spec, tmp_path / "ext") / "far-away")
    assert [r["split"] for r in rows] == ["test"] * 6


def load_nifti(path: Path) -> nib.Nifti1Image:
    """A NIfTI file the phantom wrote (``nib.load`` is typed as returning any image)."""
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    return img


def world_centre(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World (RAS+ mm) position of the centre of an image's first slice."""
    centre = (np.array(shape[:2]) - 1) / 2.0
    return np.asarray(affine @ np.r_[centre, 0.0, 1.0])[:3]


def test_images_are_int16_hu_with_spacing_and_position_in_the_affine(liver2: tuple) -> None:
    spec, out = liver2
    for site in spec.sites:
        n = site.matrix_size
        # the first voxel axis runs to the patient's left, so world x (RAS: right) is negated
        axes = np.diag([-site.pixel_spacing_mm, site.pixel_spacing_mm, site.slice_thickness_mm])
        for r in read_manifest(out / site.name)[:5]:
            mask = load_nifti(out / site.name / r["mask"])
            assert mask.get_data_dtype() == np.uint8 and mask.shape == (n, n, 1)
            values = np.asarray(mask.dataobj)
            assert set(np.unique(values)) == {0, 1}
            for phase in PHASES:
                img = load_nifti(out / site.name / r[f"image_{phase}"])
                assert img.get_data_dtype() == np.int16 and img.shape == (n, n, 1)
                np.testing.assert_allclose(img.affine[:3, :3], axes, atol=1e-6)
                np.testing.assert_allclose(img.affine, mask.affine)
                assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
                # the field of view is centred 30 mm right of the body's midline, 5 mm
                # posterior to its centre; the slice is at the lesion's height
                x, y, z = world_centre(img.affine, img.shape)
                assert (x, y) == (pytest.approx(30.0, abs=1e-3), pytest.approx(-5.0, abs=1e-3))
                assert -20.0 <= z <= 20.0
                assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 1
                assert img.header.get_xyzt_units()[0] == "mm"
                hu = np.asarray(img.dataobj)
                assert hu.min() < -900  # air around the body
                assert -50 < np.median(hu[values > 0]) < 300  # lesions: water to enhancing tissue
                assert hu.max() > 150  # bone, enhanced vessels


def test_liver_masks_hold_the_lesion_on_its_grid_and_a_plausible_share(liver2: tuple) -> None:
    """Every case has a uint8 liver mask (``liver_mask``, ``livers/``) on the lesion mask's
    grid that holds the lesion and a plausible share of the slice, and that the site check
    accepts."""
    spec, out = liver2
    shares = []
    for site in spec.sites:
        rows = read_manifest(out / site.name)
        for r in rows:
            assert r["liver_mask"] == f"livers/{r['case_id']}.nii.gz"
            liver = load_nifti(out / site.name / r["liver_mask"])
            mask = load_nifti(out / site.name / r["mask"])
            assert liver.get_data_dtype() == np.uint8 and liver.shape == mask.shape
            np.testing.assert_array_equal(liver.affine, mask.affine)
            inside, lesion = np.asarray(liver.dataobj), np.asarray(mask.dataobj) > 0
            assert set(np.unique(inside)) == {0, 1}
            assert inside[lesion].all()  # the liver includes its lesion
            assert inside.sum() > 3 * lesion.sum()  # ... and much more
            shares.append(float(inside.mean()))
        manifest = read_site(out / site.name, PHASES, "lesion-malignancy")
        assert all(c.liver_mask is not None for c in manifest.cases)
        assert check_images(manifest) == []
    assert min(shares) >= 0.05 and max(shares) <= 0.8


# simulate_case's images and lesion mask as generator 2.1 made them (before liver masks):
# generator 2.2 only adds the liver mask, drawing nothing more from any random stream
GENERATOR_2_1_DIGESTS = {
    (2, 0): "be7ad135d5447e1bd4606cc99640bb59300bb9a7196057586ce04a325ca204ff",
    (2, 1): "224dcd4a93e7eb7a1c25e2b853f3dc5fb7a6c1134c771e83ff2031bf50861530",
    (2, 2): "4a4dfe2c09cdf3225e8c0537fa78aed6bcea9d97641b9585f44bcd608c4786e0",
    (3, 0): "2f7cae3af7fd50a69dafe5e363424da7d6f4ba98bee0b4d3bb4ffd907d102a19",
}


def test_images_and_lesion_masks_are_those_of_generator_2_1() -> None:
    site = tiny("hash", 4, cirrhosis_fraction=0.5)
    for (dims, index), digest in GENERATOR_2_1_DIGESTS.items():
        profile = dataclasses.replace(site, z_extent_mm=20.0) if dims == 3 else site
        label = 0 if index == 1 else 1
        _, _, images, mask, liver = phantom.simulate_case(profile, 7, index, label, dims)
        assert array_digest(images, mask) == digest, (dims, index)
        assert liver.dtype == np.uint8 and liver.shape == mask.shape
        assert liver[mask > 0].all() and 0.05 <= liver.mean() <= 0.8


def largest_region(mask: np.ndarray) -> np.ndarray:
    regions, n = ndimage.label(mask)
    assert n > 0
    sizes = ndimage.sum(mask, regions, range(1, n + 1))
    return np.asarray(regions == 1 + int(np.argmax(sizes)))


def following(hu: np.ndarray, *curves: np.ndarray) -> np.ndarray:
    """Pixels whose HU in the three phases ``hu`` (3, nx, ny) is the sum of ``curves``."""
    expected = np.sum(curves, axis=0)[:, None, None]
    return np.asarray(np.all(np.abs(hu - expected) < 3.0, axis=0))


def world_centroid(region: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS+ mm of the centroid of a region of a slice, through an image's affine."""
    return np.asarray(affine @ np.r_[np.argwhere(region).mean(axis=0), 0.0, 1.0])[:3]


def test_anatomy_is_where_the_affine_says_liver_right_aorta_left_of_the_ivc(
    tmp_path: Path,
) -> None:
    # noise-free, motionless, non-cirrhotic cases with a field of view holding the whole body
    site = quiet(
        tiny("a", 4, fov_mm=400.0),
        cirrhosis_fraction=0.0,
        prevalence=0.0,
        benign_mix=BenignMix(1.0, 0.0, 0.0),  # cysts: no lesion enhancement
    )
    out = generate_phantom(Scenario("o", 4, (site,)), tmp_path / "o") / "a"
    times = (site.arterial_delay_s, site.portal_delay_s, site.delayed_delay_s)
    for index, r in enumerate(read_manifest(out)):
        images = [load_nifti(out / r[f"image_{phase}"]) for phase in PHASES]
        affine = images[0].affine
        assert nib.aff2axcodes(affine) == ("L", "A", "S")
        hu = np.stack([np.asarray(img.dataobj)[..., 0].astype(np.float64) for img in images])
        # find the structures by their HU in the three phases (the model's own curves)
        case = simulate_case(site, 4, index, 0, dims=2)[0]
        enh = physiology.enhancement(case, times)
        blood = np.full(3, anatomy.BASE_HU["blood"])
        aorta = world_centroid(largest_region(following(hu, blood, enh["aorta"])), affine)
        ivc = world_centroid(largest_region(following(hu, blood, enh["hepatic"])), affine)
        parenchyma = np.abs(hu[1] - case.liver_hu - enh["liver"][1]) < 15.0  # portal phase
        liver = world_centroid(largest_region(parenchyma), affine)
        body = world_centroid(hu[1] > -500.0, affine)
        # the body is centred on world x = y = 0 (isocentre) ...
        np.testing.assert_allclose(body[:2], (0.0, 0.0), atol=2.0)
        # ... the liver lies on the patient's right (RAS +x), the aorta left of the midline
        # and the IVC right of it, both posterior (RAS -y)
        assert liver[0] > 20.0
        assert aorta[0] < -5.0 and ivc[0] > 5.0
        assert aorta[1] < -20.0 and ivc[1] < -20.0


def test_matrix_follows_field_of_view_and_pixel_spacing() -> None:
    site = SiteProfile("a", fov_mm=240.0, pixel_spacing_mm=1.5)
    grid = scanner.acquisition_grid(site, 0.0, dims=2)
    assert grid.shape == (160, 160, 1)
    assert np.allclose(np.diff(grid.x), 1.5) and np.ptp(grid.x) == pytest.approx(1.5 * 159)


# --- determinism, caching, atomic writes ---------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(
    liver2: tuple, tmp_path: Path
) -> None:
    spec, out = liver2
    again = generate_phantom(spec, tmp_path / "again")
    assert digests(again) == digests(out)
    other = digests(generate_phantom(spec, tmp_path / "other", seed=spec.seed + 1))
    first = digests(out)
    images = [k for k in first if k.endswith("_portal.nii.gz")]
    assert sum(first[k] != other[k] for k in images) == len(images)


def test_a_seed_override_is_the_seed_recorded_and_used(tmp_path: Path) -> None:
    site = tiny("a", 3)
    out = generate_phantom(Scenario("s", 1, (site,)), tmp_path / "override", seed=9)
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["seed"] == meta["resolved_scenario"]["seed"] == 9
    # byte-identical to the phantom of a scenario whose own seed is 9, phantom.json included
    assert digests(out) == digests(generate_phantom(Scenario("s", 9, (site,)), tmp_path / "own"))


def test_nifti_bytes_are_reproducible_gzip_with_zero_mtime() -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    blob = phantom.nifti_gz(data, np.diag([0.7, 0.7, 2.5, 1.0]))
    assert blob == phantom.nifti_gz(data, np.diag([0.7, 0.7, 2.5, 1.0]))
    assert blob[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field
    assert gzip.decompress(blob)[344:348] == b"n+1\x00"  # single-file NIfTI-1


def test_a_site_does_not_depend_on_the_other_sites(liver2: tuple, tmp_path: Path) -> None:
    spec, out = liver2
    alone = Scenario(spec.name, spec.seed, (spec.sites[1],))
    site_dir = generate_phantom(alone, tmp_path / "alone") / "site-b"
    assert digests(site_dir) == digests(out / "site-b")


def test_existing_identical_phantom_is_reused_without_rewriting(liver2: tuple) -> None:
    spec, out = liver2
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    start = time.monotonic()
    assert generate_phantom(spec, out) == out
    assert time.monotonic() - start < 0.5
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.parametrize("damage", ["deleted", "emptied", "truncated", "mask deleted", "row cut"])
def test_a_damaged_phantom_is_regenerated_not_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    spec = Scenario("s", 1, (tiny("a", 3), tiny("b", 3)))
    out = generate_phantom(spec, tmp_path / "p")
    before = digests(out)
    row = read_manifest(out / "b")[1]
    image, mask, manifest = out / "b" / row["image_delayed"], out / "b" / row["mask"], out / "b"
    if damage == "deleted":
        image.unlink()
    elif damage == "emptied":
        image.write_bytes(b"")
    elif damage == "truncated":  # not empty: caught by the byte total in phantom.json
        image.write_bytes(image.read_bytes()[:-100])
    elif damage == "mask deleted":
        mask.unlink()
    else:
        lines = (manifest / "manifest.csv").read_text().splitlines(keepends=True)
        (manifest / "manifest.csv").write_text("".join(lines[:-1]))
    with caplog.at_level(logging.INFO, logger="hepafed.progress"):
        assert generate_phantom(spec, out) == out
    assert digests(out) == before  # the same phantom again, complete
    reason = {
        "deleted": f"{image} is missing or empty",
        "emptied": f"{image} is missing or empty",
        "truncated": "add up to",
        "mask deleted": f"{mask} is missing or empty",
        "row cut": "lists 2 cases, not 3",
    }[damage]
    [record] = [r for r in caplog.records if "regenerating" in r.getMessage()]
    assert record.levelno == logging.WARNING  # not expected: the user should hear of it
    assert f"{out} is damaged" in record.getMessage() and reason in record.getMessage()
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_a_damaged_phantom_of_another_seed_is_still_refused(tmp_path: Path) -> None:
    spec = Scenario("s", 1, (tiny("a", 3),))
    out = generate_phantom(spec, tmp_path / "p")
    first = read_manifest(out / "a")[0]
    (out / "a" / first["image_portal"]).unlink()
    with pytest.raises(PhantomExistsError, match=r"scenario 's' seed 1, not 's' seed 2"):
        generate_phantom(spec, out, seed=2)
    assert not (out / "a" / first["image_portal"]).exists()  # nothing touched


def test_edited_scenario_with_same_name_and_seed_replaces_the_phantom(tmp_path: Path) -> None:
    site = tiny("a", 4)
    out = generate_phantom(Scenario("s", 1, (site,)), tmp_path / "p")
    bigger = Scenario("s", 1, (dataclasses.replace(site, n_cases=6),))
    generate_phantom(bigger, out)
    assert len(read_manifest(out / "a")) == 6
    assert (
        json.loads((out / "phantom.json").read_text())["resolved_scenario"]["sites"][0]["n_cases"]
        == 6
    )
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temporary folders left


def test_refuses_to_overwrite_a_folder_that_is_not_this_phantom(tmp_path: Path) -> None:
    site = tiny("a", 4)
    spec = Scenario("s", 1, (site,))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(PhantomExistsError, match="not an empty folder or a phantom"):
        generate_phantom(spec, foreign)
    assert (foreign / "notes.txt").read_text() == "precious"
    other = generate_phantom(spec, tmp_path / "other")
    with pytest.raises(PhantomExistsError, match=r"scenario 's' seed 1, not 's' seed 2"):
        generate_phantom(spec, other, seed=2)
    (tmp_path / "empty").mkdir()
    assert (generate_phantom(spec, tmp_path / "empty") / "phantom.json").is_file()


def test_a_scenario_built_in_code_gets_the_checks_of_a_scenario_file(tmp_path: Path) -> None:
    # 4 cases, 2 malignant: round(0.25 x 2) = 0 test cases of each label
    small = SiteProfile("small", n_cases=4, fov_mm=120.0, pixel_spacing_mm=2.0)
    with pytest.raises(
        ScenarioError,
        match=r"^scenario 's': site\[0\]\.test_fraction = 0\.25: leaves site 'small' no test cases",
    ):
        generate_phantom(Scenario("s", 1, (small,)), tmp_path / "p")
    with pytest.raises(ScenarioError, match=r"seed = -1: must be in \[0, "):
        generate_phantom(Scenario("s", 1, (tiny("a", 3),)), tmp_path / "p", seed=-1)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_leaves_no_partial_phantom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sites = (
        tiny("a", 3),
        tiny("b", 3),
    )
    spec = Scenario("s", 1, sites)
    real = phantom.write_site

    def crash_on_b(site: SiteProfile, *args: object) -> dict:
        if site.name == "b":
            raise KeyboardInterrupt
        return real(site, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(phantom, "write_site", crash_on_b)
    with pytest.raises(KeyboardInterrupt):
        generate_phantom(spec, tmp_path / "p")
    assert list(tmp_path.iterdir()) == []
    # an existing older phantom survives an interrupted regeneration untouched
    monkeypatch.setattr(phantom, "write_site", real)
    old = generate_phantom(Scenario("s", 1, sites[:1]), tmp_path / "p")
    before = digests(old)
    monkeypatch.setattr(phantom, "write_site", crash_on_b)
    with pytest.raises(KeyboardInterrupt):
        generate_phantom(spec, old)
    assert digests(old) == before and [p.name for p in tmp_path.iterdir()] == ["p"]


# --- 3D ------------------------------------------------------------------------


def test_three_d_scenarios_write_volumes_through_the_same_generator(tmp_path: Path) -> None:
    site = tiny(
        "a", 3, fov_mm=150.0, pixel_spacing_mm=1.6, slice_thickness_mm=2.5, z_extent_mm=40.0
    )
    out = generate_phantom(Scenario("vol", 2, (site,), dims=3), tmp_path / "vol")
    for r in read_manifest(out / "a"):
        img = load_nifti(out / "a" / r["image_portal"])
        assert img.shape == (94, 94, 16) and img.get_data_dtype() == np.int16
        np.testing.assert_allclose(img.affine[:3, :3], np.diag([-1.6, 1.6, 2.5]), atol=1e-6)
        middle = img.affine @ np.array([46.5, 46.5, 7.5, 1.0])  # centre of the slab
        np.testing.assert_allclose(middle[:2], (30.0, -5.0), atol=1e-3)
        assert -20.0 <= middle[2] <= 20.0  # the lesion's height
        mask = np.asarray(load_nifti(out / "a" / r["mask"]).dataobj)
        assert mask.shape == (94, 94, 16)
        slices = np.flatnonzero(mask.any(axis=(0, 1)))
        assert 7 <= slices.mean() <= 8.5  # the lesion is in the middle of the slab
        assert len(slices) >= min(2, float(r["lesion_size_mm"]) * 0.7 / 2.5)


# --- lesion sizes --------------------------------------------------------------

MIX_KEYS = {"cyst": "cyst", "hemangioma": "hemangioma", "flash-hemangioma": "flash_hemangioma"}


@settings(max_examples=150, deadline=None)
@given(
    low=st.floats(4.0, 100.0),
    width=st.one_of(st.floats(0.0, 1.0), st.floats(0.0, 40.0)),
    median=st.floats(5.0, 80.0),
    spread=st.floats(0.0, 1.5),
    kind=st.sampled_from(LESION_TYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_sampled_lesion_sizes_respect_the_bounds_or_the_scenario_is_refused(
    low: float, width: float, median: float, spread: float, kind: str, seed: int
) -> None:
    high = min(max(low + width, 5.0), 120.0)
    # only the lesion type under test can be drawn (cysts stand in at a malignant case)
    drawn = MIX_KEYS.get(kind, "cyst")
    benign = {key: float(key == drawn) for key in MIX_KEYS.values()}
    raw = {
        "name": "a",
        "lesion_size_min_mm": low,
        "lesion_size_max_mm": high,
        "lesion_size_median_mm": median,
        "lesion_size_spread": spread,
        "atypical_hcc_fraction": float(kind == "atypical-hcc"),
        "benign_mix": benign,
    }
    try:
        spec = parse_scenario({"name": "s", "seed": 1, "site": [raw]}, "s.toml")
    except ScenarioError as error:
        # refused only when no size is possible, with a message naming the keys
        if low >= high:
            assert "site[0].lesion_size_max_mm" in str(error)
        else:
            assert kind == "flash-hemangioma" and low > FLASH_MAX_MM
            assert "site[0].lesion_size_min_mm" in str(error)
            assert "benign_mix.flash_hemangioma" in str(error)
        return
    label = int(kind in MALIGNANT_TYPES)
    case = anatomy.sample_case(
        spec.sites[0], label, np.random.default_rng(seed), scanner.FOV_CENTRE_MM
    )
    assert case.lesion.kind == kind
    assert low <= case.lesion.size_mm <= high
    assert kind != "flash-hemangioma" or case.lesion.size_mm <= FLASH_MAX_MM
    assert math.isfinite(case.lesion.size_mm)


def test_a_site_built_in_code_with_no_possible_size_is_an_error() -> None:
    site = SiteProfile("a", lesion_size_min_mm=25.0, benign_mix=BenignMix(0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"no flash-hemangioma diameter lies between"):
        simulate_case(site, 1, 0, 0, dims=2)


# --- physics -------------------------------------------------------------------


def test_typical_hcc_enhances_arterially_and_washes_out() -> None:
    site = quiet(SiteProfile("a"), atypical_hcc_fraction=0.0, lesion_size_median_mm=25.0)
    c = contrasts(site, label=1, n=16)
    arterial, portal, delayed = c.mean(axis=0)
    assert arterial > 25.0 and portal < -10.0 and delayed < -5.0
    assert (c[:, 0] > 0).mean() >= 0.8 and (c[:, 1] < 0).mean() >= 0.8


def test_cysts_are_water_dense_and_do_not_enhance() -> None:
    site = quiet(
        SiteProfile("a"),
        benign_mix=BenignMix(1.0, 0.0, 0.0),
        lesion_size_median_mm=25.0,
        lesion_size_spread=0.0,
    )
    for i in range(6):
        _, _, images, mask, _ = simulate_case(site, 3, i, 0, dims=2)
        core = ndimage.binary_erosion(mask[..., 0] > 0, iterations=2)
        means = [images[p, ..., 0][core].mean() for p in range(3)]
        assert all(0.0 <= m <= 20.0 for m in means)
        assert max(means) - min(means) < 2.0


def test_hemangiomas_fill_in_progressively_and_do_not_wash_out() -> None:
    site = quiet(
        SiteProfile("a"),
        benign_mix=BenignMix(0.0, 1.0, 0.0),
        lesion_size_median_mm=25.0,
        slow_hemangioma_fraction=0.0,
    )
    c = contrasts(site, label=0, n=16)
    assert (c[:, 2] > c[:, 0]).all()  # centripetal fill-in: brighter later
    assert c[:, 2].mean() > 10.0  # hyper to the liver when filled: no washout
    slow = contrasts(dataclasses.replace(site, slow_hemangioma_fraction=1.0), label=0, n=16)
    assert (slow[:, 2] > slow[:, 0]).all()  # slow ones fill in too ...
    assert slow[:, 2].mean() < c[:, 2].mean() - 10.0  # ... but stay darker: an HCC mimic


def test_flash_hemangiomas_mimic_hcc_arterially_but_never_wash_out() -> None:
    flash = quiet(SiteProfile("a"), benign_mix=BenignMix(0.0, 0.0, 1.0))
    c = contrasts(flash, label=0, n=16)
    assert c[:, 0].mean() > 40.0  # homogeneous arterial hyperenhancement
    assert (c[:, 1:] > -8.0).all()  # no washout in portal or delayed


def test_early_arterial_timing_weakens_hcc_arterial_hyperenhancement() -> None:
    site = quiet(SiteProfile("a"), atypical_hcc_fraction=0.0, lesion_size_median_mm=25.0)
    late = contrasts(dataclasses.replace(site, arterial_delay_s=38.0), label=1, n=16)
    early = contrasts(dataclasses.replace(site, arterial_delay_s=20.0), label=1, n=16)
    # the same patients (timing does not change the anatomy), imaged earlier
    assert late[:, 0].mean() - early[:, 0].mean() > 25.0
    assert (early[:, 0] < late[:, 0]).all()
    np.testing.assert_allclose(early[:, 1:], late[:, 1:])


def test_thick_slices_reduce_the_contrast_of_small_lesions() -> None:
    site = quiet(
        SiteProfile("a"),
        atypical_hcc_fraction=0.0,
        lesion_size_median_mm=6.0,
        lesion_size_spread=0.0,
    )
    thin = contrasts(dataclasses.replace(site, slice_thickness_mm=1.0), label=1, n=10)
    thick = contrasts(dataclasses.replace(site, slice_thickness_mm=8.0), label=1, n=10)
    # the 8 mm slice averages the 6 mm lesion with the liver above and below it
    assert np.abs(thick).mean() < 0.8 * np.abs(thin).mean()
    assert (np.abs(thick[:, 0]) < np.abs(thin[:, 0])).mean() >= 0.8


def test_noise_follows_dose_and_kernel() -> None:
    truth = np.full((96, 96, 1), 60.0, np.float32)
    measured = {}
    for kernel in ("soft", "standard", "sharp"):
        for dose in (1.0, 0.25):
            site = SiteProfile(
                "a",
                kernel=kernel,
                dose_factor=dose,
                noise_sigma_hu=12.0,
                slice_thickness_mm=2.5,
                fov_mm=144.0,
                pixel_spacing_mm=1.5,
            )
            grid = scanner.acquisition_grid(site, 0.0, dims=2)
            image = scanner.acquire(truth, site, grid, np.random.default_rng(0))
            measured[kernel, dose] = float(image.std())
            assert measured[kernel, dose] == pytest.approx(scanner.noise_sigma_hu(site), rel=0.1)
    assert measured["soft", 1.0] < measured["standard", 1.0] < measured["sharp", 1.0]
    for kernel in ("soft", "standard", "sharp"):
        assert measured[kernel, 0.25] == pytest.approx(2 * measured[kernel, 1.0], rel=0.1)


def test_calibration_and_bias_field() -> None:
    truth = np.full((64, 64, 1), 100.0, np.float32)
    site = SiteProfile(
        "a", noise_sigma_hu=0.0, hu_scale=1.1, hu_offset=-5.0, fov_mm=128.0, pixel_spacing_mm=2.0
    )
    grid = scanner.acquisition_grid(site, 0.0, dims=2)
    assert (scanner.acquire(truth, site, grid, np.random.default_rng(0)) == 105).all()
    shaded = dataclasses.replace(site, hu_scale=1.0, hu_offset=0.0, bias_field=0.1)
    image = scanner.acquire(truth, shaded, grid, np.random.default_rng(0)).astype(float)
    field = (image + 1000.0) / 1100.0  # multiplicative on attenuation
    assert 0.1 * 0.9 <= np.abs(field - 1).max() <= 0.1 + 1e-3
    assert np.abs(np.diff(field, axis=0)).max() < 0.01  # smooth, low frequency


# --- difficulty: the proxy classifier -----------------------------------------


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = stats.rankdata(scores)
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _expand(x: np.ndarray) -> np.ndarray:
    """Contrasts, their squares and pairwise products (a CNN is not linear in them)."""
    pairs = [x[:, i] * x[:, j] for i in range(3) for j in range(i, 3)]
    return np.column_stack([x, *pairs])


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-2
) -> Callable[[np.ndarray], np.ndarray]:
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.column_stack([np.ones(len(x)), (x - mu) / sd])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w
        p = 1.0 / (1.0 + np.exp(-s))
        penalty = np.r_[0.0, w[1:]]
        return (
            float(np.mean(np.logaddexp(0.0, s) - y * s) + l2 * penalty @ penalty),
            z.T @ (p - y) / len(y) + 2 * l2 * penalty,
        )

    w = optimize.minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
    return lambda xs: np.column_stack([np.ones(len(xs)), (xs - mu) / sd]) @ w


def site_features(site_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats, labels, splits = [], [], []
    for r in read_manifest(site_dir):
        images = np.stack(
            [np.asarray(load_nifti(site_dir / r[f"image_{p}"]).dataobj) for p in PHASES]
        )
        mask = np.asarray(load_nifti(site_dir / r["mask"]).dataobj)
        feats.append(contrast(images, mask, float(r["pixel_spacing_mm"])))
        labels.append(int(r["label"]))
        splits.append(r["split"])
    return np.array(feats), np.array(labels), np.array(splits)


@pytest.mark.slow
def test_liver5_is_learnable_not_trivial_and_harder_at_the_external_hospital(
    tmp_path: Path,
) -> None:
    spec = load_scenario("liver-5")
    start = time.monotonic()
    out = generate_phantom(spec, tmp_path / "liver-5")
    assert time.monotonic() - start < 120.0  # about 30 s on one core; generous when loaded
    data = {s: site_features(out / s) for s in (*spec.training_sites, *spec.external_sites)}
    train = [data[s] for s in spec.training_sites]
    x_train = np.concatenate([f[sp == "train"] for f, _, sp in train])
    y_train = np.concatenate([y[sp == "train"] for _, y, sp in train])
    x_test = np.concatenate([f[sp == "test"] for f, _, sp in train])
    y_test = np.concatenate([y[sp == "test"] for _, y, sp in train])
    score = _fit_logistic(_expand(x_train), y_train)
    in_dist = _auc(score(_expand(x_test)), y_test)
    ext_x, ext_y, ext_split = data["hospital-e"]
    assert (ext_split == "test").all()
    external = _auc(score(_expand(ext_x)), ext_y)
    print(f"proxy AUC: in-distribution {in_dist:.3f}, hospital-e {external:.3f}")
    assert 0.75 <= in_dist <= 0.95
    assert external < in_dist - 0.02
    # the malignant signature is there on average: arterial gain, portal washout
    malignant, benign = x_train[y_train == 1], x_train[y_train == 0]
    assert malignant[:, 0].mean() > 0 > malignant[:, 1].mean()
    assert benign[:, 2].mean() < malignant[:, 2].mean() or benign[:, 0].mean() < 0
