"""One manifest row's cells: its file paths (or DICOMweb series), its label, its split,
its dates and its acquisition metadata.

``common.manifest.parse_manifest`` judges each row with these; every problem goes to the
row's ``report(field, message, kind)``, so that all of them are listed at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path

from common.badcases import BadInput
from common.dates import ACQUIRED, LABEL_DATE, parse_date
from common.dicom import acquisition_metadata, is_dicom_source
from common.dicomweb import DicomWebCellError, DicomWebError, DicomWebSource, parse_cell
from common.keys import Split, Task
from common.metadata import value_problem
from common.sitepaths import Roots

Report = Callable[..., None]  # report(field, message, kind="") for one row
TEST_FRACTION_BY_HASH = 0.25


def resolve(site_dir: Path, value: str) -> Path:
    """A cell's path: absolute as given, relative to the site folder otherwise."""
    p = Path(value)
    return p if p.is_absolute() else site_dir / p


def file_problem(column: str, path: Path, roots: Roots, bad: Report) -> bool:
    """Report a file cell that leads outside the site's allowed folders (``roots``) or
    names no file; True if the file is there to be opened."""
    escape = roots.escape(path)
    if escape is not None:
        bad(column, escape.message, escape.kind)
        return False
    if not path.exists():
        bad(column, f"file not found: {path}", "")
        return False
    return True


def retrieved_series(
    column: str, cell: str, source: DicomWebSource | None, bad: Report
) -> Path | None:
    """The local folder of the series a ``dicomweb:`` cell names, retrieved by the site's
    DICOMweb ``source`` (``common.dicomweb``); None, reported, if it cannot be had."""
    try:
        ref = parse_cell(cell)
    except DicomWebCellError as e:
        bad(column, str(e), BadInput.DICOMWEB_CELL)
        return None
    if source is None:
        bad(
            column,
            f"names DICOMweb {ref}, but this site has no DICOMweb server: name its secrets "
            "file as dicomweb-secrets in the [policy] of the site's node-config.toml (and give "
            "`hepafed site check` that folder as --keys); see docs/pacs.md",
            BadInput.DICOMWEB_UNCONFIGURED,
        )
        return None
    try:
        return source.fetch(ref)
    except DicomWebError as e:
        bad(column, str(e), e.kind)
        return None


def with_dicom_metadata(
    metadata: dict[str, str],
    channels: Sequence[str],
    images: Sequence[Path],
    inside: Sequence[Path],
    bad: Report,
) -> dict[str, str]:
    """Manifest metadata completed by the DICOM headers of the case's series (cells win);
    a numeric value (``common.metadata``) that is not plausible is reported either way."""
    from_header: dict[str, Path] = {}
    for channel, img in zip(channels, images, strict=True):
        if img not in inside or not is_dicom_source(img):
            continue
        for key, value in acquisition_metadata(img, channel).items():
            if not metadata.get(key):
                metadata[key], from_header[key] = value, img
    for key, value in metadata.items():
        wrong = value_problem(key, value)
        if wrong is not None:
            kind, message = wrong
            if key in from_header:
                message += (
                    f" (the value is from the DICOM header of {from_header[key]}; a value in "
                    f"the manifest's {key} column overrides it)"
                )
            bad(key, message, kind)
    return metadata


LABELS: dict[str, tuple[int, ...]] = {  # the labels of each classification task
    Task.MALIGNANCY: (0, 1),
    Task.LESION_TYPE: (0, 1, 2),
}
LABEL_MEANINGS: dict[str, str] = {  # ... and what they mean
    Task.MALIGNANCY: "0 (benign) or 1 (malignant)",
    Task.LESION_TYPE: "0 (benign), 1 (primary malignant) or 2 (metastasis)",
}


def parse_label(value: str, task: str, report: Report) -> int | None:
    """The task's label (0/1, or 0/1/2 for lesion-type), or None (reported through
    ``report`` when the task requires it)."""
    valid = LABELS.get(task, LABELS[Task.MALIGNANCY])  # a Task key is its str value
    meaning = LABEL_MEANINGS.get(task, LABEL_MEANINGS[Task.MALIGNANCY])
    if not value:
        if task in LABELS:
            report("label", f"empty: {task} needs {meaning}")
        return None
    try:
        label = int(float(value)) if float(value).is_integer() else None
    except ValueError:
        label = None
    if label not in valid:
        report("label", f"{value!r} is out of range: use {meaning}")
        return None
    return label


def hash_split(case_id: str, test_fraction: float = TEST_FRACTION_BY_HASH) -> str:
    """A split that depends only on the case id, so it never changes between runs."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return Split.TEST.value if u < test_fraction else Split.TRAIN.value


def _date_cell(column: str, text: str, today: date, report: Report) -> date | None:
    """One date cell (``common.dates.parse_date``), or None: empty, or reported."""
    if not text.strip():
        return None
    try:
        day = parse_date(text)
    except ValueError as e:
        report(column, str(e))
        return None
    if day > today:
        report(
            column, f"{text!r} is in the future (today is {today}): check the clock or the export"
        )
        return None
    return day


def parse_dates(
    row: Mapping[str, str], today: date, report: Report
) -> tuple[date | None, date | None]:
    """The row's ``acquired`` and ``label_date`` (``common.dates``; None when the cell is
    empty, the column absent, or the value reported). A label date needs a label and may
    not be before the acquisition date; a label without a label date is allowed."""
    acquired = _date_cell(ACQUIRED, row.get(ACQUIRED, ""), today, report)
    label_date = _date_cell(LABEL_DATE, row.get(LABEL_DATE, ""), today, report)
    if label_date is not None and not row.get("label", "").strip():
        report(
            LABEL_DATE,
            f"{row[LABEL_DATE]!r} is given, but the label is empty: a case with a label date "
            "needs its label; give the label, or leave label_date empty until it is known",
        )
        return acquired, None
    if label_date is not None and acquired is not None and label_date < acquired:
        report(
            LABEL_DATE,
            f"{label_date} is before the case's acquired date {acquired}: a label cannot be "
            "known before its images were acquired; correct either date",
        )
        return acquired, None
    return acquired, label_date
