"""A phantom's folder: written into a temporary sibling and renamed into place when
complete, reused when its phantom.json names the same phantom and its files are intact,
never written over anything else (``PhantomExistsError``). Shared by the CT phantom
(``simulations.phantom``) and the MRI phantom (``simulations.mri_phantom``), with the
reproducible NIfTI and manifest writers both use.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import nibabel as nib
import numpy as np

log = logging.getLogger("hepafed.progress")

PHANTOM_JSON = "phantom.json"
MANIFEST_CSV = "manifest.csv"
GZIP_LEVEL = 1  # level 1 is 3x faster than 6 and ~2 % larger on noisy images
# the file columns besides the images (``image_*``) of a CT or MRI phantom's manifest
MASK_COLUMNS = ("mask", "liver_mask")


class PhantomExistsError(FileExistsError):
    """The output folder holds something other than this scenario's phantom."""


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


def write_manifest(site_dir: Path, columns: Sequence[str], rows: list[dict[str, str]]) -> bytes:
    """Write ``site_dir/manifest.csv`` (a header, one row per case, "\\n" line ends); its bytes."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = buffer.getvalue().encode("utf-8")
    (site_dir / MANIFEST_CSV).write_bytes(manifest)
    return manifest


def _read_identity(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / PHANTOM_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _site_problem(site_dir: Path, summary: dict[str, Any], n_cases: int) -> str | None:
    """Why a written site folder is not intact, or None: stat checks only, no hashing.

    Its manifest must list ``n_cases`` cases, every image, mask and liver mask it lists must
    be a non-empty file, and their sizes and the manifest's must add up to ``summary["bytes"]``
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
    # the file columns (FILE_COLUMNS for CT): every image column, the mask and the liver mask
    header = text.decode("utf-8").split("\n", 1)[0].split(",")
    columns = [c for c in header if c.startswith("image_") or c in MASK_COLUMNS]
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
