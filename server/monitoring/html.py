"""``monitor.json`` as one self-contained HTML page (``monitor.html``).

``render_html(doc)`` shows how a deployed model held up at each site, window by window:
the model and the monitoring settings, the performance alarms, the drift notices (kept
apart: a change in the images is not by itself a loss of performance), and per site a
timeline of the estimated and the actual AUC, the CUSUM charts, the acquisition changes,
the check of the label-free estimate against the labels, and the window table.

It is built with the cross-site report's machinery (``server.report.html``): its Jinja2
environment (autoescaped; a name a template gets wrong is an error), number formats,
SVG pieces and CSS, plus the page's own templates (``monitor.html.j2``, the
``_monitor_*`` partials and ``_monitor.css.j2``, carried in ``assets.json`` like the
report's). The templates see the ``MonitorPage`` that ``server.monitoring.page`` reads
from the document. The page fetches nothing (inline CSS and SVG, no script),
and its Content-Security-Policy allows nothing but its own style element.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from server.monitoring.page_read import read_monitor
from server.report.html import environment
from server.report.html.assets import load

__all__ = ["render_html"]


def style() -> str:
    """The page's CSS: the report's, then the monitoring page's own rules."""
    own = environment().get_template("_monitor.css.j2").render()
    return load()[1] + own


def csp(css: str) -> str:
    """The Content-Security-Policy: nothing may load; only this exact style element applies."""
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii")
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


def render_html(doc: Mapping[str, Any]) -> str:
    """``doc`` as one self-contained HTML page (see the module docstring)."""
    css = style()
    return (
        environment()
        .get_template("monitor.html.j2")
        .render(page=read_monitor(doc), css=Markup(css), csp=csp(css))
    )
