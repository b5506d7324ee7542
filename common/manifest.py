"""A site's manifest: the CSV that lists its cases, and its validation.

A site is a folder with ``manifest.csv``. Columns:

- ``case_id`` (required, unique);
- ``image_<channel>`` for every channel of ``data.channels`` (e.g.
  ``image_arterial``): a NIfTI file or a DICOM series folder, relative to the
  site folder or absolute;
- ``mask``: the lesion mask (0/1) on the same grid, needed by both tasks
  (classification crops a lesion-centred region of interest from it);
- ``label``: 0 (benign) or 1 (malignant), required for ``lesion-malignancy``;
- ``split`` (optional): ``train``, ``val`` or ``test``. Without the column every
  case is assigned by a stable hash of its id (25 % test, see ``hash_split``);
- any other column is acquisition or case metadata (vendor, kernel, slice
  thickness, contrast timing...) and is kept as text.

For an image cell naming a DICOM series folder, the acquisition tags of the
series' first file (``common.dicom.acquisition_metadata``: ``vendor``,
``scanner_model``, ``kernel``, ``slice_thickness_mm``, ``kvp``,
``field_strength_t``, ``modality``, ``contrast_agent``, ``<channel>_delay_s``)
fill the case's metadata; a non-empty manifest cell of the same name wins, and
among channels the first one (in ``channels`` order) that has a tag wins.

``read_manifest`` checks the table; ``check_images`` opens every file. Both
report *every* problem, each naming the file, the row, the case and the field,
so that ``hepafed site check`` can print them all at once. Nothing is ever
dropped silently: a manifest with a problem is rejected as a whole.

A site at work opens its manifest with ``open_manifest`` instead: a problem of
the table itself still rejects it, but a row whose files or label are unusable
is kept with its problems (``SiteManifest.row_problems``), so that the loader
fails or skips that one case by ``data.on-bad-case`` (``common.badcases``).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from common.badcases import array_problems, load_problem, shape_problem
from common.dicom import DicomSeriesError, acquisition_metadata, is_dicom_source, read_series
from common.keys import Split, Task, choices

MANIFEST_NAME = "manifest.csv"
TEST_FRACTION_BY_HASH = 0.25


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a site's data, precise enough to fix it."""

    file: str
    field: str
    message: str
    row: int | None = None  # 1-based data row (the header is row 0)
    case_id: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.case_id:
            where += f" (case {self.case_id!r})"
        return f"{where}: {self.field}: {self.message}"


class ManifestError(ValueError):
    """A site's manifest or images are invalid; ``problems`` lists every issue."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in site data:\n{lines}")


@dataclass(frozen=True)
class Case:
    """One row of a manifest with paths resolved against the site folder."""

    case_id: str
    images: tuple[Path, ...]  # one per channel, in ``channels`` order
    mask: Path | None
    label: int | None
    split: str
    row: int
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteManifest:
    """A validated manifest: the site's cases and where they came from."""

    site_dir: Path
    channels: tuple[str, ...]
    cases: tuple[Case, ...]
    sha256: str  # of the manifest file's bytes, for provenance
    # case id -> what is wrong with its row (a missing file, a bad label); only
    # ``open_manifest`` keeps such rows, ``read_manifest`` rejects them
    row_problems: Mapping[str, tuple[Problem, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.site_dir.name

    @property
    def path(self) -> Path:
        return self.site_dir / MANIFEST_NAME

    def split(self, split: str) -> tuple[Case, ...]:
        """The cases of one split, in manifest order."""
        return tuple(c for c in self.cases if c.split == split)


def hash_split(case_id: str, test_fraction: float = TEST_FRACTION_BY_HASH) -> str:
    """A split that depends only on the case id, so it never changes between runs."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return Split.TEST.value if u < test_fraction else Split.TRAIN.value


def read_manifest(site_dir: Path | str, channels: Sequence[str], task: str) -> SiteManifest:
    """Parse and check a site's manifest table (files must exist; only DICOM headers are read)."""
    manifest, problems = parse_manifest(site_dir, channels, task)
    if problems:
        raise ManifestError(problems)
    return manifest


# Fields whose problem spoils one case only; any other problem spoils the table.
CASE_FIELDS = ("mask", "label")


def open_manifest(site_dir: Path | str, channels: Sequence[str], task: str) -> SiteManifest:
    """Like ``read_manifest``, but a row whose files or label are unusable is kept, its
    problems in ``row_problems``: the loader fails or skips it by ``data.on-bad-case``.

    Problems of the table itself (columns, case ids, splits) still raise ``ManifestError``.
    """
    manifest, problems = parse_manifest(site_dir, channels, task)
    fields = {*(f"image_{ch}" for ch in channels), *CASE_FIELDS}
    ids = {c.case_id for c in manifest.cases}
    table = [p for p in problems if p.field not in fields or p.case_id not in ids]
    if table:
        raise ManifestError(table)
    by_case: dict[str, tuple[Problem, ...]] = {}
    for p in problems:
        by_case[str(p.case_id)] = (*by_case.get(str(p.case_id), ()), p)
    return replace(manifest, row_problems=by_case)


def parse_manifest(
    site_dir: Path | str, channels: Sequence[str], task: str
) -> tuple[SiteManifest, list[Problem]]:
    """The manifest's cases and every problem found in the table (raises only if unusable)."""
    site_dir = Path(site_dir)
    path = site_dir / MANIFEST_NAME
    fname = str(path)
    if not path.is_file():
        raise ManifestError(
            [Problem(fname, "manifest", f"not found: a site folder needs a {MANIFEST_NAME}")]
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError([Problem(fname, "manifest", f"not UTF-8 text: {e}")]) from e
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    image_cols = [f"image_{ch}" for ch in channels]
    required = ["case_id", *image_cols, "mask"]
    if task == Task.MALIGNANCY:
        required.append("label")
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(
            [
                Problem(
                    fname,
                    "header",
                    f"missing column(s) {', '.join(missing)}; the header is {', '.join(header)}",
                )
            ]
        )
    known = {*required, "label", "split"}
    problems: list[Problem] = []
    cases: list[Case] = []
    seen: dict[str, int] = {}
    has_split = "split" in header
    for row_no, row in enumerate(reader, start=1):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        cid = row.get("case_id", "")

        def bad(fld: str, msg: str, row_no: int = row_no, cid: str = cid) -> None:
            problems.append(Problem(fname, fld, msg, row_no, cid or None))

        if not cid:
            bad("case_id", "empty: every case needs an id")
        elif cid in seen:
            bad("case_id", f"duplicate of row {seen[cid]}: case ids must be unique")
        else:
            seen[cid] = row_no
        images = tuple(_resolve(site_dir, row[c]) for c in image_cols)
        for col, img in zip(image_cols, images, strict=True):
            if not row[col]:
                bad(col, "empty: give the image path for this channel")
            elif not img.exists():
                bad(col, f"file not found: {img}")
        mask = _resolve(site_dir, row["mask"]) if row.get("mask") else None
        if mask is None:
            bad("mask", "empty: both tasks need the lesion mask")
        elif not mask.exists():
            bad("mask", f"file not found: {mask}")
        label = _parse_label(row.get("label", ""), task, bad)
        split = row.get("split", "") if has_split else hash_split(cid)
        if split not in {s.value for s in Split}:
            bad("split", f"{split!r} is not a valid split; use one of {choices(Split)}")
        metadata = _with_dicom_metadata(
            {k: v for k, v in row.items() if k not in known}, channels, images
        )
        cases.append(Case(cid, images, mask, label, split, row_no, metadata))
    if not cases and not problems:
        problems.append(Problem(fname, "manifest", "lists no cases"))
    manifest = SiteManifest(
        site_dir, tuple(channels), tuple(cases), hashlib.sha256(raw).hexdigest()
    )
    return manifest, problems


def _with_dicom_metadata(
    metadata: dict[str, str], channels: Sequence[str], images: Sequence[Path]
) -> dict[str, str]:
    """Manifest metadata completed by the DICOM headers of the case's series (cells win)."""
    for channel, img in zip(channels, images, strict=True):
        if not (is_dicom_source(img) and img.exists()):
            continue
        for key, value in acquisition_metadata(img, channel).items():
            if not metadata.get(key):
                metadata[key] = value
    return metadata


def check_images(manifest: SiteManifest, spatial_dims: int = 2) -> list[Problem]:
    """Open every image and mask; report unreadable files, shape and value problems.

    A DICOM series folder is first checked header by header
    (``common.dicom.read_series``): non-DICOM files, mixed series, missing or
    duplicate slices and uneven slice spacing are named before any voxel loads.
    The checks are ``common.badcases``'s, the ones the loader applies to every case.
    """
    from common.images import load_image  # heavy import (MONAI), only when checking

    problems: list[Problem] = []
    fname = str(manifest.path)
    cols = [f"image_{ch}" for ch in manifest.channels]
    for case in manifest.cases:

        def bad(fld: str, msg: str, case: Case = case) -> None:
            problems.append(Problem(fname, fld, msg, case.row, case.case_id))

        shapes: dict[str, tuple[int, ...]] = {}
        for col, img_path in [*zip(cols, case.images, strict=True), ("mask", case.mask)]:
            if img_path is None or not img_path.exists():
                continue  # reported by the table check
            if img_path.is_dir():
                try:
                    read_series(img_path)
                except DicomSeriesError as e:
                    bad(col, str(e))
                    continue
            try:
                arr = np.asarray(load_image(img_path))
            except Exception as e:  # any reader failure is the same problem for a user
                bad(col, load_problem(img_path, e))
                continue
            shape, messages = array_problems(col, img_path, arr, spatial_dims)
            for message in messages:
                bad(col, message)
            if shape is not None:
                shapes[col] = shape
        if (mismatch := shape_problem(shapes)) is not None:
            bad("shape", mismatch)
    return problems


def inspect_site(
    site_dir: Path | str, channels: Sequence[str], task: str, spatial_dims: int = 2
) -> tuple[SiteManifest, list[Problem]]:
    """Check the table and open every existing file; return all problems, raise none.

    Raises ``ManifestError`` only when the manifest itself is unusable (missing,
    not text, missing columns).
    """
    manifest, problems = parse_manifest(site_dir, channels, task)
    return manifest, problems + check_images(manifest, spatial_dims)


def validate_site(
    site_dir: Path | str, channels: Sequence[str], task: str, spatial_dims: int = 2
) -> SiteManifest:
    """Read the manifest and open every file; raise ``ManifestError`` on any problem."""
    manifest, problems = inspect_site(site_dir, channels, task, spatial_dims)
    if problems:
        raise ManifestError(problems)
    return manifest


def _resolve(site_dir: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else site_dir / p


def _parse_label(value: str, task: str, report: Callable[[str, str], None]) -> int | None:
    """The 0/1 label, or None (reported through ``report`` when it is required)."""
    if not value:
        if task == Task.MALIGNANCY:
            report("label", "empty: lesion-malignancy needs 0 (benign) or 1 (malignant)")
        return None
    try:
        label = int(float(value)) if float(value).is_integer() else None
    except ValueError:
        label = None
    if label not in (0, 1):
        report("label", f"{value!r} is out of range: use 0 (benign) or 1 (malignant)")
        return None
    return label


def list_site_dirs(root: Path | str) -> list[Path]:
    """Site folders (those holding a manifest) under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"site root {root} is not a folder")
    return sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file())
