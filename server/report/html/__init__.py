"""The cross-site report as one self-contained HTML page (``report.json`` -> ``report.html``).

``render_html(report)`` turns the document built by ``server.report.build`` (layout:
``server/report/report.schema.json``) into a page for clinical researchers: a plain
language guide, the headline pooled internal vs external comparison, the flags, the
per-site table, forest plots, the internal vs external gaps, ROC curves, reliability
diagrams, drift vs degradation, the model x site matrix and the provenance.

- ``view`` (and ``view_*``): the view model, the only code that reads the document;
- ``templates/``: the markup, one Jinja2 partial per section (``page.html.j2`` is the
  skeleton); autoescaped, and a name a template gets wrong is an error, not a blank;
- ``charts/``: the SVG figures, built by the view model;
- ``format``: how numbers and dates are written (the templates' filters);
- ``labels``: the names readers see for designs, tasks and flags;
- ``report.css``: the styles, inlined into the page;
- ``assets``: templates and CSS as the renderer loads them (``assets.json``, generated
  from the files: a Flower app bundle carries no ``.j2`` or ``.css`` file).

The page needs no network at all: the CSS is inline, every figure is an inline SVG,
there is no JavaScript, no font and no image to fetch. Every string from the report is
escaped (site names come from hospitals). The output depends on the report alone, so
the same report gives the same bytes. Missing values are shown as "n/a", never as a
number. Rendering imports nothing of the runtime (torch, Flower, MONAI).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping
from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined, select_autoescape
from markupsafe import Markup

from server.report.html.format import FILTERS
from server.report.html.view import read_page
from server.report.html.view_sites import skipped_text

__all__ = ["environment", "render_html", "skipped_text"]


def _escape(value: object) -> object:
    """What a template prints, escaped with the entities the page has always written
    (``&quot;``, ``&#x27;``, as the charts do); ``Markup`` (a chart, the CSS, a macro's
    output) passes through. Autoescape still applies to anything that reaches it."""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


@functools.cache
def environment() -> Environment:
    """The page's Jinja2 environment (made once, on first use)."""
    from server.report.html.assets import load  # not at import: `-m ...assets` writes it

    env = Environment(
        loader=DictLoader(load()[0]),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_escape,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    return env


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (see the module docstring)."""
    from server.report.html.assets import load

    css = Markup(load()[1])
    return environment().get_template("page.html.j2").render(page=read_page(report), css=css)
