"""The cross-site report as one self-contained HTML page (``report.json`` -> ``report.html``).

``render_html(report)`` turns the document built by ``server.report.build`` (layout:
``server/report/report.schema.json``) into a page for clinical researchers: a plain
language guide, the headline pooled internal vs external comparison, the
flags, the per-site table, forest plots, the internal vs external gaps, ROC
curves, reliability diagrams, drift vs degradation, the model x site matrix
and the provenance.

The page needs no network at all: the CSS is inline, every figure is an inline SVG
(``server.report.html.charts``), there is no JavaScript, no font and no image to fetch. Every string
that comes from the report (site names come from hospitals) is escaped. The
output depends on the report alone, so the same report gives the same bytes.
Missing values (null in the JSON) are shown as "n/a", never as a number.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from common.keys import loso_model
from server.report.html.charts.drift import drift_svg
from server.report.html.charts.forest import ForestPooled, ForestRow, forest_svg
from server.report.html.charts.numbers import finite as _finite
from server.report.html.charts.numbers import fmt, fmt_ci, fmt_sig
from server.report.html.charts.reliability import reliability_svg
from server.report.html.charts.roc import roc_svg
from server.report.html.charts.svg import Ids, site_colours

__all__ = ["render_html"]

NUM_CLASS = ' class="num"'
DESIGN_NAMES = {
    "holdout": "Hold-out",
    "loso": "Leave-one-site-out",
    "cross-site": "Cross-site",
}
DESIGN_NOTES = {
    "holdout": "One federated (global) model was trained on the training sites. It was "
    "evaluated on each training site's held-out test patients (internal) and on the "
    "designated external sites, which never contributed training data (external).",
    "loso": "Leave-one-site-out: for every training site, a model was federated without it "
    "and evaluated on all of that site's patients. Each row of the per-site table is a site "
    "scored by the model that never saw it (external); internal figures are each site's "
    "test-split AUC averaged over the folds it trained in.",
    "cross-site": "Cross-site: the federated (global) model plus one model trained at each "
    "site alone, each evaluated at every site. The per-site table shows the global model; "
    "the model \u00d7 site matrix shows every combination.",
}
TASK_NAMES = {
    "lesion-malignancy": "Lesion malignancy classification",
    "lesion-segmentation": "Lesion segmentation",
}
SEGMENTATION = "lesion-segmentation"
FLAG_NAMES = {
    "below-prediction-interval": "Below prediction interval",
    "drop-exceeds-margin": "AUC drop exceeds margin",
    "insufficient-data": "Insufficient data",
    "no-evaluation": "No evaluation received",
}
FLAG_SHORT = {
    "below-prediction-interval": "below PI",
    "drop-exceeds-margin": "drop > margin",
    "insufficient-data": "too few cases",
    "no-evaluation": "no report",
}


# ---- formatting -------------------------------------------------------------------------------


def esc(value: object) -> str:
    """HTML-escape any value (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def fmt_p(p: object) -> str:
    """A p-value as "0.083", "<0.001" or ">0.999"."""
    v = _finite(p)
    if v is None:
        return "n/a"
    if v < 0.001:
        return "<0.001"
    if v > 0.999:
        return ">0.999"
    return f"{v:.3f}"


def p_eq(p: object) -> str:
    """ "p = 0.083", "p < 0.001" or "p > 0.999" for running text."""
    text = fmt_p(p)
    return f"p {text[0]} {text[1:]}" if text[0] in "<>" else f"p = {text}"


def fmt_pct(x: object, digits: int = 1) -> str:
    """A proportion on [0, 1] as a percentage."""
    v = _finite(x)
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def fmt_date(created: object) -> str:
    """ISO 8601 timestamp as "23 Nov 2026, 13:54 UTC" (the raw text if it does not parse)."""
    try:
        when = datetime.fromisoformat(str(created))
    except ValueError:
        return str(created)
    offset = when.utcoffset()
    zone = "UTC" if offset is not None and offset.total_seconds() == 0 else ""
    return f"{when.day} {when:%b %Y, %H:%M} {zone}".strip()


def _get(obj: Any, *keys: str) -> Any:
    """Nested ``obj[k1][k2]...``; None as soon as a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _est_ci(block: Any, digits: int = 3) -> str:
    """A table cell's content: the estimate, its interval on a second line."""
    if not isinstance(block, Mapping) or _finite(block.get("estimate")) is None:
        return '<span class="na">n/a</span>'
    ci = fmt_ci(block.get("lo"), block.get("hi"), digits)
    return f'{fmt(block["estimate"], digits)}<span class="ci">{ci}</span>'


# ---- the page ---------------------------------------------------------------------------------


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (see the module docstring)."""
    return _Page(report).page()


class _Page:
    """Renders one report; holds the id counter and the site -> colour map."""

    def __init__(self, report: Mapping[str, Any]) -> None:
        self.r = report
        self.ids = Ids()  # element ids unique within the page
        self.task = str(report.get("task", ""))
        self.design = str(report.get("design", ""))
        self.segmentation = self.task == SEGMENTATION
        self.level = _finite(_get(report, "settings", "level")) or 0.95
        self.level_pct = f"{100 * self.level:g}%"
        self.rows: list[Mapping[str, Any]] = list(report.get("sites") or [])
        self.flags: list[Mapping[str, Any]] = list(report.get("flags") or [])
        self.pooled: Mapping[str, Any] = report.get("pooled") or {}
        names: list[str] = []
        sources: list[Iterable[Any]] = [
            (s.get("name") for s in report.get("sites_joined") or []),
            (r.get("site") for r in self.rows),
            (c.get("site") for c in report.get("matrix") or []),
            (c.get("site") for c in _get(report, "curves", "roc") or []),
            (c.get("site") for c in _get(report, "curves", "reliability") or []),
        ]
        for source in sources:
            for name in source:
                if name is not None and str(name) not in names:
                    names.append(str(name))
        self.site_order = names
        self.colours = site_colours(names)
        self.flag_numbers: dict[tuple[str, str], list[int]] = {}
        for i, f in enumerate(self.flags, start=1):
            key = (str(f.get("site", "")), str(f.get("model", "")))
            self.flag_numbers.setdefault(key, []).append(i)

    # ---- helpers ----

    def operating_table(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        tables = row.get("thresholds") or []
        op = _finite(_get(self.r, "settings", "operating_threshold"))
        for t in tables:
            if op is not None and _finite(t.get("threshold")) == op:
                return dict(t)
        return dict(tables[0]) if tables else {}

    def row_flags(self, site: object, model: object) -> list[int]:
        return self.flag_numbers.get((str(site), str(model)), [])

    def threshold_text(self) -> str:
        op = _finite(_get(self.r, "settings", "operating_threshold"))
        return "the operating threshold" if op is None else f"threshold {op:g}"

    # ---- sections ----

    def page(self) -> str:
        design = DESIGN_NAMES.get(self.design, self.design)
        task = TASK_NAMES.get(self.task, self.task)
        created = fmt_date(self.r.get("created", ""))
        title = f"Cross-site performance report \u2014 {design}, {task}, {created}"
        sections = [
            self.header(design, task, created),
            self.how_to_read(),
            self.headline(),
            self.flag_list(),
            self.site_table(),
            self.forest_section(),
            self.internal_external(),
            self.roc_section(),
            self.reliability_section(),
            self.drift_section(),
            self.matrix_section(),
            self.privacy_section(),
            self.provenance_section(),
        ]
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="color-scheme" content="light">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            '<main class="report">\n' + "\n".join(sections) + "\n</main>\n"
            f"{self.footer()}\n</body>\n</html>\n"
        )

    def header(self, design: str, task: str, created: str) -> str:
        joined = self.r.get("sites_joined") or []
        n_ext = self.designated_external()
        sites = f"{len(joined)} joined" + (f" ({n_ext} designated external)" if n_ext else "")
        items = [
            ("Design", design),
            ("Task", task),
            ("Created", created),
            ("Sites", sites),
            ("Intervals", f"{self.level_pct} confidence"),
        ]
        meta = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items)
        nav = [
            ("summary", "Summary"),
            ("flags", "Flags"),
            ("per-site", "Per-site results"),
            ("forest", "Forest plots"),
            ("internal-external", "Internal vs external"),
            ("roc", "ROC curves"),
            ("calibration", "Calibration"),
            ("drift", "Drift vs degradation"),
            ("matrix", "Model \u00d7 site matrix"),
            ("provenance", "Provenance"),
        ]
        links = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t in nav)
        return (
            '<header class="masthead">'
            '<p class="eyebrow">hepafed \u00b7 federated liver imaging</p>'
            "<h1>Cross-site performance report</h1>"
            f'<p class="subtitle">{esc(design)} design \u00b7 {esc(task)} \u00b7 {esc(created)}</p>'
            f'<dl class="meta">{meta}</dl>'
            f'<nav aria-label="Sections"><ul>{links}</ul></nav>'
            "</header>"
        )

    def designated_external(self) -> int:
        """How many sites joined the run as designated external sites."""
        joined = self.r.get("sites_joined") or []
        return sum(1 for site in joined if site.get("role") == "external")

    def design_note(self) -> str:
        """What the design trained and scored, said for this run's sites."""
        if self.design == "holdout" and not self.designated_external():
            return (
                "One federated (global) model was trained on the training sites and evaluated "
                "on each training site's held-out test patients (internal). No designated "
                "external site joined this run, so there is no external evaluation."
            )
        return DESIGN_NOTES.get(self.design, "")

    def how_to_read(self) -> str:
        s = self.r.get("settings") or {}
        margin = fmt(s.get("margin"), 3)
        pooling = esc(s.get("pooling", "REML"))
        hk = " with Hartung\u2013Knapp (t-based) intervals" if s.get("hartung_knapp") else ""
        bullets = [
            "Each hospital evaluated the model on its own patients and sent back summary "
            "statistics only; no images or per-patient results left the hospital.",
            esc(self.design_note()),
            "<strong>Internal</strong> sites (filled squares \u25a0) contributed training data; "
            "<strong>external</strong> sites (open circles \u25cb) did not. The external result is "
            "the better guide to how the model would perform at a new hospital.",
        ]
        if self.segmentation:
            bullets.append(
                "<strong>Dice</strong> measures the overlap between the predicted and the "
                "reference lesion outline: 0 = none, 1 = perfect. <strong>HD95</strong> is the "
                "95th-percentile distance between the outlines in millimetres (lower is better)."
            )
        else:
            bullets += [
                "<strong>AUC</strong> (area under the ROC curve) is the probability that the "
                "model scores a randomly chosen malignant lesion above a benign one: 0.5 is "
                "chance, 1 is perfect. Sensitivity, specificity, PPV and NPV are given at "
                f"{esc(self.threshold_text())}.",
                "<strong>Calibration</strong>: a slope of 1 and a calibration-in-the-large "
                "(CITL) of 0 mean predicted risks match observed rates; slope &lt; 1 means "
                "predictions are too extreme, &gt; 1 too timid; CITL &gt; 0 means risks are "
                "underestimated. ECE and Brier: lower is better.",
            ]
        if self.segmentation:
            intervals = (
                f"Ranges under each value are {self.level_pct} confidence intervals of the mean "
                "(t distribution). Dice is not pooled across sites."
            )
            flagged = (
                "A site is <strong>flagged</strong> (\u26a0) when it had too few cases for "
                "statistics or when it did not report."
            )
        else:
            intervals = (
                f"Ranges under each value are {self.level_pct} confidence intervals. Pooled "
                f"values combine sites by random-effects meta-analysis ({pooling}, logit "
                f"scale{hk}); the <strong>prediction interval</strong> is where the value of a "
                "new, similar hospital is expected to fall. I\u00b2 is the share of variation "
                "between sites that is not due to chance."
            )
            flagged = (
                "A site is <strong>flagged</strong> (\u26a0) when its AUC lies below the pooled "
                f"internal prediction interval or more than {margin} below the pooled internal "
                "AUC, when it had too few cases for statistics, or when it did not report."
            )
        bullets += [
            intervals,
            "<strong>Drift</strong> compares a site's data with the training sites' data: the "
            "relative Fr\u00e9chet distance of the model's internal image features (0 = "
            "identical), and the Wasserstein-1 distance (W1, in units of the CT window width) "
            "and population stability index (PSI; &lt; 0.1 small, &gt; 0.25 large) of the "
            "image intensities.",
            flagged,
        ]
        hooks = [str(h) for h in s.get("hooks") or []]
        if hooks:
            bullets.append(
                "<strong>Domain-adaptation hooks</strong> in this run, in order: "
                f"{esc(', '.join(hooks))}. Under each site's role the table says how the site "
                "adapted the model before scoring it: its own local layers (a site that "
                "trained it) or test-time adaptation on its unlabeled images (a site that did "
                "not); no mark means the model as received."
            )
        items = "".join(f"<li>{b}</li>" for b in bullets if b)
        return (
            _section_open("how-to-read", "How to read this report", "guide")
            + f"<ul>{items}</ul></section>"
        )

    def headline(self) -> str:
        internal = self.pooled.get("internal")
        external = self.pooled.get("external")
        diff = _get(self.pooled, "difference", "auc")
        cards: list[str] = []
        if self.segmentation:
            dice = [
                _finite(_get(r, "dice", "estimate")) for r in self.rows if not r.get("insufficient")
            ]
            values = [d for d in dice if d is not None]
            usable = sum(1 for r in self.rows if not r.get("insufficient"))
            cards.append(
                _card(
                    "Sites with statistics",
                    f"{usable} of {len(self.rows)}",
                    "Dice and HD95 are reported per site; they are not pooled.",
                )
            )
            cards.append(
                _card(
                    "Mean Dice across sites",
                    (f"{fmt(min(values))}\u2013{fmt(max(values))}" if values else "n/a"),
                    "Lowest to highest site mean (see the per-site table).",
                )
            )
        else:
            internal_label = "Pooled internal AUC" + (
                " (mean over folds)" if self.design == "loso" else ""
            )
            cards.append(self.pooled_card(internal_label, internal, "internal"))
            cards.append(self.pooled_card("Pooled external AUC", external, "external"))
            if isinstance(diff, Mapping) and _finite(diff.get("estimate")) is not None:
                cards.append(
                    _card(
                        "Internal \u2212 external AUC",
                        fmt(diff.get("estimate"), 3, signed=True),
                        f"{self.level_pct} CI {fmt_ci(diff.get('lo'), diff.get('hi'))}"
                        f"<br>{p_eq(diff.get('p'))} (z test)",
                    )
                )
            else:
                cards.append(
                    _card(
                        "Internal \u2212 external AUC",
                        "n/a",
                        "Needs both a pooled internal and a pooled external AUC.",
                    )
                )
            auc = _get(internal, "auc")
            if isinstance(auc, Mapping):
                cards.append(
                    _card(
                        "Heterogeneity between internal sites",
                        f"I\u00b2 = {fmt(auc.get('i2'), 1)}%",
                        f"\u03c4\u00b2 = {fmt(auc.get('tau2'), 3)} (logit scale)"
                        f"<br>Cochran's Q = {fmt(auc.get('q'), 2)}, {p_eq(auc.get('q_p'))}",
                        half=True,
                    )
                )
            else:
                cards.append(
                    _card(
                        "Heterogeneity between internal sites",
                        "n/a",
                        "No pooled internal AUC.",
                        half=True,
                    )
                )
        flagged = sorted({str(f.get("site", "")) for f in self.flags})
        total = len({*(str(r.get("site")) for r in self.rows), *flagged})
        names = ", ".join(esc(n) for n in flagged) if flagged else "No site needs attention."
        cards.append(
            _card(
                "Flagged sites",
                f"{len(flagged)} of {total}",
                names,
                warn=bool(flagged),
                half=not self.segmentation,
            )
        )
        sentence = self.headline_sentence()
        return (
            _section_open("summary", "Summary")
            + f'<div class="cards">{"".join(cards)}</div>{sentence}</section>'
        )

    def pooled_card(self, label: str, block: Any, role: str) -> str:
        auc = _get(block, "auc")
        if not isinstance(auc, Mapping) or _finite(auc.get("estimate")) is None:
            none_joined = role == "external" and not self.designated_external()
            why = "No site with a usable AUC" + (
                " (no designated external site joined this run)." if none_joined else "."
            )
            return _card(label, "n/a", why, role=role)
        k = block.get("k")
        sites = "site" if k == 1 else "sites"
        pi = auc.get("prediction_interval") or {}
        detail = (
            f"{self.level_pct} CI {fmt_ci(auc.get('lo'), auc.get('hi'))} \u00b7 k = {esc(k)} "
            f"{sites}<br>Prediction interval {fmt_ci(pi.get('lo'), pi.get('hi'))}"
        )
        return _card(label, fmt(auc.get("estimate")), detail, role=role)

    def headline_sentence(self) -> str:
        diff = _get(self.pooled, "difference", "auc")
        if self.segmentation or not isinstance(diff, Mapping):
            return ""
        d = _finite(diff.get("estimate"))
        lo, hi = _finite(diff.get("lo")), _finite(diff.get("hi"))
        if d is None:
            return ""
        direction = "lower" if d > 0 else "higher"
        if lo is not None and hi is not None:
            verdict = (
                "the interval includes zero, so the data are compatible with no difference"
                if lo <= 0 <= hi
                else "the interval excludes zero"
            )
        else:
            verdict = "its confidence interval could not be computed"
        return (
            '<p class="lede">Pooled AUC was '
            f"<strong>{fmt(abs(d))} {direction}</strong> at external than at internal sites "
            f"({self.level_pct} CI {fmt_ci(lo, hi)}, {p_eq(diff.get('p'))}); {verdict}.</p>"
        )

    def flag_list(self) -> str:
        head = _section_open("flags", "Flags")
        if not self.flags:
            return head + '<p class="ok">\u2713 No site was flagged.</p></section>'
        items = []
        for i, f in enumerate(self.flags, start=1):
            kind = str(f.get("kind", ""))
            meta = " \u00b7 ".join(
                esc(v) for v in (f.get("site"), f.get("model"), f.get("role")) if v
            )
            items.append(
                f'<li id="flag-{i}" class="flag"><span class="flag-icon" aria-hidden="true">'
                f'\u26a0</span><div><p class="flag-head"><span class="flag-id">F{i}</span> '
                f"{esc(FLAG_NAMES.get(kind, kind))}</p>"
                f'<p class="flag-msg">{esc(f.get("message", ""))}</p>'
                f'<p class="flag-meta">{meta}</p></div></li>'
            )
        return head + f'<ol class="flags">{"".join(items)}</ol></section>'

    def flag_cell(self, row: Mapping[str, Any]) -> str:
        numbers = self.row_flags(row.get("site"), row.get("model"))
        if not numbers:
            return '<td class="flagcell"><span class="visually-hidden">none</span></td>'
        links = []
        for i in numbers:
            f = self.flags[i - 1]
            short = FLAG_SHORT.get(str(f.get("kind")), str(f.get("kind")))
            links.append(
                f'<span class="fl"><span aria-hidden="true">\u26a0</span> '
                f'<a href="#flag-{i}" title="{esc(f.get("message", ""))}">F{i}</a>'
                f'<span class="flag-short">{esc(short)}</span></span>'
            )
        return f'<td class="flagcell">{"".join(links)}</td>'

    def site_table(self) -> str:
        head = _section_open("per-site", "Per-site results")
        if not self.rows:
            return head + '<p class="empty">No site evaluations in this report.</p></section>'
        table = self.segmentation_table() if self.segmentation else self.classification_table()
        joined = [str(s.get("name")) for s in self.r.get("sites_joined") or []]
        in_rows = {str(r.get("site")) for r in self.rows}
        missing = [n for n in joined if n not in in_rows]
        note = ""
        if missing:
            note = (
                '<p class="note">Joined but without a row here: '
                f"{', '.join(esc(m) for m in missing)}"
                + (
                    " (in this design the table lists each site under the model that left it "
                    "out; designated external sites are scored by every fold \u2014 see the "
                    "model \u00d7 site matrix)."
                    if self.design == "loso"
                    else " (see the flags and the model \u00d7 site matrix)."
                )
                + "</p>"
            )
        caption = (
            '<p class="note">Values are estimates with their '
            f"{self.level_pct} confidence interval below. Sensitivity, specificity, PPV and NPV "
            f"at {esc(self.threshold_text())}. Prevalence is the share of malignant lesions. "
            "Drift is measured against the internal sites of the same model.</p>"
            if not self.segmentation
            else f'<p class="note">Dice: mean with {self.level_pct} CI; median with '
            "interquartile range. HD95 in millimetres over cases where both outlines are "
            "non-empty.</p>"
        )
        return head + caption + f'<div class="table-wrap">{table}</div>' + note + "</section>"

    def _ident_cells(self, r: Mapping[str, Any]) -> str:
        role = str(r.get("role", ""))
        split = '<span class="ci">all cases</span>' if r.get("split") == "all" else ""
        if adapted := _adaptation_text(r):
            split += f'<span class="ci">{esc(adapted)}</span>'
        return (
            f'<th scope="row" class="site">{esc(r.get("site", ""))}'
            f'<span class="sub">{esc(r.get("model", ""))}</span></th>'
            f"<td>{_role_badge(role)}{split}</td>"
            f'<td class="num">{esc(r.get("n", ""))}{_skipped_note(r)}</td>'
        )

    def classification_table(self) -> str:
        thr = _finite(_get(self.r, "settings", "operating_threshold"))
        at = f"At threshold {thr:g}" if thr is not None else "At the operating threshold"
        groups = (
            '<tr class="group"><td colspan="5"></td>'
            f'<th colspan="4" scope="colgroup">{esc(at)}</th>'
            '<th colspan="4" scope="colgroup">Calibration</th>'
            '<th colspan="3" scope="colgroup">Drift vs internal sites</th>'
            "<td></td></tr>"
        )
        cols = [
            ("Site / model", "Site, and below it the model evaluated there"),
            ("Role", "internal: the site trained the model; external: it did not"),
            ("n", "Number of cases evaluated"),
            ("Prev.", "Prevalence: share of malignant lesions"),
            ("AUC", f"Area under the ROC curve ({self.level_pct} CI, DeLong)"),
            ("Sens.", "Sensitivity (Wilson CI)"),
            ("Spec.", "Specificity (Wilson CI)"),
            ("PPV", "Positive predictive value (Wilson CI)"),
            ("NPV", "Negative predictive value (Wilson CI)"),
            ("Slope", "Calibration slope (1 = ideal)"),
            ("CITL", "Calibration-in-the-large, logit scale (0 = ideal)"),
            ("ECE", "Expected calibration error"),
            ("Brier", "Brier score"),
            ("Fr\u00e9chet", "Relative Fr\u00e9chet distance of the image-feature embeddings"),
            ("W1", "Wasserstein-1 distance of input intensities (CT window widths)"),
            ("PSI", "Population stability index of input intensities"),
            ("Flags", "Flags raised for this site (see the list above)"),
        ]
        header = "".join(
            f'<th scope="col"{NUM_CLASS if 2 <= i < len(cols) - 1 else ""} title="{esc(t)}">'
            f"{esc(c)}</th>"
            for i, (c, t) in enumerate(cols)
        )
        body = []
        for r in self.rows:
            cls = ' class="flagged"' if self.row_flags(r.get("site"), r.get("model")) else ""
            if r.get("insufficient"):
                body.append(
                    f"<tr{cls}>{self._ident_cells(r)}"
                    f'<td colspan="13" class="insufficient">Insufficient data: {esc(r.get("n"))} '
                    f"cases ({esc(r.get('n_pos'))} malignant, {esc(r.get('n_neg'))} benign) "
                    "\u2014 below the minimum for reporting statistics</td>"
                    f"{self.flag_cell(r)}</tr>"
                )
                continue
            op = self.operating_table(r)
            cal = r.get("calibration") or {}
            drift = r.get("drift") or {}
            cells = [
                f'<td class="num">{fmt_pct(r.get("prevalence"))}</td>',
                f'<td class="num auc">{_est_ci(r.get("auc"))}</td>',
                f'<td class="num">{_est_ci(op.get("sensitivity"))}</td>',
                f'<td class="num">{_est_ci(op.get("specificity"))}</td>',
                f'<td class="num">{_est_ci(op.get("ppv"))}</td>',
                f'<td class="num">{_est_ci(op.get("npv"))}</td>',
                f'<td class="num">{_est_ci(cal.get("slope"), 2)}</td>',
                f'<td class="num">{_est_ci(cal.get("citl"), 2)}</td>',
                f'<td class="num">{fmt(cal.get("ece"))}</td>',
                f'<td class="num">{fmt(cal.get("brier"))}</td>',
                f'<td class="num">{fmt_sig(drift.get("frechet_relative"))}</td>',
                f'<td class="num">{fmt_sig(drift.get("wasserstein1"))}</td>',
                f'<td class="num">{fmt_sig(drift.get("psi"))}</td>',
            ]
            body.append(f"<tr{cls}>{self._ident_cells(r)}{''.join(cells)}{self.flag_cell(r)}</tr>")
        return (
            '<table class="data sites"><caption class="visually-hidden">Per-site results'
            "</caption>"
            f"<thead>{groups}<tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )

    def segmentation_table(self) -> str:
        cols = [
            "Site / model",
            "Role",
            "n",
            f"Dice, mean ({self.level_pct} CI)",
            "Dice, median (IQR)",
            "Dice SD",
            "HD95, mm (cases)",
            "Fr\u00e9chet",
            "W1",
            "PSI",
            "Flags",
        ]
        header = "".join(
            f'<th scope="col"{NUM_CLASS if 2 <= i < len(cols) - 1 else ""}>{esc(c)}</th>'
            for i, c in enumerate(cols)
        )
        body = []
        for r in self.rows:
            cls = ' class="flagged"' if self.row_flags(r.get("site"), r.get("model")) else ""
            if r.get("insufficient"):
                body.append(
                    f"<tr{cls}>{self._ident_cells(r)}"
                    f'<td colspan="7" class="insufficient">Insufficient data: {esc(r.get("n"))} '
                    "cases \u2014 below the minimum for reporting statistics</td>"
                    f"{self.flag_cell(r)}</tr>"
                )
                continue
            dice = r.get("dice") or {}
            hd = r.get("hd95_mm") or {}
            drift = r.get("drift") or {}
            iqr = fmt_ci(dice.get("q1"), dice.get("q3"))
            cells = [
                f'<td class="num">{_est_ci(dice)}</td>',
                f'<td class="num">{fmt(dice.get("median"))}<span class="ci">{iqr}</span></td>',
                f'<td class="num">{fmt(dice.get("sd"))}</td>',
                f'<td class="num">{fmt(hd.get("mean"), 1)}'
                f'<span class="ci">{esc(hd.get("n", 0))} cases</span></td>',
                f'<td class="num">{fmt_sig(drift.get("frechet_relative"))}</td>',
                f'<td class="num">{fmt_sig(drift.get("wasserstein1"))}</td>',
                f'<td class="num">{fmt_sig(drift.get("psi"))}</td>',
            ]
            body.append(f"<tr{cls}>{self._ident_cells(r)}{''.join(cells)}{self.flag_cell(r)}</tr>")
        return (
            '<table class="data sites"><caption class="visually-hidden">Per-site results'
            f"</caption><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )

    # ---- forest plots ----

    def forest_section(self) -> str:
        head = _section_open("forest", "Forest plots")
        if not self.rows:
            return head + '<p class="empty">No site evaluations to plot.</p></section>'
        figures = []
        if self.segmentation:
            items = [self.forest_item(r, _get(r, "dice")) for r in self.rows]
            figures.append(
                self.forest_figure(
                    "forest-dice",
                    "Mean Dice by site",
                    "Dice",
                    items,
                    [],
                    None,
                    "Dice is not pooled across sites.",
                )
            )
        else:
            measures = [
                ("auc", "AUC by site", "AUC", 0.5),
                ("sensitivity", "Sensitivity by site", "Sensitivity", None),
                ("specificity", "Specificity by site", "Specificity", None),
            ]
            for key, title, axis, chance in measures:
                items = [
                    self.forest_item(
                        r, r.get("auc") if key == "auc" else self.operating_table(r).get(key)
                    )
                    for r in self.rows
                ]
                pooled = []
                notes = []
                for role in ("internal", "external"):
                    block = self.pooled.get(role)
                    est = _get(block, key)
                    if isinstance(est, Mapping) and _finite(est.get("estimate")) is not None:
                        pi = est.get("prediction_interval") or {}
                        extra = f", I\u00b2 {fmt(est.get('i2'), 1)}%" if role == "internal" else ""
                        pooled.append(
                            ForestPooled(
                                f"Pooled {role} (k = {_get(block, 'k')}{extra})",
                                role,
                                float(est["estimate"]),
                                _finite(est.get("lo")),
                                _finite(est.get("hi")),
                                _finite(pi.get("lo")),
                                _finite(pi.get("hi")),
                            )
                        )
                    elif block is not None and key != "auc" and self.design == "loso":
                        notes.append(
                            f"No pooled {role} {axis.lower()}: fold models differ, so their "
                            "2\u00d72 counts cannot be combined."
                        )
                    elif block is None:
                        notes.append(f"No pooled {role} estimate (no usable site).")
                if key != "auc":
                    notes.insert(0, f"At {self.threshold_text()}.")
                else:
                    notes += self.excluded_notes()
                figures.append(
                    self.forest_figure(
                        f"forest-{key}", title, axis, items, pooled, chance, " ".join(notes)
                    )
                )
        pooled_legend = (
            ""
            if self.segmentation
            else " \u00b7 \u25c6 pooled estimate (width = CI) with its prediction interval as a "
            "thin line \u00b7 dashed vertical: pooled internal estimate \u00b7 dotted: chance "
            "(AUC 0.5)"
        )
        legend = (
            '<p class="note">\u25a0 internal site \u00b7 \u25cb external site \u00b7 horizontal '
            f"line: {self.level_pct} CI{pooled_legend}.</p>"
        )
        return head + legend + "".join(figures) + "</section>"

    def excluded_notes(self) -> list[str]:
        """Why sites were left out of the pooled AUCs (``pooled.*.excluded``)."""
        notes = []
        for role in ("internal", "external"):
            excluded = _get(self.pooled, role, "excluded")
            if isinstance(excluded, Mapping) and excluded:
                why = "; ".join(f"{site}: {reason}" for site, reason in excluded.items())
                notes.append(f"Left out of the pooled {role} AUC: {why}.")
        return notes

    def forest_item(self, row: Mapping[str, Any], block: Any) -> ForestRow:
        flagged = bool(self.row_flags(row.get("site"), row.get("model")))
        label = str(row.get("site", ""))
        # loso rows are each site under "without-SITE": the model is implied, not repeated
        if self.design != "loso" and any(r.get("model") != row.get("model") for r in self.rows):
            label = f"{label} ({row.get('model', '')})"
        n = row.get("n") if isinstance(row.get("n"), int) else None
        if row.get("insufficient"):
            return ForestRow(
                label, str(row.get("role")), n, None, None, None, "insufficient data", flagged
            )
        if not isinstance(block, Mapping) or _finite(block.get("estimate")) is None:
            return ForestRow(
                label, str(row.get("role")), n, None, None, None, "not estimable", flagged
            )
        return ForestRow(
            label,
            str(row.get("role")),
            n,
            _finite(block.get("estimate")),
            _finite(block.get("lo")),
            _finite(block.get("hi")),
            "",
            flagged,
        )

    def forest_figure(
        self,
        fig_id: str,
        title: str,
        axis: str,
        items: Sequence[ForestRow],
        pooled: Sequence[ForestPooled],
        chance: float | None,
        note: str,
    ) -> str:
        svg = self.forest_svg(title, axis, items, pooled, chance)
        caption = f"<strong>{esc(title)}.</strong>" + (f" {esc(note)}" if note else "")
        return (
            f'<figure id="{fig_id}" class="figure forest"><figcaption>{caption}</figcaption>'
            f"{svg}</figure>"
        )

    def forest_svg(
        self,
        title: str,
        axis: str,
        items: Sequence[ForestRow],
        pooled: Sequence[ForestPooled],
        chance: float | None,
    ) -> str:
        return forest_svg(self.ids, title, axis, items, pooled, chance, level_pct=self.level_pct)

    # ---- internal vs external ----

    def internal_external(self) -> str:
        head = _section_open("internal-external", "Internal vs external")
        if self.segmentation:
            return head + (
                '<p class="empty">Not applicable: the internal vs external comparison uses the '
                "AUC, which segmentation does not report. Compare Dice by role in the per-site "
                "table.</p></section>"
            )
        parts = [head]
        diff = _get(self.pooled, "difference", "auc")
        if isinstance(diff, Mapping):
            parts.append(
                '<table class="data compact"><caption>Pooled internal minus pooled external AUC'
                "</caption><thead><tr>"
                '<th scope="col">Pooled internal AUC</th><th scope="col">Pooled external AUC</th>'
                f'<th scope="col">Difference ({self.level_pct} CI)</th><th scope="col">z</th>'
                '<th scope="col">p</th></tr></thead><tbody><tr>'
                f'<td class="num">{_est_ci(_get(self.pooled, "internal", "auc"))}</td>'
                f'<td class="num">{_est_ci(_get(self.pooled, "external", "auc"))}</td>'
                f'<td class="num">{fmt(diff.get("estimate"), 3, True)}'
                f'<span class="ci">{fmt_ci(diff.get("lo"), diff.get("hi"))}</span></td>'
                f'<td class="num">{fmt(diff.get("z"), 2)}</td>'
                f'<td class="num">{fmt_p(diff.get("p"))}</td></tr></tbody></table>'
            )
        else:
            parts.append(
                '<p class="empty">No pooled difference: it needs both a pooled internal and a '
                "pooled external AUC.</p>"
            )
        if self.design == "loso":
            parts.append(self.fold_table())
            designated = [
                g for g in self.r.get("gaps") or [] if g.get("model") != _loso_model(g.get("site"))
            ]
            if designated:  # designated external sites, scored by every fold
                parts.append(self.gap_table(designated, "Designated external sites, per fold"))
        else:
            parts.append(self.gap_table(list(self.r.get("gaps") or []), "Per external site"))
        parts.append(
            '<p class="note">A gap is the pooled internal AUC of the model the site did not '
            "train minus the site's own AUC (positive = worse at the site), with a z test that "
            "treats the two as independent.</p>"
        )
        return "".join(parts) + "</section>"

    def gap_table(self, gaps: list[Mapping[str, Any]], caption: str) -> str:
        if not gaps:
            return '<p class="empty">No per-site gaps: no external site has an AUC.</p>'
        rows = []
        for g in gaps:
            d = g.get("gap") or {}
            flags = self.row_flags(g.get("site"), g.get("model"))
            tr = '<tr class="flagged">' if flags else "<tr>"
            rows.append(
                f'{tr}<th scope="row" class="site">'
                f"{esc(g.get('site', ''))}{_flag_mark(flags)}</th>"
                f'<td class="model">{esc(g.get("model", ""))}</td>'
                f'<td class="num">{fmt(g.get("internal_auc"))}</td>'
                f'<td class="num">{fmt(g.get("external_auc"))}</td>'
                f'<td class="num">{fmt(d.get("estimate"), 3, True)}'
                f'<span class="ci">{fmt_ci(d.get("lo"), d.get("hi"))}</span></td>'
                f'<td class="num">{fmt_p(d.get("p"))}</td></tr>'
            )
        return (
            f'<table class="data compact"><caption>{esc(caption)}</caption><thead><tr>'
            '<th scope="col">Site</th><th scope="col">Model</th>'
            '<th scope="col">Pooled internal AUC</th><th scope="col">Site AUC</th>'
            f'<th scope="col">Gap ({self.level_pct} CI)</th><th scope="col">p</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )

    def fold_table(self) -> str:
        folds = list(self.r.get("folds") or [])
        if not folds:
            return '<p class="empty">No folds in this report.</p>'
        # each fold's own left-out site (designated external sites have their own table)
        gaps = {
            str(g.get("model")): g
            for g in self.r.get("gaps") or []
            if g.get("model") == _loso_model(g.get("site"))
        }
        rows_by_model = {
            str(r.get("model")): r
            for r in self.rows
            if r.get("model") == _loso_model(r.get("site"))
        }
        body = []
        for f in folds:
            model = str(f.get("model", ""))
            g = gaps.get(model) or {}
            row = rows_by_model.get(model) or {}
            left_out = g.get("site") or row.get("site") or model.removeprefix("without-")
            block = f.get("internal")
            auc = _get(block, "auc")
            k = _get(block, "k")
            k_text = f'<span class="ci">k = {esc(k)}</span>' if k is not None else ""
            internal = (
                f'{fmt(auc.get("estimate"))}<span class="ci">'
                f"{fmt_ci(auc.get('lo'), auc.get('hi'))}</span>{k_text}"
                if isinstance(auc, Mapping)
                else '<span class="na">n/a</span>'
            )
            d = g.get("gap") or {}
            flags = self.row_flags(left_out, model)
            flagged = ' class="flagged"' if flags else ""
            body.append(
                f'<tr{flagged}><td class="model">{esc(model)}</td>'
                f'<th scope="row" class="site">{esc(left_out)}{_flag_mark(flags)}</th>'
                f'<td class="num">{internal}</td>'
                f'<td class="num">{_est_ci(row.get("auc"))}</td>'
                f'<td class="num">{fmt(d.get("estimate"), 3, True)}'
                f'<span class="ci">{fmt_ci(d.get("lo"), d.get("hi"))}</span></td>'
                f'<td class="num">{fmt_p(d.get("p"))}</td></tr>'
            )
        return (
            '<table class="data compact"><caption>Per fold (leave-one-site-out)</caption>'
            '<thead><tr><th scope="col">Fold model</th><th scope="col">Left-out site</th>'
            f'<th scope="col">Fold\'s pooled internal AUC ({self.level_pct} CI)</th>'
            '<th scope="col">External AUC at left-out site</th>'
            f'<th scope="col">Gap ({self.level_pct} CI)</th><th scope="col">p</th></tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
        )

    # ---- ROC ----

    def auc_of(self, site: object, model: object) -> Mapping[str, Any] | None:
        for cell in self.r.get("matrix") or []:
            if cell.get("site") == site and cell.get("model") == model:
                auc = cell.get("auc")
                return auc if isinstance(auc, Mapping) else None
        for row in self.rows:
            if row.get("site") == site and row.get("model") == model:
                auc = row.get("auc")
                return auc if isinstance(auc, Mapping) else None
        return None

    def roc_section(self) -> str:
        head = _section_open("roc", "ROC curves")
        curves = list(_get(self.r, "curves", "roc") or [])
        fpr = [float(v) for v in _get(self.r, "curves", "fpr") or []]
        if not curves or len(fpr) < 2:
            why = (
                "Not applicable to segmentation."
                if self.segmentation
                else "No site sent a ROC curve."
            )
            return head + f'<p class="empty">{why}</p></section>'
        models = _unique(str(c.get("model")) for c in curves)
        figures = []
        for model in models:
            group = [c for c in curves if str(c.get("model")) == model]
            title = "ROC curves" if len(models) == 1 else f"ROC curves, model {model}"
            svg = self.roc_svg(title, group, fpr)
            figures.append(
                f'<figure class="figure roc"><figcaption><strong>{esc(title)}</strong>'
                f"</figcaption>{svg}</figure>"
            )
        grid = ' class="grid-2"' if len(models) > 1 else ""
        note = (
            '<p class="note">Each curve shows the best sensitivity a site reached without '
            "exceeding each false-positive rate. Solid lines: internal sites; dashed lines: "
            "external sites. The diagonal is chance.</p>"
        )
        return head + note + f"<div{grid}>{''.join(figures)}</div></section>"

    def roc_svg(self, title: str, curves: Sequence[Mapping[str, Any]], fpr: Sequence[float]) -> str:
        aucs: dict[tuple[str, str], float | None] = {}
        for c in curves:
            auc = self.auc_of(c.get("site"), c.get("model"))
            key = (str(c.get("site", "")), str(c.get("model", "")))
            aucs[key] = _finite(auc.get("estimate")) if auc else None
        return roc_svg(self.ids, title, curves, fpr, colours=self.colours, aucs=aucs)

    # ---- reliability ----

    def reliability_section(self) -> str:
        head = _section_open("calibration", "Calibration: reliability diagrams")
        entries = list(_get(self.r, "curves", "reliability") or [])
        if not entries:
            why = (
                "Not applicable to segmentation."
                if self.segmentation
                else "No site sent calibration bins."
            )
            return head + f'<p class="empty">{why}</p></section>'
        models = _unique(str(e.get("model")) for e in entries)
        parts = [
            head,
            '<p class="note">Each point is one probability bin: mean predicted risk (x) against '
            "the observed rate of malignancy (y); its area and label show the number of cases. "
            "Points on the diagonal are perfectly calibrated; below it, the model overestimates "
            "risk. Squares: internal site; circles: external site.</p>",
        ]
        for model in models:
            group = [e for e in entries if str(e.get("model")) == model]
            if len(models) > 1:
                parts.append(f'<h3 class="model-head">Model {esc(model)}</h3>')
            panels = "".join(
                f'<figure class="figure reliability">{self.reliability_svg(e)}</figure>'
                for e in group
            )
            parts.append(f'<div class="grid-panels">{panels}</div>')
        return "".join(parts) + "</section>"

    def reliability_svg(self, e: Mapping[str, Any]) -> str:
        site, model = str(e.get("site", "")), str(e.get("model", ""))
        row = next(
            (r for r in self.rows if r.get("site") == site and r.get("model") == model), None
        )
        ece = _get(row, "calibration", "ece") if row else None
        slope = _get(row, "calibration", "slope", "estimate") if row else None
        return reliability_svg(self.ids, e, colours=self.colours, ece=ece, slope=slope)

    # ---- drift vs degradation ----

    def drift_section(self) -> str:
        head = _section_open("drift", "Drift vs degradation")
        dvd = self.r.get("drift_vs_degradation") or {}
        points = [
            p
            for p in dvd.get("points") or []
            if _finite(p.get("drift")) is not None and _finite(p.get("auc_drop")) is not None
        ]
        sp = dvd.get("spearman") or {}
        if _finite(sp.get("rho")) is not None:
            corr = (
                f"Spearman \u03c1 = {fmt(sp.get('rho'), 2)} ({p_eq(sp.get('p'))}, "
                f"n = {esc(sp.get('n'))} sites)."
            )
        else:
            corr = (
                "Spearman \u03c1 not computed: it needs at least 3 sites with varying drift and "
                f"AUC drop (n = {esc(sp.get('n', len(points)))})."
            )
        if not points:
            why = (
                "Not applicable to segmentation (no AUC)."
                if self.segmentation
                else "No site has both an AUC and an embedding drift."
            )
            return head + f'<p class="empty">{why} {corr}</p></section>'
        svg = self.drift_svg(points)
        caption = (
            "AUC drop (pooled internal AUC minus the site's AUC; positive = worse) against "
            "embedding drift (relative Fr\u00e9chet distance to the internal sites; 0 = "
            f"identical). {corr}"
        )
        return (
            head + f'<figure id="drift-scatter" class="figure scatter">{svg}'
            f"<figcaption>{caption}</figcaption></figure></section>"
        )

    def drift_svg(self, points: Sequence[Mapping[str, Any]]) -> str:
        margin = _finite(_get(self.r, "settings", "margin"))
        flagged = set(self.flag_numbers)
        return drift_svg(self.ids, points, margin=margin, flagged=flagged)

    # ---- matrix ----

    def matrix_section(self) -> str:
        head = _section_open("matrix", "Model \u00d7 site matrix")
        cells = list(self.r.get("matrix") or [])
        if not cells:
            return head + '<p class="empty">No evaluations.</p></section>'
        models = _unique(str(c.get("model")) for c in cells)
        sites = [s for s in self.site_order if any(str(c.get("site")) == s for c in cells)]
        lookup: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for c in cells:
            lookup.setdefault((str(c.get("model")), str(c.get("site"))), []).append(c)
        metric = "Dice" if self.segmentation else f"AUC ({self.level_pct} CI)"
        header = '<th scope="col">Model</th>' + "".join(
            f'<th scope="col">{esc(s)}</th>' for s in sites
        )
        body = []
        for m in models:
            tds = []
            for s in sites:
                entries = lookup.get((m, s), [])
                if not entries:
                    tds.append(
                        '<td class="cell none">\u2014<span class="visually-hidden">'
                        "not evaluated</span></td>"
                    )
                    continue
                tds.append(self.matrix_cell(entries))
            body.append(f'<tr><th scope="row" class="model">{esc(m)}</th>{"".join(tds)}</tr>')
        return (
            head + f'<p class="note">Every model evaluated at every site: {esc(metric)}, number '
            "of cases and role. Shaded cells: the site trained that model (internal); a dash: "
            "not evaluated.</p>"
            '<div class="table-wrap"><table class="data matrix"><caption class="visually-hidden">'
            f"Model by site matrix</caption><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div></section>"
        )

    def matrix_cell(self, entries: Sequence[Mapping[str, Any]]) -> str:
        parts = []
        role = str(entries[0].get("role", ""))
        for c in entries:
            split = ", all cases" if c.get("split") == "all" else ""
            adapted = f", {_adaptation_text(c)}" if _adaptation_text(c) else ""
            role_text = f"{c.get('role', '')}{split}{adapted}"
            meta = f'<span class="ci">n {esc(c.get("n", ""))} \u00b7 {esc(role_text)}</span>'
            if c.get("insufficient"):
                parts.append(f'<span class="na">insufficient data</span>{meta}')
            elif self.segmentation or "dice" in c:
                parts.append(f"Dice {fmt(c.get('dice'))}{meta}")
            else:
                parts.append(f"{_est_ci(c.get('auc'))}{meta}")
        cls = "internal" if role == "internal" else "external"
        return f'<td class="cell num {cls}">{"".join(parts)}</td>'

    # ---- privacy ----

    def privacy_section(self) -> str:
        """Epsilon and delta per site under differential privacy ("" without a DP run)."""
        block = self.r.get("privacy")
        if not block:
            return ""
        head = _section_open("privacy", "Privacy")
        budget = _finite(block.get("max_epsilon"))
        note = (
            f"Differential privacy <code>{esc(block.get('mode'))}</code>: noise multiplier "
            f"{esc(fmt_sig(block.get('noise_multiplier')))}, clip norm "
            f"{esc(fmt_sig(block.get('clip_norm')))}, budget "
            f"{esc(fmt_sig(budget)) if budget else 'none'}. Each site's epsilon is composed "
            "over every federation of the run it trained in "
            f"({esc(str(block.get('accounting', '')).upper())} accounting)."
        )
        rows = []
        for row in block.get("sites") or []:
            if row.get("epsilon") is None:
                why = "; ".join(str(u) for u in row.get("unbounded") or []) or "no guarantee"
                spent = f'<td class="na" colspan="2">unbounded: {esc(why)}</td>'
            else:
                spent = (
                    f'<td class="num">{fmt(row.get("epsilon"))}</td>'
                    f'<td class="num">{fmt(row.get("epsilon_gdp"))}</td>'
                )
            rows.append(
                f'<tr><th scope="row">{esc(row.get("site"))}</th>{spent}'
                f'<td class="num">{esc(fmt_sig(row.get("delta")))}</td>'
                f'<td class="num">{esc(row.get("releases"))}</td></tr>'
            )
        if not rows:
            empty = '<p class="empty">No site has released a noised update.</p>'
            return f'{head}<p class="note">{note}</p>{empty}</section>'
        return (
            head + f'<p class="note">{note}</p>'
            '<div class="table-wrap"><table class="data"><caption class="visually-hidden">'
            "Privacy spent per site</caption><thead><tr>"
            '<th scope="col">Site</th><th scope="col">Epsilon</th>'
            '<th scope="col">Epsilon (exact)</th><th scope="col">Delta</th>'
            '<th scope="col">Releases</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div></section>"
        )

    # ---- provenance ----

    def provenance_section(self) -> str:
        prov = self.r.get("provenance") or {}
        items = [
            ("Code version", prov.get("code_version")),
            ("Run folder", prov.get("run_dir")),
            ("Report created", self.r.get("created")),
            ("Report format version", self.r.get("report_version")),
        ]
        dl = "".join(
            f"<div><dt>{esc(k)}</dt><dd><code>{esc(v)}</code></dd></div>"
            for k, v in items
            if v not in (None, "")
        )
        models = prov.get("model_sha256") or {}
        model_rows = "".join(
            f'<tr><th scope="row" class="model">{esc(m)}</th><td>{_hash(h)}</td></tr>'
            for m, h in models.items()
        )
        model_table = (
            '<table class="data compact"><caption>Model weights (SHA-256)</caption>'
            '<thead><tr><th scope="col">Model</th><th scope="col">SHA-256</th></tr></thead>'
            f"<tbody>{model_rows}</tbody></table>"
            if model_rows
            else '<p class="empty">No model hashes recorded.</p>'
        )
        manifests = prov.get("manifest_sha256") or {}
        joined = list(self.r.get("sites_joined") or [])
        names = _unique([*(str(s.get("name")) for s in joined), *map(str, manifests)])
        by_name = {str(s.get("name")): s for s in joined}
        site_rows = []
        for n in names:
            s = by_name.get(n, {})
            h = manifests.get(n, s.get("manifest_sha256", ""))
            site_rows.append(
                f'<tr><th scope="row" class="site">{esc(n)}</th>'
                f"<td>{esc(s.get('role', 'n/a'))}</td>"
                f'<td class="num">{esc(s.get("n_train", "n/a"))}</td>'
                f'<td class="num">{esc(s.get("n_test", "n/a"))}</td>'
                f"{_acquisition_cells(s.get('acquisition'))}"
                f"<td>{_hash(h)}</td></tr>"
            )
        site_table = (
            '<table class="data compact"><caption>Sites that joined, their acquisition '
            "(cases per value; slice thickness min&ndash;max) and their manifests"
            '</caption><thead><tr><th scope="col">Site</th><th scope="col">Role</th>'
            '<th scope="col">Training cases</th><th scope="col">Test cases</th>'
            '<th scope="col">Vendor</th><th scope="col">Scanner model</th>'
            '<th scope="col">Kernel</th><th scope="col">Slice thickness (mm)</th>'
            '<th scope="col">Manifest SHA-256</th></tr></thead>'
            f"<tbody>{''.join(site_rows)}</tbody></table>"
        )
        settings = self.r.get("settings") or {}
        settings_rows = "".join(
            f'<tr><th scope="row">{esc(k)}</th><td><code>{esc(_plain(v))}</code></td></tr>'
            for k, v in settings.items()
        )
        config = prov.get("config") or {}
        config_rows = "".join(
            f'<tr><th scope="row"><code>{esc(k)}</code></th><td><code>{esc(_plain(v))}</code>'
            "</td></tr>"
            for k, v in config.items()
        )
        config_block = (
            f"<details><summary>Resolved run configuration ({len(config)} settings)</summary>"
            f'<table class="data kv"><thead><tr><th scope="col">Key</th><th scope="col">Value'
            f"</th></tr></thead><tbody>{config_rows}</tbody></table></details>"
            if config
            else '<p class="empty">No run configuration recorded.</p>'
        )
        return (
            _section_open("provenance", "Provenance")
            + f'<dl class="meta prov">{dl}</dl><div class="grid-2 tables">{model_table}'
            f'<table class="data compact"><caption>Report settings</caption><thead><tr>'
            '<th scope="col">Setting</th><th scope="col">Value</th></tr></thead>'
            f"<tbody>{settings_rows}</tbody></table></div>{site_table}{config_block}</section>"
        )

    def footer(self) -> str:
        version = self.r.get("report_version", "")
        code = _get(self.r, "provenance", "code_version")
        made = f" \u00b7 hepafed {esc(code)}" if code else ""
        return (
            '<footer class="foot"><p>Report format version '
            f'<span class="report-version">{esc(version)}</span>{made} \u00b7 Computed from '
            "site summary statistics only; no patient-level data were shared.</p></footer>"
        )


# ---- small pieces ----------------------------------------------------------------------------


def _section_open(section_id: str, title: str, css_class: str = "") -> str:
    """A report section's opening tag and heading, linked for assistive technology."""
    cls = f' class="{css_class}"' if css_class else ""
    return (
        f'<section id="{section_id}"{cls} aria-labelledby="{section_id}-h">'
        f'<h2 id="{section_id}-h">{title}</h2>'
    )


def skipped_text(row: Mapping[str, Any]) -> str:
    """'skipped cases: N (id, id, ...)' for a row whose site left bad cases out, else ''."""
    skipped = row.get("skipped_cases") or {}
    n = int(skipped.get("n") or 0)
    if not n:
        return ""
    ids = [str(i) for i in skipped.get("ids") or []]
    more = ", \u2026" if 0 < len(ids) < n else ""
    return f"skipped cases: {n}" + (f" ({', '.join(ids)}{more})" if ids else "")


def _skipped_note(row: Mapping[str, Any]) -> str:
    text = skipped_text(row)
    if not text:
        return ""
    title = "bad cases left out under data.on-bad-case = skip; not counted in n"
    return f'<span class="ci skipped" title="{esc(title)}">{esc(text)}</span>'


def _adaptation_text(row: Mapping[str, Any]) -> str:
    """How a site adapted the model before scoring it, for display; "" when it did not."""
    adaptation = str(row.get("adaptation") or "none")
    return "" if adaptation == "none" else adaptation.replace("-", " ")


def _acquisition_cells(acq: object) -> str:
    """Vendor, scanner model, kernel and slice thickness cells of a site's acquisition summary.

    Categorical fields show each value with its case count when a site has several;
    slice thickness shows min-max (one number when all cases agree).
    """
    a = acq if isinstance(acq, Mapping) else {}

    def counts(key: str) -> str:
        c = a.get(key)
        if not isinstance(c, Mapping) or not c:
            return '<td class="na">n/a</td>'
        if len(c) == 1:
            return f"<td>{esc(next(iter(c)))}</td>"
        return "<td>" + ", ".join(f"{esc(k)} ({esc(v)})" for k, v in c.items()) + "</td>"

    rng = a.get("slice_thickness_mm")
    if isinstance(rng, Mapping) and _finite(rng.get("min")) is not None:
        lo, hi = (f"{_finite(rng.get(k)) or 0:g}" for k in ("min", "max"))
        thickness = f'<td class="num">{lo if lo == hi else f"{lo}&ndash;{hi}"}</td>'
    else:
        thickness = '<td class="num na">n/a</td>'
    return counts("vendor") + counts("scanner_model") + counts("kernel") + thickness


def _unique(values: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _hash(value: object) -> str:
    text = str(value or "")
    if not text:
        return '<span class="na">n/a</span>'
    short = text[:12] + ("\u2026" if len(text) > 12 else "")
    return f'<code class="hash" title="{esc(text)}">{esc(short)}</code>'


def _flag_mark(numbers: Sequence[int]) -> str:
    """A warning sign after a name, linked to the first of its flags."""
    if not numbers:
        return ""
    ids = ", ".join(f"F{i}" for i in numbers)
    return f' <a class="flag-mark" href="#flag-{numbers[0]}" title="flags {ids}">\u26a0 {ids}</a>'


def _role_badge(role: str) -> str:
    cls = "external" if role == "external" else "internal" if role == "internal" else "other"
    return f'<span class="badge {cls}">{esc(role or "n/a")}</span>'


def _card(
    label: str, value: str, detail: str, role: str = "", warn: bool = False, half: bool = False
) -> str:
    """A headline card; ``detail`` is trusted HTML built here from escaped parts."""
    cls = "card" + (f" {role}" if role else "") + (" warn" if warn else "")
    cls += " half" if half else ""
    return (
        f'<div class="{cls}"><p class="card-label">{esc(label)}</p>'
        f'<p class="card-value">{esc(value)}</p><p class="card-detail">{detail}</p></div>'
    )


CSS = """
:root{--ink:#1f2937;--muted:#6b7280;--line:#d1d5db;--soft:#f3f4f6;--int:#1d4e89;
--ext:#c2410c;--flag:#b91c1c;--flagbg:#fef2f2;--ok:#166534;
--font:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:#f5f6f8;color:var(--ink);font:15px/1.5 var(--font)}
.report,.foot{max-width:1240px;margin:0 auto;padding:0 24px}
.masthead{max-width:1240px;margin:0 auto;padding:28px 24px 8px}
.eyebrow{margin:0;color:var(--muted);font-size:12px;letter-spacing:.08em;text-transform:uppercase}
h1{margin:4px 0 2px;font-size:28px;line-height:1.2;font-weight:650}
.subtitle{margin:0 0 14px;color:var(--muted);font-size:15px}
h2{font-size:20px;margin:0 0 12px;padding-bottom:6px;border-bottom:2px solid var(--ink)}
h3{font-size:16px;margin:18px 0 8px}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:20px 22px;
margin:0 0 18px}
dl.meta{display:flex;flex-wrap:wrap;gap:8px 28px;margin:0 0 12px}
dl.meta div{min-width:0}
dl.meta dt{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
dl.meta dd{margin:0;font-weight:600}
dl.prov dd{font-weight:400}
nav ul{list-style:none;display:flex;flex-wrap:wrap;gap:4px 6px;margin:6px 0 14px;padding:0}
nav a{display:inline-block;padding:3px 10px;border:1px solid var(--line);border-radius:14px;
color:var(--int);text-decoration:none;font-size:13px;background:#fff}
nav a:hover{background:var(--soft)}
.guide{background:#f8fafc}
.guide ul{margin:0;padding-left:20px}
.guide li{margin:3px 0}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:12px}
.card{grid-column:span 2}
.card.half{grid-column:span 3}
.card{border:1px solid var(--line);border-top:4px solid var(--muted);border-radius:6px;
padding:12px 14px;background:#fff}
.card.internal{border-top-color:var(--int)}
.card.external{border-top-color:var(--ext)}
.card.warn{border-top-color:var(--flag);background:var(--flagbg)}
.card-label{margin:0;font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
.card-value{margin:2px 0;font-size:28px;font-weight:700;font-variant-numeric:tabular-nums}
.card.warn .card-value{color:var(--flag)}
.card-detail{margin:0;font-size:13px;color:#374151;font-variant-numeric:tabular-nums}
.lede{margin:14px 0 0;font-size:15px}
.ok{color:var(--ok);font-weight:600;margin:0}
ol.flags{list-style:none;margin:0;padding:0;display:grid;gap:8px}
.flag{display:flex;gap:12px;align-items:flex-start;border:1px solid #fecaca;
border-left:6px solid var(--flag);background:var(--flagbg);border-radius:4px;padding:10px 14px}
.flag-icon{color:var(--flag);font-size:22px;line-height:1}
.flag p{margin:0}
.flag-head{font-weight:700;color:var(--flag);font-size:14px}
.flag-id{display:inline-block;background:var(--flag);color:#fff;border-radius:3px;
padding:0 6px;margin-right:4px;font-size:12px}
.flag-msg{font-size:15px;font-weight:600}
.flag-meta{font-size:12px;color:var(--muted)}
.note{color:#4b5563;font-size:13px;margin:6px 0 10px}
.empty{color:var(--muted);font-style:italic}
.table-wrap{overflow-x:auto}
table.data{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums;
margin:0 0 12px}
table.data caption{text-align:left;font-weight:600;font-size:14px;padding:4px 0 6px}
table.data th,table.data td{padding:5px 6px;border-bottom:1px solid #e5e7eb;
vertical-align:top;text-align:left}
table.data thead th{background:var(--soft);font-size:12px;border-bottom:2px solid #9ca3af;
vertical-align:bottom;white-space:nowrap}
table.data thead th[title]{text-decoration:underline dotted;cursor:help}
table.data tr.group td{border-bottom:none}
table.data tr.group th{background:#fff;border-bottom:1px solid #9ca3af;text-align:center;
font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
table.sites{width:100%;font-size:12px}
table.sites th,table.sites td{padding:5px 5px}
table.data tr.group th{white-space:normal}
table.data td.num{text-align:right;white-space:nowrap}
td.num .ci{display:block;font-size:11px;color:var(--muted)}
td .ci{display:block;font-size:11px;color:var(--muted)}
th.site{white-space:nowrap;font-weight:600}
th.site .sub{display:block;font-weight:400;font-size:11px;color:var(--muted);
white-space:normal;max-width:9em}
table.data thead th.num{text-align:right}
td.model,th.model{white-space:nowrap;font-size:12px}
td.auc{font-weight:600}
tr.flagged{background:var(--flagbg)}
table.sites tr.flagged th.site{box-shadow:inset 4px 0 0 var(--flag)}
a.flag-mark{color:var(--flag);font-size:11px;text-decoration:none}
td.flagcell{color:var(--flag);font-weight:600;min-width:52px}
td.flagcell a{color:var(--flag)}
.fl{display:block;white-space:nowrap}
.fl+.fl{margin-top:3px}
.flag-short{display:block;white-space:normal;font-size:10.5px;font-weight:400;line-height:1.25}
td.insufficient{color:#92400e;font-style:italic;background:repeating-linear-gradient(
45deg,#fffbeb,#fffbeb 6px,#fef3c7 6px,#fef3c7 12px)}
.na{color:var(--muted)}
.badge{display:inline-block;padding:0 7px;border-radius:10px;font-size:11px;font-weight:600;
border:1.5px solid currentColor;white-space:nowrap}
.badge.internal{color:#fff;background:var(--int);border-color:var(--int)}
.badge.external{color:var(--ext);background:#fff}
.badge.other{color:var(--muted)}
table.compact{width:auto}
table.data.compact td.num{text-align:left}
table.matrix td.cell{min-width:104px}
table.matrix td.internal{background:#eef4fb}
table.matrix td.external{background:#fff}
table.matrix td.none{color:var(--muted);text-align:center}
table.kv code{font-size:12px}
.figure{margin:0 0 16px}
.figure figcaption{font-size:13px;color:#4b5563;margin:0 0 4px;max-width:940px}
.figure figcaption strong{color:var(--ink);font-size:14px}
.scatter figcaption{margin-top:4px}
svg.chart{display:block;max-width:100%;height:auto;font-family:var(--font)}
svg.chart text{fill:var(--ink);font-size:12px}
svg.chart .th{font-weight:700;font-size:12px}
svg.chart .lbl{font-size:12px}
svg.chart .strong{font-weight:700}
svg.chart .muted{fill:var(--muted)}
svg.chart .small{font-size:10.5px}
svg.chart .ital{font-style:italic}
svg.chart .num{font-variant-numeric:tabular-nums}
svg.chart .tick{font-size:11px;fill:#4b5563}
svg.chart .axis{font-size:12px;fill:#374151}
svg.chart .flagged,svg.chart .flagtext{fill:var(--flag)}
svg.chart .flagged{font-weight:700}
.grid-2{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:8px 24px;
align-items:start}
.grid-panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(205px,1fr));gap:10px}
.grid-panels .figure{border:1px solid #e5e7eb;border-radius:4px;margin:0}
.model-head{font-size:14px;color:#374151}
details{margin-top:8px}
summary{cursor:pointer;font-weight:600;color:var(--int)}
code{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
code.hash{background:var(--soft);padding:1px 4px;border-radius:3px}
.foot{color:var(--muted);font-size:12px;padding-bottom:28px}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);
white-space:nowrap}
@media print{
@page{size:A4 landscape;margin:11mm}
body{background:#fff;font-size:11px}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
.report,.masthead,.foot{max-width:none;padding:0}
nav{display:none}
section{border:none;border-radius:0;padding:0;margin:0 0 14px}
h2{break-after:avoid}
.figure,.card,.flag,tr,.grid-panels .figure{break-inside:avoid}
thead{display:table-header-group}
table.data,table.sites{font-size:10px}
table.sites th,table.sites td{padding:3px 3px}
td .ci,td.num .ci,th.site .sub{font-size:9px}
th.site .sub{max-width:12em}
.table-wrap{overflow:visible}
details>summary{list-style:none}
details::details-content{content-visibility:visible;display:contents}
a{color:inherit;text-decoration:none}
}
"""


def _loso_model(site: object) -> str:
    """The leave-one-site-out fold that left ``site`` out."""
    return loso_model(str(site))
