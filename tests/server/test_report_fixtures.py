"""Committed example reports: a fresh rendering must carry the same content as the committed one.

``tests/server/data/reports/<kind>/`` holds the ``report.json`` of a real small run
and the ``report.html`` the renderer of that time produced from it (how they were made:
``README.md`` there). Each test renders the JSON again with the public entry points
(``server.report.files.load_report`` and ``render_html``) and compares the result with the
committed HTML by content, read with ``html.parser`` alone:

- text: the visible text as a sequence of blocks, each whitespace-normalised. A block
  is the text of a heading, paragraph, table cell, list item, caption, ``dt``/``dd``,
  or an SVG chart's ``<title>``, ``<desc>`` or ``<text>``, whatever markup it holds
  (a ``<div>`` inside a cell is a line break in it, a ``<span>`` splits nothing but
  two numbers that would otherwise run together); text outside such elements is split
  at every element that is not inline (``span``, ``strong``, ``a``, ``code``, ...);
- numbers: every number in that text, in order;
- structure: the h1-h4 headings in order, each table's rows and columns, and each
  inline SVG chart's count of marks (circle, ellipse, rect, line, path, polyline,
  polygon elements).

Markup, attribute order, class names, whitespace between blocks and CSS may change;
content may not. The ``--compare`` fixtures (``comparison*/``) hold what ``hepafed
report FOLDER`` reads (``comparison.json``, each seed's ``config.json`` and
``evaluations.json``) and writes (``comparison.md``); they are rebuilt through that path
and compared the same way, read as markdown.

To renew the fixtures after an intended change of content, rerun the commands in the
README and commit the new files with the change that explains them.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from server.report.files import load_report
from server.report.html import render_html

DATA = Path(__file__).parent / "data" / "reports"
HTML_FIXTURES = ("holdout", "holdout-insufficient", "holdout-external", "loso", "cross-site")
COMPARISON_FIXTURES = ("comparison", "comparison-external")

# Elements whose text is one block: its nested elements (a <div> or <span> in a cell, a
# <tspan> in an SVG <text>) do not split it. Text outside them is split at every element
# that is not inline.
BLOCKS = frozenset(
    {"h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "td", "th", "caption", "figcaption"}
    | {"dt", "dd", "title", "desc", "text", "summary", "pre", "blockquote", "legend"}
    | {"button", "option"}
)
INLINE = frozenset(
    {"a", "abbr", "b", "bdi", "bdo", "br", "cite", "code", "data", "dfn", "em", "i", "kbd"}
    | {"label", "mark", "q", "s", "samp", "small", "span", "strong", "sub", "sup", "time"}
    | {"tspan", "u", "var", "wbr"}
)
SKIPPED = frozenset({"style", "script", "template"})
VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
    | {"track", "wbr"}
)
# Between two inline elements, or an inline element and text, a space only where two
# letters or digits (or a digit and a sign) would otherwise run together: in
# "0.680<span>0.304</span>" or "1.2<span>\u22120.4</span>" they are two numbers.
SOFT = "\x00"
SIGNS = "+-\u2212"
IMPLIED_END = {
    "li": {"li"},
    "dt": {"dt", "dd"},
    "dd": {"dt", "dd"},
    "td": {"td", "th"},
    "th": {"td", "th"},
    "tr": {"tr", "td", "th"},
    "tbody": {"thead", "tbody", "tr", "td", "th"},
    "tfoot": {"thead", "tbody", "tr", "td", "th"},
    "option": {"option"},
}
MARKS = frozenset({"circle", "ellipse", "rect", "line", "path", "polyline", "polygon"})
HEADINGS = frozenset({"h1", "h2", "h3", "h4"})

# The least each fixture must yield, so that a broken extraction cannot pass vacuously:
# (text blocks, numbers, headings, tables, charts).
MINIMUM = {
    "holdout": (400, 360, 10, 5, 5),
    "holdout-insufficient": (320, 160, 10, 5, 3),
    "holdout-external": (480, 520, 10, 7, 6),
    "loso": (440, 410, 12, 7, 6),
    "cross-site": (400, 360, 10, 5, 5),
    "comparison": (50, 30, 2, 2, 0),
    "comparison-external": (50, 60, 2, 2, 0),
}


@dataclass
class Table:
    label: str = ""  # the table's first text (its caption or first header cell)
    rows: int = 0
    cols: int = 0  # the widest row, counting colspan

    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)


@dataclass
class Chart:
    label: str = ""  # the chart's first text (its <title>)
    marks: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class Content:
    """What a page says, with no markup: blocks of text, headings, table and chart shapes."""

    blocks: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # each block's heading above it
    headings: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)

    def numbers(self) -> list[tuple[str, int]]:
        """Every number in the text, with the index of the block it is in."""
        return [(n, i) for i, b in enumerate(self.blocks) for n in numbers_in(b)]


def normalise(text: str) -> str:
    pieces = text.split(SOFT)
    joined = pieces[0]
    for piece in pieces[1:]:
        if joined and piece and joined[-1].isalnum() and (piece[0].isalnum() or piece[0] in SIGNS):
            joined += " "
        joined += piece
    return " ".join(joined.split())


SUPERSCRIPTS = "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b"
SUPERSCRIPT = str.maketrans(SUPERSCRIPTS, "0123456789-")


def numbers_in(text: str) -> list[str]:
    """The numbers in ``text`` as written, signed, a true minus (U+2212) read as "-".

    A sign counts only where no letter, digit, dot or sign precedes it, so "site-2" and
    "2026-12-05" hold no negative numbers; "1.2\u00d710\u207b\u2075" reads as 1.2, 10 and -5."""
    text = re.sub(
        "\u00d710([" + SUPERSCRIPTS + "]+)",
        lambda m: "\u00d710 " + m.group(1).translate(SUPERSCRIPT),
        text,
    )
    text = text.replace("\u2212", "-")
    return re.findall(r"(?<![\w.+\-])[+\-]\d+(?:\.\d+)?|\d+(?:\.\d+)?", text)


class Extract(HTMLParser):
    """Reads an HTML page into ``Content``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.content = Content()
        self.buffer: list[str] = []
        self.skipping = 0
        self.in_block = 0  # how many BLOCKS elements are open
        self.table_stack: list[Table] = []
        self.chart_stack: list[Chart] = []
        self.row_cols = 0
        self.open: list[str] = []  # the elements open now, innermost last

    def flush(self) -> str:
        """End the current block; its text ("" when it had none)."""
        text = normalise("".join(self.buffer))
        self.buffer = []
        if not text:
            return ""
        self.content.blocks.append(text)
        self.content.sections.append(self.content.headings[-1] if self.content.headings else "")
        if self.table_stack and not self.table_stack[-1].label:
            self.table_stack[-1].label = text
        if self.chart_stack and not self.chart_stack[-1].label:
            self.chart_stack[-1].label = text
        return text

    def boundary(self, tag: str) -> None:
        """What the start or end of ``tag`` does to the text."""
        if tag == "br":
            self.buffer.append(" ")
        elif tag in INLINE:
            self.buffer.append(SOFT)
        elif tag in BLOCKS or not self.in_block:
            self.flush()
        else:  # a <div> and the like inside a block: a line break within it
            self.buffer.append(" ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED:
            self.skipping += 1
            return
        # end tags HTML lets a page leave out: </li> before <li>, </p> before a block, ...
        while self.open and (
            self.open[-1] in IMPLIED_END.get(tag, ())
            or (self.open[-1] == "p" and tag not in INLINE)
        ):
            self.end(self.open.pop())
        self.start(tag, attrs)
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.start(tag, attrs)  # <path ... />: no content, never left open
        self.end(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED:
            self.skipping = max(0, self.skipping - 1)
            return
        if tag not in self.open:  # a stray end tag (or a void element's)
            return
        while self.open:  # an end tag also ends the elements left open inside it
            inner = self.open.pop()
            self.end(inner)
            if inner == tag:
                break

    def start(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.boundary(tag)
        if tag in BLOCKS:
            self.in_block += 1
        if tag == "table":
            self.table_stack.append(Table())
            self.content.tables.append(self.table_stack[-1])
        elif tag == "tr" and self.table_stack:
            self.table_stack[-1].rows += 1
            self.row_cols = 0
        elif tag in ("td", "th") and self.table_stack:
            span = dict(attrs).get("colspan") or "1"
            self.row_cols += int(span) if span.isdigit() else 1
            table = self.table_stack[-1]
            table.cols = max(table.cols, self.row_cols)
        elif tag == "svg":
            self.chart_stack.append(Chart())
            self.content.charts.append(self.chart_stack[-1])
        elif tag in MARKS and self.chart_stack:
            chart = self.chart_stack[-1]
            chart.marks += 1
            chart.kinds[tag] = chart.kinds.get(tag, 0) + 1

    def end(self, tag: str) -> None:
        if tag in VOID:
            return
        if tag in HEADINGS:
            self.content.headings.append(f"{tag}: {self.flush()}")
        else:
            self.boundary(tag)
        if tag in BLOCKS:
            self.in_block = max(0, self.in_block - 1)
        if tag == "table" and self.table_stack:
            self.table_stack.pop()
        elif tag == "svg" and self.chart_stack:
            self.chart_stack.pop()

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.buffer.append(data)

    def close(self) -> None:
        super().close()
        while self.open:
            self.end(self.open.pop())
        self.flush()


def html_content(page: str) -> Content:
    parser = Extract()
    parser.feed(page)
    parser.close()
    return parser.content


def markdown_content(text: str) -> Content:
    """Reads markdown into ``Content``: headings, paragraphs, list items, fenced code,
    and tables (each cell a block, an empty one too; the |---| rule is not a row)."""
    content = Content()
    lines = text.splitlines()
    paragraph: list[str] = []
    table: Table | None = None

    def inline(s: str) -> str:
        return normalise(re.sub(r"\*\*|__|`", "", s))

    def add(block: str) -> None:
        content.blocks.append(block)
        content.sections.append(content.headings[-1] if content.headings else "")

    def end_paragraph() -> None:
        if paragraph:
            add(inline(" ".join(paragraph)))
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            end_paragraph()
            if table is None:
                table = Table()
                content.tables.append(table)
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                table.rows += 1
                table.cols = max(table.cols, len(cells))
                table.label = table.label or inline(cells[0])
                for cell in cells:
                    add(inline(cell))
            i += 1
            continue
        table = None
        if line.startswith("```"):
            end_paragraph()
            code = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code.append(lines[i])
                i += 1
            if normalise(" ".join(code)):
                add(normalise(" ".join(code)))
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            end_paragraph()
            add(inline(m.group(2)))
            if len(m.group(1)) <= 4:
                content.headings.append(f"h{len(m.group(1))}: {inline(m.group(2))}")
        elif m := re.match(r"(?:[-*+]|\d+\.)\s+(.*)", line):
            end_paragraph()
            add(inline(m.group(1)))
        elif not line:
            end_paragraph()
        else:
            paragraph.append(line)
        i += 1
    end_paragraph()
    return content


# ---- comparison ----


def _context(seq: list[Any], i: int, width: int = 2) -> str:
    lo = max(0, i - width)
    return (
        "\n".join(
            f"  {'>' if j == i else ' '} [{j}] {seq[j]!r}"
            for j in range(lo, min(len(seq), i + width + 1))
        )
        or "  (nothing)"
    )


def _first_difference(expected: list[Any], actual: list[Any]) -> int | None:
    for i, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            return i
    return None if len(expected) == len(actual) else min(len(expected), len(actual))


def sequence_difference(
    what: str, expected: list[Any], actual: list[Any], content: Content | None = None
) -> str | None:
    """None when equal, else where the first difference is, with its neighbours (and,
    given the committed ``content`` the items are blocks of, the heading above it)."""
    i = _first_difference(expected, actual)
    if i is None:
        return None
    where = _section(content, i) if content is not None else ""
    return (
        f"{what} differ at item {i}{where} "
        f"(committed {len(expected)} items, rendered {len(actual)})\n"
        f" committed:\n{_context(expected, i)}\n rendered:\n{_context(actual, i)}"
    )


def _section(content: Content, i: int) -> str:
    if i < len(content.sections) and content.sections[i]:
        return f" under {content.sections[i]!r}"
    return ""


def text_difference(expected: Content, actual: Content) -> str | None:
    return sequence_difference("text blocks", expected.blocks, actual.blocks, expected)


def number_difference(expected: Content, actual: Content) -> str | None:
    ne, na = expected.numbers(), actual.numbers()
    i = _first_difference([n for n, _ in ne], [n for n, _ in na])
    if i is None:
        return None

    def where(nums: list[tuple[str, int]], content: Content) -> str:
        if i >= len(nums):
            return "  (no more numbers)"
        n, b = nums[i]
        return f"  {n!r} in block {b}{_section(content, b)}: {content.blocks[b]!r}"

    return (
        f"numbers differ at number {i} (committed {len(ne)}, rendered {len(na)})\n"
        f" committed:\n{where(ne, expected)}\n rendered:\n{where(na, actual)}"
    )


def structure_difference(expected: Content, actual: Content) -> str | None:
    problems = [
        sequence_difference("headings", expected.headings, actual.headings),
        sequence_difference(
            "tables (label, rows, columns)",
            [(t.label, t.shape()) for t in expected.tables],
            [(t.label, t.shape()) for t in actual.tables],
        ),
        sequence_difference(
            "charts (title, marks)",
            [(c.label, c.marks) for c in expected.charts],
            [(c.label, c.marks) for c in actual.charts],
        ),
    ]
    found = [p for p in problems if p]
    return "\n".join(found) if found else None


def differences(expected: Content, actual: Content) -> list[str]:
    found = (
        text_difference(expected, actual),
        number_difference(expected, actual),
        structure_difference(expected, actual),
    )
    return [d for d in found if d]


# ---- fixtures ----


@functools.cache
def committed_html(kind: str) -> Content:
    return html_content((DATA / kind / "report.html").read_text(encoding="utf-8"))


@functools.cache
def rendered_html(kind: str) -> Content:
    return html_content(render_html(load_report(DATA / kind / "report.json")))


def assert_minimum(kind: str, content: Content) -> None:
    blocks, numbers, headings, tables, charts = MINIMUM[kind]
    got = (
        len(content.blocks),
        len(content.numbers()),
        len(content.headings),
        len(content.tables),
        len(content.charts),
    )
    assert all(g >= m for g, m in zip(got, MINIMUM[kind], strict=True)), (
        f"{kind}: extraction too thin: (blocks, numbers, headings, tables, charts) = {got}, "
        f"expected at least {(blocks, numbers, headings, tables, charts)}"
    )
    assert all(t.rows >= 1 and t.cols >= 1 for t in content.tables), kind


@pytest.mark.parametrize("kind", HTML_FIXTURES)
def test_extraction_is_not_empty(kind: str) -> None:
    committed = committed_html(kind)
    assert_minimum(kind, committed)
    assert committed.headings[0].startswith("h1: "), committed.headings[:3]
    if MINIMUM[kind][4]:
        assert any(c.marks > 0 for c in committed.charts), kind


@pytest.mark.parametrize("kind", HTML_FIXTURES)
def test_text(kind: str) -> None:
    problem = text_difference(committed_html(kind), rendered_html(kind))
    assert problem is None, f"{kind}: {problem}"


@pytest.mark.parametrize("kind", HTML_FIXTURES)
def test_numbers(kind: str) -> None:
    problem = number_difference(committed_html(kind), rendered_html(kind))
    assert problem is None, f"{kind}: {problem}"


@pytest.mark.parametrize("kind", HTML_FIXTURES)
def test_structure(kind: str) -> None:
    problem = structure_difference(committed_html(kind), rendered_html(kind))
    assert problem is None, f"{kind}: {problem}"


def rebuilt_comparison(kind: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """``hepafed report FOLDER`` on a copy of the fixture: comparison.json and .md."""
    from simulations.compare import rebuild_comparison

    folder = tmp_path / kind
    shutil.copytree(DATA / kind, folder)
    rebuild_comparison(folder)
    doc = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
    return doc, (folder / "comparison.md").read_text(encoding="utf-8")


def assert_close(expected: Any, actual: Any, path: str = "") -> None:
    """Equal JSON, floats to 1e-9 relative (a rebuild may differ in the last bits)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        assert sorted(expected) == sorted(actual), f"{path or '(top)'}: keys differ"
        for key in expected:
            assert_close(expected[key], actual[key], f"{path}/{key}")
    elif isinstance(expected, list) and isinstance(actual, list):
        assert len(expected) == len(actual), f"{path}: lengths differ"
        for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
            assert_close(a, b, f"{path}/{i}")
    elif isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), path
        assert math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12), (
            f"{path}: committed {expected!r}, rebuilt {actual!r}"
        )
    else:
        assert expected == actual, f"{path}: committed {expected!r}, rebuilt {actual!r}"


@pytest.mark.parametrize("kind", COMPARISON_FIXTURES)
def test_comparison(kind: str, tmp_path: Path) -> None:
    committed_md = (DATA / kind / "comparison.md").read_text(encoding="utf-8")
    committed_doc = json.loads((DATA / kind / "comparison.json").read_text(encoding="utf-8"))
    committed = markdown_content(committed_md)
    assert_minimum(kind, committed)
    doc, md = rebuilt_comparison(kind, tmp_path)
    assert_close(committed_doc, doc)
    problems = differences(committed, markdown_content(md))
    assert not problems, f"{kind}: " + "\n".join(problems)


# ---- the comparison can fail, and only on content ----


def test_a_changed_number_is_reported() -> None:
    report = copy.deepcopy(load_report(DATA / "holdout" / "report.json"))
    row = next(r for r in report["sites"] if r.get("auc"))
    before = row["auc"]["estimate"]
    row["auc"]["estimate"] = before + 0.111
    changed = html_content(render_html(report))
    committed = committed_html("holdout")
    text, numbers = text_difference(committed, changed), number_difference(committed, changed)
    assert text is not None and f"{before + 0.111:.3f}" in text
    assert numbers is not None
    assert f"'{before:.3f}'" in numbers and f"'{before + 0.111:.3f}'" in numbers, numbers


def test_a_dropped_row_or_mark_is_reported() -> None:
    page = (DATA / "holdout" / "report.html").read_text(encoding="utf-8")
    committed = committed_html("holdout")
    no_mark = re.sub(r"<circle\b[^>]*?/?>(?:</circle>)?", "", page, count=1)
    assert no_mark != page
    problem = structure_difference(committed, html_content(no_mark))
    assert problem is not None and "charts" in problem, problem
    assert text_difference(committed, html_content(no_mark)) is None
    no_row = re.sub(r"<tr\b.*?</tr>", "", page, count=1, flags=re.S)
    problem = structure_difference(committed, html_content(no_row))
    assert problem is not None and "tables" in problem, problem


def test_a_changed_markdown_number_is_reported() -> None:
    text = (DATA / "comparison" / "comparison.md").read_text(encoding="utf-8")
    first = re.search(r"\d\.\d{3}", text)
    assert first is not None
    changed = text[: first.start()] + "9.999" + text[first.end() :]
    problems = differences(markdown_content(text), markdown_content(changed))
    assert any("9.999" in p for p in problems), problems


OPTIONAL_END = frozenset({"li", "dt", "dd", "tr", "td", "th"})


class Rewrite(HTMLParser):
    """The same page in other markup: other CSS, class names, attribute order and spacing,
    each interval in a table cell (``<span class="ci">``) a ``<div>``, and no end tag
    where HTML lets a page leave it out (``</li>``, ``</td>``, ...)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.in_style = False
        self.spans: list[str] = []  # what each open <span> became

    def attrs(self, attrs: list[tuple[str, str | None]]) -> str:
        parts = []
        for k, v in reversed(attrs):
            v = "renamed-" + (v or "").replace(" ", "-") if k == "class" else v
            parts.append(k if v is None else f'{k}="{escape(v)}"')
        return "".join(" " + p for p in parts)

    def handle_decl(self, decl: str) -> None:
        self.out.append(f"<!{decl}>\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "span":
            tag = "div" if ("class", "ci") in attrs else "span"
            self.spans.append(tag)
        self.in_style = tag == "style"
        spacing = "" if tag in INLINE else "\n    "
        self.out.append(f"{spacing}<{tag}{self.attrs(attrs)}>")
        if self.in_style:
            self.out.append("body { font-family: serif; } .renamed-x { color: red; }")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.out.append(f"\n  <{tag}{self.attrs(attrs)} />")

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self.spans:
            tag = self.spans.pop()
        self.in_style = False if tag == "style" else self.in_style
        if tag in OPTIONAL_END:
            return
        self.out.append(f"</{tag}>" + ("" if tag in INLINE else "\n"))

    def handle_data(self, data: str) -> None:
        if not self.in_style:
            self.out.append(escape(data, quote=False))


@pytest.mark.parametrize("kind", ["holdout-external", "loso"])
def test_markup_changes_alone_pass(kind: str) -> None:
    page = (DATA / kind / "report.html").read_text(encoding="utf-8")
    rewrite = Rewrite()
    rewrite.feed(page)
    rewrite.close()
    other = "".join(rewrite.out)
    assert other != page and "renamed-" in other and '<div class="renamed-ci">' in other
    assert differences(committed_html(kind), html_content(other)) == []
