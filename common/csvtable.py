"""Reading ``manifest.csv`` strictly: UTF-8 text without NUL bytes, one name per column,
and every row with exactly the header's fields.

``csv.DictReader`` forgives all of these: a NUL byte or a Latin-1 byte passes or fails late,
the last of two ``label`` columns silently wins, and a row with an extra field hands its
caller a list where a string was expected. ``read_table`` names each with a ``Problem``
(file, line, column, what to do) and never guesses which value was meant.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import Counter
from dataclasses import dataclass

from common.badcases import BadInput, Problem

MAX_LINES_LISTED = 10  # lines named for NUL bytes or bad encoding; the count is complete
SAVE_AS_UTF8 = "save the manifest as UTF-8 text (a spreadsheet's 'CSV UTF-8' format)"


@dataclass(frozen=True)
class TableRow:
    """One data row: its cells by column name, and where it is in the file."""

    number: int  # 1-based data row (blank lines are not rows; the header is row 0)
    line: int  # the file line the row starts on
    cells: dict[str, str]  # column -> cell, stripped of surrounding blanks


@dataclass(frozen=True)
class Table:
    """A manifest whose header is sound: its column names and its well-formed rows."""

    header: tuple[str, ...]
    rows: tuple[TableRow, ...]


def read_table(raw: bytes, fname: str) -> tuple[Table | None, list[Problem]]:
    """The table in ``raw`` (the manifest's bytes) and every problem of its form.

    The table is None when no row can be trusted: NUL bytes, text that is not UTF-8, an
    empty file, or a duplicate or unnamed column. A ragged row is a problem and is left
    out of the table; the other rows are kept so that every problem is reported at once.
    """
    text, problems = decode(raw, fname)
    if text is None:
        return None, problems
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        first = next(reader, None)
    except csv.Error as e:
        return None, [_csv_problem(fname, reader.line_num, e)]
    if first is None or not any(c.strip() for c in first):
        return None, [Problem(fname, "header", "is empty: the first line must name the columns")]
    header = tuple(c.strip() for c in first)
    problems = header_problems(header, fname, reader.line_num)
    if problems:
        return None, problems
    rows: list[TableRow] = []
    number, last_line = 0, reader.line_num
    try:
        for cells in reader:
            start, last_line = last_line + 1, reader.line_num
            if not cells:
                continue  # a blank line
            number += 1
            if len(cells) != len(header):
                problems.append(_ragged(fname, header, cells, number, start))
                continue
            rows.append(
                TableRow(number, start, {h: c.strip() for h, c in zip(header, cells, strict=True)})
            )
    except csv.Error as e:
        problems.append(_csv_problem(fname, reader.line_num, e))
    return Table(header, tuple(rows)), problems


def decode(raw: bytes, fname: str) -> tuple[str | None, list[Problem]]:
    """The manifest's text, or None and a problem per line with a NUL or non-UTF-8 byte."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return None, [
            Problem(
                fname,
                "manifest",
                f"is UTF-16 text (it starts with a UTF-16 byte-order mark): {SAVE_AS_UTF8}",
                line=1,
                kind=BadInput.MANIFEST_ENCODING,
            )
        ]
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    problems: list[Problem] = []
    n_bad = 0
    for i, line in enumerate(raw[bom:].split(b"\n"), start=1):
        message, kind = _line_problem(line)
        if message is None:
            continue
        n_bad += 1
        if n_bad <= MAX_LINES_LISTED:
            problems.append(Problem(fname, "manifest", message, line=i, kind=kind))
    if n_bad > MAX_LINES_LISTED:
        last = problems[-1]
        more = f"; and {n_bad - MAX_LINES_LISTED} more line(s) like it"
        problems[-1] = Problem(
            last.file, last.field, last.message + more, line=last.line, kind=last.kind
        )
    if problems:
        return None, problems
    return raw[bom:].decode("utf-8"), []


def _line_problem(line: bytes) -> tuple[str | None, str]:
    """What is wrong with one line's bytes (a NUL first, then the encoding), if anything."""
    nul = line.find(b"\x00")
    if nul >= 0:
        return (
            f"NUL byte at byte {nul + 1} of the line: a manifest is text and never holds "
            f"NUL bytes; remove them (a binary file or a UTF-16 export?) and {SAVE_AS_UTF8}",
            BadInput.MANIFEST_NUL,
        )
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return (
            f"byte 0x{line[e.start]:02x} at byte {e.start + 1} of the line is not UTF-8 "
            f"(Latin-1 or Windows-1252 text?): {SAVE_AS_UTF8}",
            BadInput.MANIFEST_ENCODING,
        )
    return None, ""


def header_problems(header: tuple[str, ...], fname: str, line: int) -> list[Problem]:
    """Duplicate and unnamed columns: with either, which cell means what is a guess."""
    problems: list[Problem] = []
    for name, count in Counter(header).items():
        if name and count > 1:
            where = ", ".join(str(i + 1) for i, h in enumerate(header) if h == name)
            problems.append(
                Problem(
                    fname,
                    name,
                    f"column {name!r} appears {count} times (columns {where}): a column may "
                    "appear once, or which value counts would be a guess; remove or rename "
                    "the extra one(s)",
                    line=line,
                    kind=BadInput.MANIFEST_DUPLICATE_COLUMN,
                )
            )
    for i, name in enumerate(header):
        if not name:
            problems.append(
                Problem(
                    fname,
                    f"column {i + 1}",
                    "has no name in the header: name the column or delete it "
                    "(a trailing comma on the header line makes an unnamed column)",
                    line=line,
                    kind=BadInput.MANIFEST_UNNAMED_COLUMN,
                )
            )
    return problems


def _ragged(
    fname: str, header: tuple[str, ...], cells: list[str], number: int, line: int
) -> Problem:
    """A row with more or fewer fields than the header has columns."""
    n, m = len(cells), len(header)
    if n > m:
        extra = ", ".join(repr(c) for c in cells[m:][:3]) + (", ..." if n - m > 3 else "")
        what = (
            f"field(s) {m + 1 if n == m + 1 else f'{m + 1}-{n}'} ({extra}) have no column; "
            'quote a value that holds a comma ("a,b") or remove the extra field(s)'
        )
    else:
        missing = ", ".join(header[n:][:5]) + (", ..." if m - n > 5 else "")
        what = f"column(s) {missing} have no field; give every column a field (empty: ,,)"
    id_at = header.index("case_id") if "case_id" in header else -1
    case_id = cells[id_at].strip() if 0 <= id_at < n else ""
    return Problem(
        fname,
        "row",
        f"{n} field(s), but the header has {m} columns: {what}",
        row=number,
        case_id=case_id or None,
        line=line,
        kind=BadInput.MANIFEST_RAGGED_ROW,
    )


def _csv_problem(fname: str, line: int, err: csv.Error) -> Problem:
    """A line Python's csv reader cannot parse at all."""
    return Problem(fname, "manifest", f"not CSV: {err}; fix the line's quoting", line=line)
