"""Write a scenario's hospitals to disk in the site data contract, deterministically.

``generate_phantom(scenario, out_dir)`` writes::

    out_dir/phantom.json                          scenario, seed, dims, generator version
    out_dir/<site>/manifest.csv                   one row per case (MANIFEST_COLUMNS)
    out_dir/<site>/images/<case_id>_<phase>.nii.gz  int16 HU, phase in PHASES
    out_dir/<site>/masks/<case_id>.nii.gz         uint8 lesion mask

Every case draws from its own random streams, seeded by (seed, site name,
case index, purpose), so a case never depends on the others and the same
scenario and seed give byte-identical files (gzip is written with mtime 0).
The phantom is built in a temporary sibling folder and renamed into place, so
an interrupted run never leaves half a phantom; a folder that already holds
the same phantom, with every file its manifests list present and of the size
written, is reused as it is.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import json
import logging
import os
import secrets
import shutil
import stat
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import nibabel as nib
import numpy as np

from common.keys import Split
from simulations import anatomy, scanner
from simulations.scenario import Scenario, validate_scenario
from simulations.site_profile import SiteProfile

log = logging.getLogger("hepafed.progress")

# bump whenever the same scenario and seed would give other files (or phantom.json changes);
# 2.0: affine in RAS+ patient millimetres, per-site byte totals in phantom.json
# 2.1: a val split at training sites (val_fraction), n_val in the site summaries
GENERATOR_VERSION = "2.1"
PHASES = ("arterial", "portal", "delayed")
PHANTOM_JSON = "phantom.json"
MANIFEST_CSV = "manifest.csv"
FILE_COLUMNS = ("image_arterial", "image_portal", "image_delayed", "mask")
MANIFEST_COLUMNS = (
    "case_id",
    "image_arterial",
    "image_portal",
    "image_delayed",
    "mask",
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
GZIP_LEVEL = 1  # level 1 is 3x faster than 6 and ~2 % larger on noisy images


class PhantomExistsError(FileExistsError):
    """The output folder holds something other than this scenario's phantom."""


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
) -> tuple[anatomy.Case, scanner.Grid, np.ndarray, np.ndarray]:
    """One case: the patient, the grid, int16 images ``(3, nx, ny, nz)`` and the uint8 mask."""
    case = anatomy.sample_case(
        site, label, case_rng(seed, site.name, index, STREAM_CASE), scanner.FOV_CENTRE_MM
    )
    grid = scanner.acquisition_grid(site, case.lesion.centre[2], dims)
    times = (site.arterial_delay_s, site.portal_delay_s, site.delayed_delay_s)
    truth, fraction = scanner.render(
        case, grid, times, case_rng(seed, site.name, index, STREAM_TEXTURE)
    )
    noise = case_rng(seed, site.name, index, STREAM_NOISE)
    images = np.stack([scanner.acquire(truth[p], site, grid, noise) for p in range(3)])
    mask = fraction >= 0.5
    if not mask.any():  # a lesion thinner than half a voxel: mark its densest voxel
        mask.flat[int(np.argmax(fraction))] = True
    return case, grid, images, mask.astype(np.uint8)


def nifti_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray) -> bytes:
    """The 352 bytes before the voxels of a single-file NIfTI-1 (header, no extensions)."""
    img = nib.Nifti1Image(np.zeros(shape, dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    data = img.to_bytes()
    return data[: len(data) - int(np.prod(shape)) * np.dtype(dtype).itemsize]


def nifti_gz(array: np.ndarray, affine: np.ndarray, header: bytes | None = None) -> bytes:
    """A .nii.gz file's bytes; reproducible because the gzip header's mtime is 0.

    ``header`` (from ``nifti_header`` for this shape, dtype and affine) saves rebuilding it.
    """
    header = header or nifti_header(array.shape, array.dtype, affine)
    voxels = np.asarray(array).tobytes(order="F")  # NIfTI stores x fastest
    return gzip.compress(header + voxels, compresslevel=GZIP_LEVEL, mtime=0)


def _fmt(value: float) -> str:
    return f"{value:g}"


def write_manifest(site_dir: Path, columns: Sequence[str], rows: list[dict[str, str]]) -> bytes:
    """Write ``site_dir/manifest.csv`` (a header, one row per case, "\\n" line ends); its bytes."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = buffer.getvalue().encode("utf-8")
    (site_dir / MANIFEST_CSV).write_bytes(manifest)
    return manifest


def write_site(site: SiteProfile, seed: int, dims: int, site_dir: Path) -> dict[str, Any]:
    """Write one hospital's images, masks and manifest; return a summary for phantom.json."""
    (site_dir / "images").mkdir(parents=True)
    (site_dir / "masks").mkdir()
    labels, splits = labels_and_splits(site, seed)
    rows = []
    n_bytes = 0  # of every file listed in the manifest, and the manifest
    for index in range(site.n_cases):
        case_id = f"{site.name}-{index + 1:04d}"
        case, grid, images, mask = simulate_case(site, seed, index, int(labels[index]), dims)
        affine = grid.affine()  # per case: the slices sit at the lesion's height
        image_header = nifti_header(images[0].shape, images.dtype, affine)
        row = {"case_id": case_id}
        for p, phase in enumerate(PHASES):
            row[f"image_{phase}"] = f"images/{case_id}_{phase}.nii.gz"
            blob = nifti_gz(images[p], affine, image_header)
            (site_dir / row[f"image_{phase}"]).write_bytes(blob)
            n_bytes += len(blob)
        row["mask"] = f"masks/{case_id}.nii.gz"
        blob = nifti_gz(mask, affine)
        (site_dir / row["mask"]).write_bytes(blob)
        n_bytes += len(blob)
        row.update(
            label=str(case.label),
            split=splits[index],
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
        rows.append(row)
    manifest = write_manifest(site_dir, MANIFEST_COLUMNS, rows)
    return {
        "name": site.name,
        "role": site.role,
        "n_cases": site.n_cases,
        "n_malignant": int(labels.sum()),
        "n_test": splits.count(Split.TEST.value),
        "n_val": splits.count(Split.VAL.value),
        "matrix": list(grid.shape),
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


def _read_identity(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / PHANTOM_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _site_problem(site_dir: Path, summary: dict[str, Any], n_cases: int) -> str | None:
    """Why a written site folder is not intact, or None: stat checks only, no hashing.

    Its manifest must list ``n_cases`` cases, every image and mask it lists must be a
    non-empty file, and their sizes and the manifest's must add up to ``summary["bytes"]``
    (as written), which catches a truncated file.
    """
    manifest = site_dir / MANIFEST_CSV
    try:
        text = manifest.read_bytes()
        rows = list(csv.DictReader(io.StringIO(text.decode("utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error):
        return f"{manifest} is missing or unreadable"
    if len(rows) != n_cases:
        return f"{manifest} lists {len(rows)} cases, not {n_cases}"
    total = len(text)
    # the file columns (FILE_COLUMNS for CT): every image column and the mask
    header = text.decode("utf-8").split("\n", 1)[0].split(",")
    columns = [c for c in header if c.startswith("image_") or c == "mask"]
    for row in rows:
        for column in columns:
            path = site_dir / (row.get(column) or "?")
            try:
                info = path.stat()
            except OSError:
                info = None
            if info is None or not stat.S_ISREG(info.st_mode) or info.st_size == 0:
                return f"{path} is missing or empty"
            total += info.st_size
    if total != summary.get("bytes"):
        return (
            f"the files of {site_dir} add up to {total} bytes, not the "
            f"{summary.get('bytes')} written: one was changed or truncated"
        )
    return None


def _stale(found: dict[str, Any] | None, identity: dict[str, Any]) -> str | None:
    """How a phantom.json read from disk differs from this phantom's, or None if it does not."""
    if found is None:
        return f"no readable {PHANTOM_JSON}"
    differing = [k for k in identity if found.get(k) != identity[k]]
    return f"{PHANTOM_JSON} differs in " + ", ".join(differing) if differing else None


def _damage(out_dir: Path, found: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """What is missing or altered in the files of a phantom whose phantom.json matches."""
    written = found.get("sites")
    summaries = (
        {s.get("name"): s for s in written if isinstance(s, dict)}
        if isinstance(written, list)
        else {}
    )
    for site in identity["resolved_scenario"]["sites"]:
        if site["name"] not in summaries:
            return f"{PHANTOM_JSON} has no summary of site {site['name']!r}"
        problem = _site_problem(out_dir / site["name"], summaries[site["name"]], site["n_cases"])
        if problem is not None:
            return problem
    return None


def _reusable(out_dir: Path, identity: dict[str, Any]) -> bool:
    """Whether ``out_dir`` holds this phantom, complete and intact."""
    found = _read_identity(out_dir)
    return _stale(found, identity) is None and _damage(out_dir, found or {}, identity) is None


def _check_replaceable(out_dir: Path, scenario: _Named) -> None:
    """Refuse to touch a non-empty folder unless it holds a phantom of this scenario+seed."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    found = _read_identity(out_dir) if out_dir.is_dir() else None
    if found is None:
        raise PhantomExistsError(
            f"{out_dir} exists and is not an empty folder or a phantom (no readable "
            f"{PHANTOM_JSON}); refusing to overwrite it: choose another --out or remove it"
        )
    if (found.get("scenario"), found.get("seed")) != (scenario.name, scenario.seed):
        raise PhantomExistsError(
            f"{out_dir} holds the phantom of scenario {found.get('scenario')!r} seed "
            f"{found.get('seed')!r}, not {scenario.name!r} seed {scenario.seed}; refusing to "
            "overwrite it: choose another --out or remove it"
        )


def _move_into_place(tmp: Path, out_dir: Path, identity: dict[str, Any]) -> None:
    """Rename the finished phantom onto ``out_dir``, replacing an empty or stale folder."""
    old = None
    if out_dir.exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        else:
            old = out_dir.with_name(f".{out_dir.name}.old-{secrets.token_hex(4)}")
            out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except OSError:
        # another process may have finished the same phantom in the meantime
        if not _reusable(out_dir, identity):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


class _Named(Protocol):
    """What the writer needs to know of a scenario: its name and seed."""

    @property
    def name(self) -> str: ...

    @property
    def seed(self) -> int: ...


class SiteWriter(NamedTuple):
    """One site of a phantom: its name, case count and the function that writes its folder
    (given the folder to create) and returns its summary for phantom.json."""

    name: str
    n_cases: int
    write: Callable[[Path], dict[str, Any]]


def write_phantom(
    scenario: _Named, out_dir: Path, identity: dict[str, Any], writers: Sequence[SiteWriter]
) -> Path:
    """Write (or reuse) a phantom whose phantom.json starts with ``identity``; return ``out_dir``.

    ``identity`` holds at least ``scenario``, ``seed`` and ``resolved_scenario`` (whose
    ``sites`` give each site's ``name`` and ``n_cases``): a folder whose phantom.json has the
    same identity and whose files are intact is reused; one of the same scenario name and
    seed is replaced; anything else raises PhantomExistsError. The sites are written into a
    temporary sibling folder that is renamed onto ``out_dir`` when complete.
    """
    found = _read_identity(out_dir)
    stale = _stale(found, identity)
    damage = _damage(out_dir, found, identity) if found is not None and stale is None else None
    if found is not None and stale is None and damage is None:
        log.info("phantom %s (seed %d): reusing %s", scenario.name, scenario.seed, out_dir)
        return out_dir
    _check_replaceable(out_dir, scenario)
    if damage is not None:  # unexpected: files of a finished phantom went missing or changed
        log.warning("phantom %s: %s is damaged (%s); regenerating", scenario.name, out_dir, damage)
    elif found is not None:
        log.info(
            "phantom %s: %s holds an older or edited version (%s); regenerating",
            scenario.name,
            out_dir,
            stale,
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        summaries = []
        for writer in writers:
            start = time.monotonic()
            summaries.append(writer.write(tmp / writer.name))
            log.info(
                "phantom %s: %s, %d cases in %.1f s",
                scenario.name,
                writer.name,
                writer.n_cases,
                time.monotonic() - start,
            )
        text = json.dumps({**identity, "sites": summaries}, indent=2, sort_keys=True)
        (tmp / PHANTOM_JSON).write_text(text + "\n", encoding="utf-8")
        _move_into_place(tmp, out_dir, identity)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
