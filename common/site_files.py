"""Open every file a site's manifest lists, as ``hepafed site check`` does.

``check_images`` opens each case's images, lesion mask and liver mask (where it has one)
and reports unreadable files, shape, value and grid problems with the checks the loader
applies to every case (``common.badcases``, ``common.geometry``, ``common.checkedload``).
``inspect_site`` checks the table (``common.manifest.parse_manifest``) and then the files,
and returns every problem; ``validate_site`` raises ``ManifestError`` on any.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.badcases import BadInput, Problem, array_problems, load_problem, shape_problem
from common.dicom import DicomSeriesError, read_series
from common.dicomweb import DicomWebSource
from common.geometry import alignment_problems, grid_problems
from common.manifest import LIVER_MASK, Case, ManifestError, SiteManifest, parse_manifest


def check_images(manifest: SiteManifest, spatial_dims: int = 2) -> list[Problem]:
    """Open every image and mask (the liver mask too, where a case has one); report
    unreadable files, shape, value and grid problems.

    A DICOM series folder is first checked header by header
    (``common.dicom.read_series``): non-DICOM files, mixed series, missing or
    duplicate slices and uneven slice spacing are named before any voxel loads.
    The checks are ``common.badcases``'s and ``common.geometry``'s, the ones the loader
    applies to every case. A file outside the allowed folders is never opened.
    """
    from common.images import load_image  # heavy import (MONAI), only when checking

    problems: list[Problem] = []
    fname = str(manifest.path)
    cols = [f"image_{ch}" for ch in manifest.channels]
    for case in manifest.cases:

        def bad(fld: str, msg: str, kind: str = "", case: Case = case) -> None:
            problems.append(Problem(fname, fld, msg, case.row, case.case_id, kind=kind))

        shapes: dict[str, tuple[int, ...]] = {}
        grids = {}
        files = [*zip(cols, case.images, strict=True), ("mask", case.mask)]
        if case.liver_mask is not None:
            files.append((LIVER_MASK, case.liver_mask))
        for col, img_path in files:
            if img_path is None or not img_path.exists():
                continue  # reported by the table check
            if manifest.escape(img_path) is not None:
                continue  # reported by the table check; never opened
            if img_path.is_dir():
                try:
                    read_series(img_path)
                except DicomSeriesError as e:
                    bad(col, str(e))
                    continue
            try:
                img = load_image(img_path)
            except Exception as e:  # any reader failure is the same problem for a user
                bad(col, load_problem(img_path, e))
                continue
            shape, messages = array_problems(col, img_path, img, spatial_dims)
            for message in messages:
                bad(col, message)
            grid, spacing = grid_problems(img_path, img)
            for message in spacing:
                bad(col, message, BadInput.ZERO_SPACING)
            if shape is not None:
                shapes[col] = shape
                if grid is not None:
                    grids[col] = grid
        if (mismatch := shape_problem(shapes)) is not None:
            bad("shape", mismatch)
        elif grids and len(grids) == len(shapes):
            for col, message in alignment_problems(grids, next(iter(shapes.values()))):
                bad(col, message, BadInput.MASK_GEOMETRY)
    return problems


def inspect_site(
    site_dir: Path | str,
    channels: Sequence[str],
    task: str,
    spatial_dims: int = 2,
    *,
    data_root: Path | str | None = None,
    pacs: DicomWebSource | None = None,
) -> tuple[SiteManifest, list[Problem]]:
    """Check the table and open every existing file; return all problems, raise none.

    Raises ``ManifestError`` only when the manifest itself is unusable (missing,
    not UTF-8 text, NUL bytes, a missing, duplicate or unnamed column).
    """
    manifest, problems = parse_manifest(site_dir, channels, task, data_root=data_root, pacs=pacs)
    return manifest, problems + check_images(manifest, spatial_dims)


def validate_site(
    site_dir: Path | str,
    channels: Sequence[str],
    task: str,
    spatial_dims: int = 2,
    *,
    data_root: Path | str | None = None,
    pacs: DicomWebSource | None = None,
) -> SiteManifest:
    """Read the manifest and open every file; raise ``ManifestError`` on any problem."""
    manifest, problems = inspect_site(
        site_dir, channels, task, spatial_dims, data_root=data_root, pacs=pacs
    )
    if problems:
        raise ManifestError(problems)
    return manifest
