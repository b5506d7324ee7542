"""Write a scenario's hospitals to disk in the site data contract, deterministically.

``generate_phantom(scenario, out_dir)`` writes::

    out_dir/phantom.json                          scenario, seed, dims, generator version
    out_dir/<site>/manifest.csv                   one row per case (MANIFEST_COLUMNS)
    out_dir/<site>/images/<case_id>_<phase>.nii.gz  int16 HU, phase in PHASES
    out_dir/<site>/masks/<case_id>.nii.gz         uint8 lesion mask
    out_dir/<site>/livers/<case_id>.nii.gz        uint8 liver mask (the lesion included)

Every case draws from its own random streams, seeded by (seed, site name,
case index, purpose), so a case never depends on the others and the same
scenario and seed give byte-identical files (gzip is written with mtime 0).
The phantom is built in a temporary sibling folder and renamed into place, so
an interrupted run never leaves half a phantom; a folder that already holds
the same phantom, with every file its manifests list present and of the size
written, is reused as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.keys import Split
from simulations import anatomy, scanner
from simulations.phantom_folder import (  # noqa: F401  (the phantom's names, one place)
    MANIFEST_CSV,
    PHANTOM_JSON,
    PhantomExistsError,
    SiteWriter,
    nifti_gz,
    nifti_header,
    write_manifest,
    write_phantom,
)
from simulations.scenario import Scenario, validate_scenario
from simulations.site_profile import SiteProfile

log = logging.getLogger("hepafed.progress")

# bump whenever the same scenario and seed would give other files (or phantom.json changes);
# 2.0: affine in RAS+ patient millimetres, per-site byte totals in phantom.json
# 2.1: a val split at training sites (val_fraction), n_val in the site summaries
# 2.2: a liver mask per case (livers/, the liver_mask column); images and masks unchanged
GENERATOR_VERSION = "2.2"
# what a model trained and scored on the phantom sees (images, lesion masks, labels,
# splits): unchanged since 2.1, as 2.2 only added the liver masks (a test holds the
# images' hashes). Results keyed by the phantom (``hepafed study``) name this version.
TRAINING_DATA_VERSION = "2.1"
PHASES = ("arterial", "portal", "delayed")
FILE_COLUMNS = ("image_arterial", "image_portal", "image_delayed", "mask", "liver_mask")
MANIFEST_COLUMNS = (
    "case_id",
    "image_arterial",
    "image_portal",
    "image_delayed",
    "mask",
    "liver_mask",
    "label",
    "split",
    "lesion_type",
    "lesion_size_mm",
    "vendor",
    "scanner_model",
    "kernel",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "kvp",
    "dose_factor",
    "arterial_delay_s",
    "portal_delay_s",
    "delayed_delay_s",
    "cirrhosis",
)
STREAM_CASE, STREAM_TEXTURE, STREAM_NOISE = 0, 1, 2
# the site's val draw: a purpose no case stream uses (NumPy pads a shorter seed with zeros,
# so (seed, site, 2) would be case 2's own patient stream)
STREAM_VAL = 3


def site_number(name: str) -> int:
    """A stable integer for a site name (adding or reordering sites changes nothing else)."""
    return zlib.crc32(name.encode("utf-8"))


def case_rng(seed: int, site: str, index: int, stream: int) -> np.random.Generator:
    """The random stream of one purpose (case, texture, noise) of one case."""
    return np.random.default_rng([seed, site_number(site), index, stream])


def labels_and_splits(site: SiteProfile, seed: int) -> tuple[np.ndarray, list[str]]:
    """Exact prevalence, a test split stratified by label (all test if external), and a val
    split stratified by label out of the remaining (training) cases.

    The counts are ``site.split_sizes`` (which the scenario check also uses); this draws
    which cases they are. The val cases come from a stream of their own, drawn after the
    test split, so ``val_fraction`` never changes the labels or the test split.
    """
    sizes = site.split_sizes
    counts = (site.n_cases - sizes.n_malignant, sizes.n_malignant)
    return stratified_splits(seed, site.name, counts, sizes.test, sizes.val)


def stratified_splits(
    seed: int,
    site: str,
    counts: Sequence[int],
    test: Sequence[int],
    val: Sequence[int],
) -> tuple[np.ndarray, list[str]]:
    """Labels 0..K-1 (``counts[k]`` cases of label k) in a random order, ``test[k]`` of each
    label drawn for the test split, then ``val[k]`` of each label's remaining cases for val.

    Labels and test come from the site's stream ``(seed, site)``, val from a stream of its
    own, so a val count never moves a label or a test case. The labels start in descending
    order (K-1 first) before the shuffle: for two labels this is the order the binary
    phantom has always used, so its files stay byte-identical.
    """
    rng = np.random.default_rng([seed, site_number(site)])
    ordered = np.concatenate(
        [np.full(c, k, dtype=int) for k, c in reversed(list(enumerate(counts)))]
    )
    labels = rng.permutation(ordered).astype(int)
    split = np.full(labels.size, Split.TRAIN.value, dtype=object)
    for value in range(len(counts)):
        members = np.flatnonzero(labels == value)
        split[rng.permutation(members)[: test[value]]] = Split.TEST.value
    val_rng = np.random.default_rng([seed, site_number(site), 0, STREAM_VAL])
    for value in range(len(counts)):
        train = np.flatnonzero((labels == value) & (split == Split.TRAIN.value))
        split[val_rng.permutation(train)[: val[value]]] = Split.VAL.value
    return labels, [str(s) for s in split]


def simulate_case(
    site: SiteProfile,
    seed: int,
    index: int,
    label: int,
    dims: int,
) -> tuple[anatomy.Case, scanner.Grid, np.ndarray, np.ndarray, np.ndarray]:
    """One case: the patient, the grid, int16 images ``(3, nx, ny, nz)``, the uint8 lesion
    mask and the uint8 liver mask (``liver_mask``) on the same grid."""
    case = anatomy.sample_case(
        site, label, case_rng(seed, site.name, index, STREAM_CASE), scanner.FOV_CENTRE_MM
    )
    grid = scanner.acquisition_grid(site, case.lesion.centre[2], dims)
    times = (site.arterial_delay_s, site.portal_delay_s, site.delayed_delay_s)
    truth, fraction, liver = scanner.render(
        case, grid, times, case_rng(seed, site.name, index, STREAM_TEXTURE)
    )
    noise = case_rng(seed, site.name, index, STREAM_NOISE)
    images = np.stack([scanner.acquire(truth[p], site, grid, noise) for p in range(3)])
    mask = lesion_mask(fraction)
    return case, grid, images, mask, liver_mask(liver, mask)


def lesion_mask(fraction: np.ndarray) -> np.ndarray:
    """The reader's uint8 lesion mask: the voxels at least half lesion (the portal venous
    phase's fraction); a lesion thinner than half a voxel marks its densest voxel."""
    mask = fraction >= 0.5
    if not mask.any():
        mask.flat[int(np.argmax(fraction))] = True
    return mask.astype(np.uint8)


def liver_mask(liver_fraction: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """The uint8 liver mask: the voxels at least half liver (``scanner.render``), or-ed
    with the lesion mask, since the liver includes its lesion."""
    return ((liver_fraction >= 0.5) | (lesion > 0)).astype(np.uint8)


def _fmt(value: float) -> str:
    return f"{value:g}"


def write_case(
    site: SiteProfile, seed: int, dims: int, site_dir: Path, index: int, label: int, split: str
) -> tuple[dict[str, str], int, tuple[int, ...]]:
    """Write case ``index``'s images, mask and liver mask into ``site_dir`` (which has
    ``images/`` and ``masks/``; ``livers/`` is made if missing); return its manifest row, the
    bytes written and the grid's shape."""
    case_id = f"{site.name}-{index + 1:04d}"
    case, grid, images, mask, liver = simulate_case(site, seed, index, label, dims)
    affine = grid.affine()  # per case: the slices sit at the lesion's height
    image_header = nifti_header(images[0].shape, images.dtype, affine)
    row = {"case_id": case_id}
    n_bytes = 0
    for p, phase in enumerate(PHASES):
        row[f"image_{phase}"] = f"images/{case_id}_{phase}.nii.gz"
        blob = nifti_gz(images[p], affine, image_header)
        (site_dir / row[f"image_{phase}"]).write_bytes(blob)
        n_bytes += len(blob)
    row["mask"] = f"masks/{case_id}.nii.gz"
    blob = nifti_gz(mask, affine)
    (site_dir / row["mask"]).write_bytes(blob)
    n_bytes += len(blob)
    row["liver_mask"] = f"livers/{case_id}.nii.gz"
    blob = nifti_gz(liver, affine)
    (site_dir / "livers").mkdir(exist_ok=True)  # the timeline phantom makes the other two
    (site_dir / row["liver_mask"]).write_bytes(blob)
    n_bytes += len(blob)
    row.update(
        label=str(case.label),
        split=split,
        lesion_type=case.lesion.kind,
        lesion_size_mm=f"{case.lesion.size_mm:.1f}",
        vendor=site.vendor,
        scanner_model=site.scanner_model,
        kernel=site.kernel,
        slice_thickness_mm=_fmt(site.slice_thickness_mm),
        pixel_spacing_mm=_fmt(site.pixel_spacing_mm),
        kvp=str(site.kvp),
        dose_factor=_fmt(site.dose_factor),
        arterial_delay_s=_fmt(site.arterial_delay_s),
        portal_delay_s=_fmt(site.portal_delay_s),
        delayed_delay_s=_fmt(site.delayed_delay_s),
        cirrhosis="1" if case.cirrhosis > 0 else "0",
    )
    return row, n_bytes, grid.shape


def write_site(site: SiteProfile, seed: int, dims: int, site_dir: Path) -> dict[str, Any]:
    """Write one hospital's images, masks, liver masks and manifest; return a summary for
    phantom.json."""
    (site_dir / "images").mkdir(parents=True)
    (site_dir / "masks").mkdir()
    (site_dir / "livers").mkdir()
    labels, splits = labels_and_splits(site, seed)
    rows = []
    n_bytes = 0  # of every file listed in the manifest, and the manifest
    shape: tuple[int, ...] = ()
    for index in range(site.n_cases):
        row, written, shape = write_case(
            site, seed, dims, site_dir, index, int(labels[index]), splits[index]
        )
        rows.append(row)
        n_bytes += written
    manifest = write_manifest(site_dir, MANIFEST_COLUMNS, rows)
    return {
        "name": site.name,
        "role": site.role,
        "n_cases": site.n_cases,
        "n_malignant": int(labels.sum()),
        "n_test": splits.count(Split.TEST.value),
        "n_val": splits.count(Split.VAL.value),
        "matrix": list(shape),
        "bytes": n_bytes + len(manifest),
    }


def _identity(scenario: Scenario) -> dict[str, Any]:
    """What makes two phantoms the same: scenario (with its seed), dims and generator version."""
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "dims": scenario.dims,
        "generator_version": GENERATOR_VERSION,
        "resolved_scenario": scenario.to_dict(),
    }


def generate_phantom(scenario: Scenario, out_dir: Path, seed: int | None = None) -> Path:
    """Write (or reuse) the scenario's phantom in ``out_dir``; return ``out_dir``.

    ``seed`` replaces the scenario's seed: it is the seed used, and the one recorded in
    ``phantom.json``, at the top and in the resolved scenario. Raises ScenarioError if the
    scenario breaks a rule of the scenario check (``scenario.validate_scenario``), and
    PhantomExistsError if ``out_dir`` holds something it must not replace.
    """
    if seed is not None:
        scenario = dataclasses.replace(scenario, seed=int(seed))
    validate_scenario(scenario)
    writers = [
        # ``write_site`` is looked up when called, so a test may replace it
        SiteWriter(site.name, site.n_cases, functools.partial(_write_ct_site, site, scenario))
        for site in scenario.sites
    ]
    return write_phantom(scenario, Path(out_dir), _identity(scenario), writers)


def _write_ct_site(site: SiteProfile, scenario: Scenario, site_dir: Path) -> dict[str, Any]:
    return write_site(site, scenario.seed, scenario.dims, site_dir)
