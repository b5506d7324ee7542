"""Write an MRI scenario's hospitals to disk in the site data contract, deterministically.

``generate_mri_phantom(scenario, out_dir)`` writes::

    out_dir/phantom.json                             scenario, seed, dims, generator version
    out_dir/<site>/manifest.csv                      one row per case (``manifest_columns``)
    out_dir/<site>/images/<case_id>_<channel>.nii.gz int16, one file per channel
    out_dir/<site>/masks/<case_id>.nii.gz            uint8 lesion mask
    out_dir/<site>/livers/<case_id>.nii.gz           uint8 liver mask (the lesion included)

Channels: ``t2``, ``dwi`` (the high b value), ``adc`` (10^-6 mm^2/s), ``t1_pre``,
``t1_arterial``, ``t1_portal`` and ``t1_delayed`` (extracellular agent) or ``t1_hbp``
(gadoxetate). Every channel but the ADC map is in arbitrary units that depend on the
site's scanner and on the series (no normalisation is applied here). Labels: 0 benign,
1 primary malignant, 2 metastasis (task ``lesion-type``).

Determinism, caching and atomic writing are the CT phantom's (``phantom``): the same
random streams (seed, site name, case index, purpose), the same split drawing
(``phantom.stratified_splits``) and the same writer (``phantom.write_phantom``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from common.keys import Split
from simulations import mri_render, mri_scanner
from simulations.mri_lesions import MriCase, anatomy_profile, sample_mri_case
from simulations.mri_scenario import MODALITY, MriScenario, validate_mri_scenario
from simulations.mri_site import CLASSES, MriSiteProfile
from simulations.phantom import (
    STREAM_CASE,
    STREAM_NOISE,
    STREAM_TEXTURE,
    SiteWriter,
    case_rng,
    lesion_mask,
    liver_mask,
    nifti_gz,
    nifti_header,
    stratified_splits,
    write_manifest,
    write_phantom,
)
from simulations.scanner import FOV_CENTRE_MM, Grid, acquisition_grid

# bump whenever the same scenario and seed would give other files (or phantom.json changes);
# mri-1.1: a liver mask per case (livers/, the liver_mask column); images and masks unchanged
MRI_GENERATOR_VERSION = "mri-1.1"
T1_PHASES = ("arterial", "portal")  # then the late phase: "delayed" or "hbp"


def channels(site: MriSiteProfile) -> tuple[str, ...]:
    """The site's image channels, in manifest order."""
    return ("t2", "dwi", "adc", "t1_pre", *(f"t1_{p}" for p in (*T1_PHASES, site.late_phase)))


def manifest_columns(site: MriSiteProfile) -> tuple[str, ...]:
    """The manifest's columns: files, label and split, then text metadata."""
    late = site.late_phase
    return (
        "case_id",
        *(f"image_{c}" for c in channels(site)),
        "mask",
        "liver_mask",
        "label",
        "split",
        "lesion_class",
        "lesion_subtype",
        "lesion_size_mm",
        "modality",
        "vendor",
        "scanner_model",
        "field_strength_t",
        "slice_thickness_mm",
        "pixel_spacing_mm",
        "contrast_agent",
        "t2_tr_ms",
        "t2_te_ms",
        "dwi_b_values",
        "t1_tr_ms",
        "t1_te_ms",
        "t1_flip_deg",
        "t1_arterial_delay_s",
        "t1_portal_delay_s",
        f"t1_{late}_delay_s",
        "cirrhosis",
    )


def classes_and_splits(site: MriSiteProfile, seed: int) -> tuple[np.ndarray, list[str]]:
    """Exact class counts (``MriSiteProfile.splits``), a test split stratified by class (all
    test at an external site) and a val split from the remaining cases, drawn as the CT
    phantom draws its own: ``val_fraction`` never changes a label or the test split."""
    sizes = site.splits
    return stratified_splits(seed, site.name, sizes.counts, sizes.test, sizes.val)


def simulate_mri_case(
    site: MriSiteProfile, seed: int, index: int, label: int, dims: int
) -> tuple[MriCase, Grid, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One case: the patient, the grid, the int16 images by channel, the uint8 lesion mask
    and the uint8 liver mask (the lesion included, as the CT phantom's
    ``phantom.liver_mask``)."""
    case = sample_mri_case(
        site, label, case_rng(seed, site.name, index, STREAM_CASE), FOV_CENTRE_MM
    )
    grid = acquisition_grid(anatomy_profile(site, 0.0), case.lesion.centre[2], dims)
    truth, fraction, liver = mri_render.render(
        case, site, grid, case_rng(seed, site.name, index, STREAM_TEXTURE)
    )
    noise = case_rng(seed, site.name, index, STREAM_NOISE)
    coil = mri_scanner.coil_sensitivity(noise, grid, site.bias_field)

    def acquire(key: str, sequence: str) -> np.ndarray:
        return mri_scanner.acquire(truth[key], site, sequence, grid, coil, noise)

    images: dict[str, np.ndarray] = {}
    t2 = acquire("t2", "t2")
    images["t2"] = mri_scanner.stored(t2, mri_scanner.series_gain(noise, site))
    low, high = acquire("dwi_low", "dwi"), acquire("dwi_high", "dwi")
    images["dwi"] = mri_scanner.stored(high, mri_scanner.series_gain(noise, site))
    images["adc"] = mri_scanner.adc_image(low, high, site)
    dynamic_gain = mri_scanner.series_gain(noise, site)  # one dynamic series, one prescan
    for channel, key in zip(channels(site)[3:], mri_render.SIGNALS[3:], strict=True):
        images[channel] = mri_scanner.stored(acquire(key, "t1"), dynamic_gain)
    mask = lesion_mask(fraction)
    return case, grid, images, mask, liver_mask(liver, mask)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _metadata(site: MriSiteProfile, case: MriCase) -> dict[str, str]:
    late = site.late_phase
    return {
        "lesion_class": CLASSES[case.label],
        "lesion_subtype": case.lesion.subtype,
        "lesion_size_mm": f"{case.lesion.size_mm:.1f}",
        "modality": "MR",
        "vendor": site.vendor,
        "scanner_model": site.scanner_model,
        "field_strength_t": _fmt(site.field_strength_t),
        "slice_thickness_mm": _fmt(site.slice_thickness_mm),
        "pixel_spacing_mm": _fmt(site.pixel_spacing_mm),
        "contrast_agent": site.contrast_agent,
        "t2_tr_ms": _fmt(site.t2_tr_ms),
        "t2_te_ms": _fmt(site.t2_te_ms),
        "dwi_b_values": f"{site.dwi_b_low:g}/{site.dwi_b_high:g}",
        "t1_tr_ms": _fmt(site.t1_tr_ms),
        "t1_te_ms": _fmt(site.t1_te_ms),
        "t1_flip_deg": _fmt(site.t1_flip_deg),
        "t1_arterial_delay_s": _fmt(site.arterial_delay_s),
        "t1_portal_delay_s": _fmt(site.portal_delay_s),
        f"t1_{late}_delay_s": _fmt(site.late_delay_s),
        "cirrhosis": "1" if case.anatomy.cirrhosis > 0 else "0",
    }


def write_mri_site(site: MriSiteProfile, seed: int, dims: int, site_dir: Path) -> dict[str, Any]:
    """Write one MRI hospital's images, masks, liver masks and manifest; return its
    phantom.json summary."""
    (site_dir / "images").mkdir(parents=True)
    (site_dir / "masks").mkdir()
    (site_dir / "livers").mkdir()
    labels, splits = classes_and_splits(site, seed)
    rows = []
    n_bytes = 0  # of every file listed in the manifest, and the manifest
    shape: tuple[int, ...] = ()
    for index in range(site.n_cases):
        case_id = f"{site.name}-{index + 1:04d}"
        case, grid, images, mask, liver = simulate_mri_case(
            site, seed, index, int(labels[index]), dims
        )
        affine = grid.affine()
        shape = grid.shape
        header = nifti_header(shape, np.dtype(np.int16), affine)
        row = {"case_id": case_id}
        for channel, image in images.items():
            row[f"image_{channel}"] = f"images/{case_id}_{channel}.nii.gz"
            blob = nifti_gz(image, affine, header)
            (site_dir / row[f"image_{channel}"]).write_bytes(blob)
            n_bytes += len(blob)
        row["mask"] = f"masks/{case_id}.nii.gz"
        blob = nifti_gz(mask, affine)
        (site_dir / row["mask"]).write_bytes(blob)
        n_bytes += len(blob)
        row["liver_mask"] = f"livers/{case_id}.nii.gz"
        blob = nifti_gz(liver, affine)
        (site_dir / row["liver_mask"]).write_bytes(blob)
        n_bytes += len(blob)
        row.update(label=str(case.label), split=splits[index], **_metadata(site, case))
        rows.append(row)
    manifest = write_manifest(site_dir, manifest_columns(site), rows)
    return {
        "name": site.name,
        "role": site.role,
        "n_cases": site.n_cases,
        "n_by_class": {c: int((labels == k).sum()) for k, c in enumerate(CLASSES)},
        "n_test": splits.count(Split.TEST.value),
        "n_val": splits.count(Split.VAL.value),
        "matrix": list(shape),
        "bytes": n_bytes + len(manifest),
    }


def _identity(scenario: MriScenario) -> dict[str, Any]:
    """What makes two MRI phantoms the same (as the CT phantom's, plus the modality)."""
    return {
        "scenario": scenario.name,
        "modality": MODALITY,
        "seed": scenario.seed,
        "dims": scenario.dims,
        "generator_version": MRI_GENERATOR_VERSION,
        "resolved_scenario": scenario.to_dict(),
    }


def generate_mri_phantom(scenario: MriScenario, out_dir: Path, seed: int | None = None) -> Path:
    """Write (or reuse) the MRI scenario's phantom in ``out_dir``; return ``out_dir``.

    As ``phantom.generate_phantom``: ``seed`` replaces the scenario's seed; ScenarioError
    for a scenario that breaks a rule of the check, PhantomExistsError for an ``out_dir``
    that holds something it must not replace.
    """
    if seed is not None:
        scenario = dataclasses.replace(scenario, seed=int(seed))
    validate_mri_scenario(scenario)
    writers = [
        SiteWriter(
            site.name,
            site.n_cases,
            functools.partial(write_mri_site, site, scenario.seed, scenario.dims),
        )
        for site in scenario.sites
    ]
    return write_phantom(scenario, Path(out_dir), _identity(scenario), writers)
