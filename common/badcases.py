"""Bad cases: what makes one case of a site unusable, the error that names it, and what
``data.on-bad-case = "skip"`` reports instead.

A case is bad when a file of its manifest row is missing or unreadable, an image
has the wrong shape or NaN/Inf voxels, its mask is not a binary lesion mask, or
its label is out of range. ``hepafed site check`` (``common.manifest``) and the
loader (``common.data``) judge a case with the same functions below, so a case
the loader rejects is one the check names too, in the same words.

With ``fail`` (the default) loading raises ``BadCaseError`` for the first bad
case; with ``skip`` the case is left out of its split, logged, and counted
(``SKIPPED_CASES`` in the training metrics and the evaluation summary). A
split whose every case is bad raises ``NoUsableCasesError`` under either policy.

``BadInput`` names the kinds of bad input beyond these: the manifest's text and form
(``common.csvtable``), paths that leave the site folder (``common.sitepaths``), voxel
spacing and grids (``common.geometry``) and numeric metadata (``common.metadata``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from common.keys import MetricKey, SiteKey

# MetricRecord key (training reply and evaluation summary): how many cases were skipped.
SKIPPED_CASES = MetricKey.SKIPPED_CASES.value
# ConfigRecord keys (the reply's site record): the ids of the first MAX_LISTED skipped
# cases, and for each "file: what is wrong" (MetricRecords hold numbers only).
SKIPPED_CASE_IDS = SiteKey.SKIPPED_CASE_IDS.value
SKIPPED_CASE_REASONS = SiteKey.SKIPPED_CASE_REASONS.value
MAX_LISTED = 20  # ids listed in replies and reports; the count is always complete


class BadInput(StrEnum):
    """Named kinds of bad site input beyond a case's own files (docs/bad-cases.md, docs/trust.md).

    A ``Problem`` carries one of them in ``kind`` so that tools and tests can tell them apart
    without parsing its message."""

    MANIFEST_NUL = "manifest-nul"  # a NUL byte in manifest.csv
    MANIFEST_ENCODING = "manifest-encoding"  # manifest.csv is not UTF-8 text
    MANIFEST_DUPLICATE_COLUMN = "manifest-duplicate-column"  # one column name twice
    MANIFEST_UNNAMED_COLUMN = "manifest-unnamed-column"  # a header cell left empty
    MANIFEST_RAGGED_ROW = "manifest-ragged-row"  # more or fewer fields than the header
    PATH_ESCAPE = "path-escape"  # a cell points outside the site folder ('..', absolute)
    SYMLINK_ESCAPE = "symlink-escape"  # a symbolic link resolves outside the site folder
    ZERO_SPACING = "zero-spacing"  # voxel spacing not > 0 and finite, or a singular affine
    MASK_GEOMETRY = "mask-geometry"  # a mask (or channel) not on its case's image grid
    METADATA_UNIT = "metadata-unit"  # a numeric metadata cell that is not a plain number
    METADATA_RANGE = "metadata-range"  # a numeric metadata value outside its plausible range
    # a series named by a ``dicomweb:`` cell that could not be retrieved (common.dicomweb)
    DICOMWEB_CELL = "dicomweb-cell"  # a dicomweb: cell that names no study and series UID
    DICOMWEB_UNCONFIGURED = "dicomweb-unconfigured"  # the site names no DICOMweb server
    DICOMWEB_UNREACHABLE = "dicomweb-unreachable"  # connection refused, timed out, no route
    DICOMWEB_TLS = "dicomweb-tls"  # the server's certificate is not trusted by the ca-file
    DICOMWEB_UNAUTHORIZED = "dicomweb-unauthorized"  # HTTP 401/403: wrong credentials
    DICOMWEB_SERIES_MISSING = "dicomweb-series-missing"  # no such series on the server
    DICOMWEB_NOT_IMAGE = "dicomweb-not-image"  # an instance without pixel data (SR, PDF...)
    DICOMWEB_FAILED = "dicomweb-failed"  # any other refusal or malformed answer


# kinds of a manifest image cell naming a DICOMweb series that could not be retrieved: the
# cell names no file, so its error names the manifest row (common.data)
DICOMWEB_KINDS = frozenset(k for k in BadInput if k.value.startswith("dicomweb-"))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a site's data, precise enough to fix it."""

    file: str
    field: str
    message: str
    row: int | None = None  # 1-based data row (the header is row 0)
    case_id: str | None = None
    line: int | None = None  # 1-based line of the file, where the row number is not enough
    kind: str = ""  # a ``BadInput`` value, or "" for the kinds of docs/bad-cases.md's table

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f", line {self.line}"
        if self.row is not None:
            where += f", row {self.row}"
        if self.case_id:
            where += f" (case {self.case_id!r})"
        return f"{where}: {self.field}: {self.message}"


@dataclass(frozen=True)
class SkippedCase:
    """A case left out of a split under ``data.on-bad-case = "skip"``, and why."""

    case_id: str
    path: str  # the file that is wrong (the manifest, for a bad label)
    reason: str


def check_command(site_dir: Path | str | None) -> str:
    """The command that lists every problem of a site folder."""
    return f"hepafed site check {site_dir if site_dir is not None else 'SITE_DIR'}"


class BadCaseError(ValueError):
    """One case of a site cannot be used: which site, case and file, what is wrong."""

    def __init__(
        self,
        site: str,
        case_id: str,
        path: str,
        reason: str,
        site_dir: Path | str | None = None,
    ) -> None:
        self.site, self.case_id, self.path, self.reason = site, case_id, path, reason
        self.site_dir = None if site_dir is None else str(site_dir)
        super().__init__(
            f"site {site!r}, case {case_id!r}: {path}: {reason}. Fix the case's file or "
            f'manifest row, or set data.on-bad-case = "skip" to leave bad cases out; '
            f"run `{check_command(self.site_dir)}` to list every problem"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # keep the fields across pickling (Ray)
        return type(self), (self.site, self.case_id, self.path, self.reason, self.site_dir)

    @property
    def skipped(self) -> SkippedCase:
        return SkippedCase(self.case_id, self.path, self.reason)


class NoUsableCasesError(ValueError):
    """Every case of a split is bad: an error, never an empty split."""

    def __init__(
        self,
        site: str,
        split: str,
        skipped: Sequence[SkippedCase],
        site_dir: Path | str | None = None,
    ) -> None:
        self.site, self.split, self.skipped = site, split, tuple(skipped)
        self.site_dir = None if site_dir is None else str(site_dir)
        listed = "; ".join(f"case {s.case_id!r}: {s.path}: {s.reason}" for s in self.skipped[:3])
        more = f"; and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        super().__init__(
            f"site {site!r}: all {len(self.skipped)} case(s) of split {split!r} are bad, "
            f"none is left to use ({listed}{more}); run `{check_command(self.site_dir)}` "
            "to list every problem"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.site, self.split, self.skipped, self.site_dir)


def listed(skipped: Sequence[SkippedCase]) -> tuple[str, ...]:
    """The ids that replies and reports list: the first ``MAX_LISTED``."""
    return tuple(s.case_id for s in skipped[:MAX_LISTED])


def skipped_fields(
    skipped: Sequence[SkippedCase], site_dir: Path | str | None = None
) -> dict[str, list[str]]:
    """The site-record (ConfigRecord) entries naming the first ``MAX_LISTED`` skipped cases,
    with every file named relative to ``site_dir`` (``site_relative``) and DICOM UIDs
    redacted: a reply never carries the hospital's absolute paths or a series' UID."""
    from common.dicomweb import redact_uids

    first = skipped[:MAX_LISTED]
    reasons = []
    for s in first:
        path = site_relative(s.path, site_dir)
        reason = s.reason.replace(str(s.path), path)
        if site_dir is not None:  # other files of the folder the reason names
            reason = reason.replace(f"{Path(site_dir)}/", "")
        reasons.append(redact_uids(f"{path}: {reason}"))  # nor a study's or series' UID
    return {SKIPPED_CASE_IDS: [s.case_id for s in first], SKIPPED_CASE_REASONS: reasons}


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\":,;()]+/)*([^\s'\":,;()/]+)")


def redacted_reason(text: str, site_dir: Path | str | None) -> str:
    """An error text as it may leave the site: files under the site folder named relative
    to it, any other absolute path by its last component, DICOM UIDs as ``<UID>``."""
    from common.dicomweb import redact_uids

    if site_dir is not None:
        for root in {str(Path(site_dir)), str(Path(site_dir).resolve())}:
            text = text.replace(f"{root}/", "").replace(root, ".")
    return redact_uids(_ABSOLUTE_PATH.sub(lambda m: m.group(1), text))


def site_relative(path: Path | str, site_dir: Path | str | None) -> str:
    """``path`` relative to the site folder; a file outside it (or with no folder given)
    by its name only, so no absolute path leaves the site."""
    p = Path(path)
    if site_dir is not None:
        root = Path(site_dir)
        for candidate, base in ((p, root), (p.resolve(), root.resolve())):
            if candidate.is_relative_to(base):
                return candidate.relative_to(base).as_posix()
        if not p.is_absolute():
            return p.as_posix()
    return p.name


# ---- what is wrong with one loaded image (shared with `hepafed site check`) -----------------


def load_problem(path: Path | str, err: BaseException, in_file: bool = True) -> str:
    """What to say about a file the reader could not load (``in_file``: name the file,
    for messages that do not name it otherwise)."""
    from common.dicom import DicomSeriesError

    chain = [err]
    while chain[-1].__cause__ is not None:  # MONAI wraps reader errors: name the reader's own
        chain.append(chain[-1].__cause__)
    series = [e for e in chain if isinstance(e, DicomSeriesError)]
    if series:
        return str(series[0])
    root = chain[-1]
    where = f" {path}" if in_file else ""
    return f"unreadable image{where}: {type(root).__name__}: {root}"


def spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The spatial shape of a single-channel image, or None if it has components."""
    if len(shape) == 4:
        if shape[3] != 1:
            return None
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    return tuple(int(s) for s in shape)


# the mask columns of a manifest (0/1, not empty) and what an empty one lacks
MASK_COLUMNS = {
    "mask": "the case has no lesion voxel",
    "liver_mask": "the case has no liver voxel (leave the cell empty for a case without a "
    "liver mask)",
}


def array_problems(
    column: str, path: Path | str, array: Any, spatial_dims: int, in_file: bool = True
) -> tuple[tuple[int, ...] | None, list[str]]:
    """The spatial shape of one loaded image or mask (None if unusable) and what is wrong.

    ``column`` is the manifest column (``image_<channel>``, or a mask: ``MASK_COLUMNS``,
    which must be 0/1 and not empty); the array
    is what ``common.images.load_image`` returns for ``path`` (``in_file``: as in
    ``load_problem``).
    """
    arr = np.asarray(array)
    shape = spatial_shape(arr.shape)
    if shape is None:
        return None, [
            f"has {arr.shape[-1]} components in shape {arr.shape}; "
            "give one file per channel (multi-phase series are separate columns)"
        ]
    if spatial_dims == 2 and len(shape) == 3 and shape[2] != 1:
        return None, [
            f"shape {arr.shape} is a volume, but data.spatial-dims = 2 expects "
            "single slices (X, Y) or (X, Y, 1)"
        ]
    problems = []
    finite = np.isfinite(arr)
    if not finite.all():
        where = f" in {path}" if in_file else ""
        problems.append(f"{int((~finite).sum())} NaN/Inf voxel(s){where}")
    if column in MASK_COLUMNS:
        if not ((arr == 0) | (arr == 1)).all():  # np.unique (a sort) only when it is not
            problems.append(f"values {np.unique(arr)[:6].tolist()} are not binary 0/1")
        elif not (arr > 0).any():
            problems.append(f"is empty: {MASK_COLUMNS[column]}")
    return shape, problems


def shape_problem(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Channels and mask of one case must share a grid."""
    if len(set(shapes.values())) <= 1:
        return None
    return "channels and mask differ in shape: " + ", ".join(f"{k} {v}" for k, v in shapes.items())
