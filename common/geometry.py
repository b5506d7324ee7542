"""Voxel grids of a case's files: a spacing that is > 0 and finite, and one grid per case.

A loaded image (a MONAI ``MetaTensor`` from ``common.images.load_image``) carries its
affine, voxel index to RAS millimetres, for NIfTI and DICOM alike. ``grid_problems``
rejects a zero, negative, NaN or absurd voxel spacing and a singular affine (for NIfTI,
in the header as written, which nibabel and MONAI would quietly repair); ``alignment_problems``
rejects a mask or channel whose spacing, origin or axis directions differ from the case's
first channel, which equal shapes alone do not catch (a mask shifted by 90 mm). Both
``hepafed site check`` (``common.site_files.check_images``) and the loader
(``common.data.LoadCheckedd``) call them, so both name the same files in the same words.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.dicom import is_dicom_source

MIN_SPACING_MM = 1e-3  # a micrometre: no clinical image has finer voxels
MAX_SPACING_MM = 1e3  # a metre: a larger "voxel" is a unit or header error
SPACING_RTOL = 1e-3  # relative difference of spacing between files of one case
ORIGIN_TOL_VOXELS = 0.5  # origin offset between files of one case, in voxels of the first
DIRECTION_ATOL = 1e-3  # difference of the unit axis vectors (cosines)
MIN_ABS_DET = 1e-3  # |det| of the unit axis vectors: below it, axes (nearly) coincide
FIX_HEADER = "fix the file's header (NIfTI pixdim/affine, DICOM PixelSpacing and positions)"


@dataclass(frozen=True)
class Grid:
    """A file's voxel grid: the affine from voxel indices to RAS millimetres."""

    affine: np.ndarray  # (n + 1, n + 1)

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:-1, :-1], axis=0)

    @property
    def origin(self) -> np.ndarray:
        return self.affine[:-1, -1]

    @property
    def direction(self) -> np.ndarray:
        """Unit axis vectors as columns (a zero axis stays zero)."""
        spacing = self.spacing
        safe = np.where(spacing > 0, spacing, 1.0)
        return self.affine[:-1, :-1] / safe


def grid_of(image: Any) -> Grid | None:
    """The grid of a loaded image, or None when it carries no affine (a plain array)."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return None
    arr = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, float)
    return Grid(arr) if arr.ndim == 2 and arr.shape[0] == arr.shape[1] >= 3 else None


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _spacing_ok(spacing: Any) -> bool:
    values = np.asarray(spacing, float)
    return bool(((values >= MIN_SPACING_MM) & (values <= MAX_SPACING_MM)).all())


def _spacing_message(spacing: Any, where: str) -> str:
    return (
        f"voxel spacing {_fmt(spacing)} mm{where}: every spacing must be > 0 and finite "
        f"(from {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm); {FIX_HEADER}"
    )


def grid_problems(path: Path | str, image: Any) -> tuple[Grid | None, list[str]]:
    """The grid of one loaded file (None if unusable) and what is wrong with its spacing.

    A NIfTI file's header is judged as written: MONAI's reader quietly rebuilds a
    degenerate affine from ``pixdim`` and nibabel reads a zero ``pixdim`` as 1 mm, so
    the loaded affine alone would hide both."""
    header = nifti_header(path)
    if header is not None:
        ndim = int(header["dim"][0])
        pixdim = [float(v) for v in header["pixdim"][1 : min(ndim, 3) + 1]]
        if not _spacing_ok(pixdim):
            return None, [_spacing_message(pixdim, " in the NIfTI header (pixdim)")]
        affine = np.asarray(header.get_best_affine(), float)
        raw = np.linalg.norm(affine[:3, :3], axis=0)[: min(ndim, 3)]
        if not np.isfinite(affine).all() or not _spacing_ok(raw):
            return None, [_spacing_message(raw, " in the NIfTI header's affine (sform)")]
    grid = grid_of(image)
    if grid is None:
        return None, []
    if not np.isfinite(grid.affine).all():
        return None, [f"the affine has NaN/Inf entries; {FIX_HEADER}"]
    if not _spacing_ok(grid.spacing):
        return None, [_spacing_message(grid.spacing, "")]
    if abs(np.linalg.det(grid.direction)) < MIN_ABS_DET:
        return None, [f"the affine is singular: two voxel axes point the same way; {FIX_HEADER}"]
    return grid, []


def alignment_problems(grids: Mapping[str, Grid], shape: tuple[int, ...]) -> list[tuple[str, str]]:
    """``(column, message)`` for each file of a case whose grid differs from the first's.

    ``grids`` maps manifest columns (channels first, then ``mask``) to grids of files of
    one spatial ``shape``. Spacing must agree to ``SPACING_RTOL`` along every axis of more
    than one voxel (a single slice has no through-plane spacing to agree on), the origin
    to ``ORIGIN_TOL_VOXELS`` voxels of the first file, axis directions to ``DIRECTION_ATOL``.
    """
    items = list(grids.items())
    if len(items) < 2:
        return []
    ref_col, ref = items[0]
    out: list[tuple[str, str]] = []
    for col, grid in items[1:]:
        if grid.affine.shape != ref.affine.shape:
            out.append((col, f"has a {grid.affine.shape} affine, {ref_col} {ref.affine.shape}"))
            continue
        n = len(ref.spacing)
        axes = [i for i in range(n) if len(shape) != n or shape[i] > 1]
        diffs: list[str] = []
        if not np.allclose(grid.spacing[axes], ref.spacing[axes], rtol=SPACING_RTOL, atol=0.0):
            diffs.append(
                f"spacing {_fmt(grid.spacing)} mm, not {_fmt(ref.spacing)} "
                f"(tolerance {SPACING_RTOL:.1%})"
            )
        if not np.allclose(grid.direction, ref.direction, rtol=0.0, atol=DIRECTION_ATOL):
            diffs.append("voxel axes point in other directions (orientation differs)")
        offset = np.linalg.solve(ref.affine[:-1, :-1], grid.origin - ref.origin)
        if np.abs(offset).max() > ORIGIN_TOL_VOXELS:
            mm = float(np.linalg.norm(grid.origin - ref.origin))
            diffs.append(
                f"origin {_fmt(grid.origin)} mm is {mm:.4g} mm ({_fmt(offset)} voxels) from "
                f"{_fmt(ref.origin)} (tolerance {ORIGIN_TOL_VOXELS:g} voxel)"
            )
        if diffs:
            out.append(
                (
                    col,
                    f"not on {ref_col}'s grid: {'; '.join(diffs)}; the voxels would not line up "
                    f"with {ref_col}'s, so save the file on its image's grid (same affine)",
                )
            )
    return out


def nifti_header(path: Path | str) -> Any:
    """A NIfTI-1 file's header as written (before nibabel or MONAI repair it), or None for
    other files and unreadable headers (the reader's own error names those)."""
    p = Path(path)
    if is_dicom_source(p) or not p.name.lower().endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(p)) as f:
            block = f.read(348)
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(block), check=False)
    except Exception:  # not NIfTI-1 (or unreadable): the reader's own error says so
        return None
    return header if 1 <= int(header["dim"][0]) <= 7 else None
