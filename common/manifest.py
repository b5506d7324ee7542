"""A site's manifest: the CSV that lists its cases, and its validation.

A site is a folder with ``manifest.csv``. Columns:

- ``case_id`` (required, unique);
- ``image_<channel>`` for every channel of ``data.channels`` (e.g.
  ``image_arterial``): a NIfTI file or a DICOM series folder, relative to the
  site folder or absolute, but inside it (or inside an allowed ``data_root``;
  ``common.sitepaths``); or ``dicomweb:STUDY_UID/SERIES_UID``, a series on the
  site's DICOMweb server (``common.dicomweb``), retrieved into the site's cache
  folder and from there read as a DICOM series folder;
- ``mask``: the lesion mask (0/1) on the same grid (affine) as the images, needed
  by both tasks (classification crops a lesion-centred region of interest from it);
- ``liver_mask`` (optional): the liver mask (0/1, the lesion included) on the same grid,
  a path like ``mask``; an empty cell (or no column) is a case without one. It is used
  only to say where a saliency map lies (inside the liver, outside the lesion), never
  for training;
- ``label``: 0 (benign) or 1 (malignant), required for ``lesion-malignancy``;
- ``split`` (optional): ``train``, ``val`` or ``test``. Only ``train`` cases are
  trained on; ``val`` cases select the model and its operating threshold, ``test``
  cases judge it. Without the column every case is assigned by a stable hash of its
  id (25 % test, the rest train, see ``hash_split``);
- ``acquired`` (optional): the acquisition date of the case's images, and ``label_date``
  (optional): the date its label became known; ISO 8601 ``YYYY-MM-DD`` (a timestamp is
  reduced to its date), never in the future. A label date needs a label and is not before
  the acquisition date; an empty cell is "not recorded" (``common.dates``);
- any other column is acquisition or case metadata (vendor, kernel, slice
  thickness, contrast timing...) and is kept as text; the numeric ones must be
  plausible numbers (``common.metadata``).

The file must be UTF-8 CSV without NUL bytes, each column named once, each row with
exactly the header's fields (``common.csvtable``).

For an image cell naming a DICOM series folder, the acquisition tags of the
series' first file (``common.dicom.acquisition_metadata``: ``vendor``,
``scanner_model``, ``kernel``, ``slice_thickness_mm``, ``kvp``,
``field_strength_t``, ``modality``, ``contrast_agent``, ``<channel>_delay_s``)
fill the case's metadata; a non-empty manifest cell of the same name wins, and
among channels the first one (in ``channels`` order) that has a tag wins.

``read_manifest`` checks the table; ``common.site_files.check_images`` opens every
file (``inspect_site`` and ``validate_site`` do both). Both
report *every* problem, each naming the file, the row, the case and the field,
so that ``hepafed site check`` can print them all at once. Nothing is ever
dropped silently: a manifest with a problem is rejected as a whole.

A site at work opens its manifest with ``open_manifest`` instead: a problem of
the table itself still rejects it, but a row whose files or label are unusable
is kept with its problems (``SiteManifest.row_problems``), so that the loader
fails or skips that one case by ``data.on-bad-case`` (``common.badcases``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from common.badcases import BadInput, Problem
from common.csvtable import read_table
from common.dates import ACQUIRED, DATE_COLUMNS, LABEL_DATE
from common.dicomweb import DicomWebSource, is_dicomweb_cell
from common.keys import Split, choices, classifies
from common.manifest_row import (
    file_problem,
    hash_split,
    parse_dates,
    parse_label,
    resolve,
    retrieved_series,
    with_dicom_metadata,
)
from common.sitepaths import Escape, Roots

MANIFEST_NAME = "manifest.csv"
LIVER_MASK = "liver_mask"  # the optional liver mask's column (and key in a case record)


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
    acquired: date | None = None  # when the images were acquired (common.dates)
    label_date: date | None = None  # when the label became known (None: not recorded)
    liver_mask: Path | None = None  # the liver (lesion included), 0/1; None: not given


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
    # a folder outside the site folder that its paths may also lead to (None: none)
    data_root: Path | None = None
    # the folders of the series retrieved from the site's DICOMweb server (common.dicomweb),
    # in the site's own cache folder
    retrieved: frozenset[Path] = frozenset()

    @property
    def name(self) -> str:
        return self.site_dir.name

    @property
    def path(self) -> Path:
        return self.site_dir / MANIFEST_NAME

    def split(self, split: str) -> tuple[Case, ...]:
        """The cases of one split, in manifest order."""
        return tuple(c for c in self.cases if c.split == split)

    @functools.cached_property
    def roots(self) -> Roots:
        """The folders this site's files may lie in, resolved once for this manifest."""
        return Roots.of(self.site_dir, self.data_root)

    def escape(self, path: Path) -> Escape | None:
        """Why a case's file may not be opened (``common.sitepaths.Roots.escape``: its link
        is followed again, now), or None; a series this site retrieved from its DICOMweb
        server lies in the site's own cache folder and may be (a manifest cell that leads
        there is still refused)."""
        if path in self.retrieved:
            return None
        return self.roots.escape(path)


def read_manifest(
    site_dir: Path | str,
    channels: Sequence[str],
    task: str,
    *,
    data_root: Path | str | None = None,
    pacs: DicomWebSource | None = None,
) -> SiteManifest:
    """Parse and check a site's manifest table (files must exist; only DICOM headers are read).

    ``data_root``: a folder outside the site folder that manifest paths may lead to (the
    site's node config allows it); by default they must stay inside the site folder.
    ``pacs``: the site's DICOMweb server, which retrieves the series of ``dicomweb:`` cells
    (``common.dicomweb``); without it such a cell is a problem of its case."""
    manifest, problems = parse_manifest(site_dir, channels, task, data_root=data_root, pacs=pacs)
    if problems:
        raise ManifestError(problems)
    return manifest


# Fields whose problem spoils one case only; any other problem spoils the table.
CASE_FIELDS = ("mask", LIVER_MASK, "label", ACQUIRED, LABEL_DATE)


def is_case_problem(problem: Problem, channels: Sequence[str]) -> bool:
    """Whether a problem spoils one case (a file, label, date or metadata value), not the table."""
    return (
        problem.field in CASE_FIELDS
        or problem.field in {f"image_{ch}" for ch in channels}
        or problem.kind in (BadInput.METADATA_UNIT, BadInput.METADATA_RANGE)
    )


def open_manifest(
    site_dir: Path | str,
    channels: Sequence[str],
    task: str,
    *,
    data_root: Path | str | None = None,
    pacs: DicomWebSource | None = None,
) -> SiteManifest:
    """Like ``read_manifest``, but a row whose files, label or metadata are unusable is kept,
    its problems in ``row_problems``: the loader fails or skips it by ``data.on-bad-case``.

    Problems of the table itself (its text, columns, ragged rows, case ids, splits) still
    raise ``ManifestError``.
    """
    manifest, problems = parse_manifest(site_dir, channels, task, data_root=data_root, pacs=pacs)
    ids = {c.case_id for c in manifest.cases}
    table = [p for p in problems if not is_case_problem(p, channels) or p.case_id not in ids]
    if table:
        raise ManifestError(table)
    by_case: dict[str, tuple[Problem, ...]] = {}
    for p in problems:
        by_case[str(p.case_id)] = (*by_case.get(str(p.case_id), ()), p)
    return replace(manifest, row_problems=by_case)


def parse_manifest(
    site_dir: Path | str,
    channels: Sequence[str],
    task: str,
    *,
    data_root: Path | str | None = None,
    pacs: DicomWebSource | None = None,
) -> tuple[SiteManifest, list[Problem]]:
    """The manifest's cases and every problem found in the table (raises only if unusable:
    missing, not UTF-8 text, NUL bytes, or a header with a missing, duplicate or unnamed
    column). The series of ``dicomweb:`` cells are retrieved here, through ``pacs``; a
    series that cannot be is a problem of its case (``common.manifest_row``)."""
    site_dir = Path(site_dir)
    root = None if data_root is None else Path(data_root)
    roots = Roots.of(site_dir, root)
    path = site_dir / MANIFEST_NAME
    fname = str(path)
    if not path.is_file():
        raise ManifestError(
            [Problem(fname, "manifest", f"not found: a site folder needs a {MANIFEST_NAME}")]
        )
    raw = path.read_bytes()
    table, problems = read_table(raw, fname)
    if table is None:
        raise ManifestError(problems)
    header = table.header
    image_cols = [f"image_{ch}" for ch in channels]
    required = ["case_id", *image_cols, "mask"]
    if classifies(task):
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
    known = {*required, "label", "split", LIVER_MASK, *DATE_COLUMNS}
    today = date.today()  # a date after it is an error (a wrong clock or export)
    fetched: set[Path] = set()  # folders of series retrieved from the DICOMweb server
    cases: list[Case] = []
    seen: dict[str, int] = {}
    has_split = "split" in header
    for trow in table.rows:
        row, row_no = trow.cells, trow.number
        cid = row["case_id"]

        def bad(fld: str, msg: str, kind: str = "", row_no: int = row_no, cid: str = cid) -> None:
            problems.append(Problem(fname, fld, msg, row_no, cid or None, kind=kind))

        if not cid:
            bad("case_id", "empty: every case needs an id")
        elif cid in seen:
            bad("case_id", f"duplicate of row {seen[cid]}: case ids must be unique")
        else:
            seen[cid] = row_no
        paths: list[Path] = []
        inside: list[Path] = []  # files that may be opened (header reads)
        for col in image_cols:
            img = resolve(site_dir, row[col])  # what names no file is not opened, nor found
            if not row[col]:
                bad(col, "empty: give the image path for this channel")
            elif is_dicomweb_cell(row[col]):
                retrieved = retrieved_series(col, row[col], pacs, bad)
                if retrieved is not None:
                    img = retrieved
                    inside.append(img)
                    fetched.add(img)
            elif file_problem(col, img, roots, bad):
                inside.append(img)
            paths.append(img)
        images = tuple(paths)
        mask = resolve(site_dir, row["mask"]) if row.get("mask") else None
        if mask is None:
            bad("mask", "empty: both tasks need the lesion mask")
        else:
            file_problem("mask", mask, roots, bad)
        liver = resolve(site_dir, row[LIVER_MASK]) if row.get(LIVER_MASK) else None
        if liver is not None:  # optional: an empty cell is a case without a liver mask
            file_problem(LIVER_MASK, liver, roots, bad)
        label = parse_label(row.get("label", ""), task, bad)
        split = row.get("split", "") if has_split else hash_split(cid)
        if split not in {s.value for s in Split}:
            bad("split", f"{split!r} is not a valid split; use one of {choices(Split)}")
        metadata = with_dicom_metadata(
            {k: v for k, v in row.items() if k not in known}, channels, images, inside, bad
        )
        acquired, label_date = parse_dates(row, today, bad)
        cases.append(
            Case(cid, images, mask, label, split, row_no, metadata, acquired, label_date, liver)
        )
    if not cases and not problems:
        problems.append(Problem(fname, "manifest", "lists no cases"))
    manifest = SiteManifest(
        site_dir,
        tuple(channels),
        tuple(cases),
        hashlib.sha256(raw).hexdigest(),
        data_root=root,
        retrieved=frozenset(fetched),
    )
    return manifest, problems


def list_site_dirs(root: Path | str) -> list[Path]:
    """Site folders (those holding a manifest) under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"site root {root} is not a folder")
    return sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file())
