"""The cross-site report: site summaries -> per-site statistics, pooling, gaps, drift, flags.

Input is only what sites sent (``Evaluation`` records of ``server.designs``)
and the run's provenance; output is one JSON-ready document whose layout is
published in ``server/report/report.schema.json`` (``REPORT_VERSION``). Every number
comes from ``common.stats``:

- per site: AUC with its DeLong CI; sensitivity, specificity, PPV, NPV (Wilson),
  LR+/LR-/DOR at every configured threshold; calibration-in-the-large, slope
  and intercept (GLM fit at the site), ECE and Brier from the bin summaries;
  drift of the site's inputs and embeddings against the reference sites;
- pooled, separately over internal and external evaluations: random-effects
  AUC, sensitivity and specificity on the logit scale (``eval.pooling``,
  ``eval.hartung-knapp``) with CI, prediction interval, tau², I², Q;
- internal vs external: pooled internal minus pooled external AUC with its CI
  and z test, and per site the gap between the pooled internal AUC of the
  model that site did not train and the site's own AUC (independent patients,
  so the variances add). This tests the site against the pooled *mean*; whether
  a site is unusual among sites is the prediction-interval flag, which adds
  tau²;
- drift vs degradation: Spearman correlation across sites of the embedding
  Fréchet distance (relative: divided by the trace of the reference sites'
  pooled embedding covariance, so it is scale-free) and the AUC drop;
- flags: sites whose AUC lies below the pooled internal prediction interval,
  whose drop exceeds ``eval.margin``, with insufficient data, or that did not
  report.

Which evaluations are "primary" depends on the design: the global model for
``holdout`` and ``cross-site``; for ``loso`` each fold's model, each site
appearing as external exactly once (its own fold). In ``loso`` a site's
internal AUC is the mean over the folds it trained in, with the mean of their
variances (the fold estimates share patients, so treating them as perfectly
correlated is the conservative choice); pooled internal sensitivity and
specificity are therefore not given for ``loso`` (2x2 counts of different
models cannot be averaged), only pooled external ones. Designated external
sites are scored by every fold: each fold's evaluation is a row with its gap
against that fold's pooled internal AUC, but they are not in the pooled
external estimate, which counts each left-out training site once.

Each row carries its ``reference``: the pooled internal AUC it is compared
with (holdout: all internal sites; loso: the internal sites of the fold that
left the row's site out). Drops, flags and the drift scatter use it. A row's
drift is measured against the model's internal sites other than itself, so
an internal site is not compared with a distribution that contains it.
A pooled block over a single site (k = 1) is that site's AUC on the logit
scale: its interval differs slightly from the site's own DeLong interval and
its prediction interval equals its confidence interval (tau² = 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from common.keys import GLOBAL_MODEL, EvalDesign, Task
from server.designs import Evaluation
from server.report.design_body import holdout_body, loso_body, model_site_matrix
from server.report.flags import flags
from server.report.lesion_type import lesion_type_block
from server.report.model import REPORT_VERSION
from server.report.settings import ReportSettings


def primary_evaluations(evals: Sequence[Evaluation], design: str) -> list[Evaluation]:
    """The evaluations the per-site table, pooling and gaps are about (see module docstring)."""
    if design == EvalDesign.LOSO:
        return [e for e in evals if e.model.startswith("without-")]
    return [e for e in evals if e.model == GLOBAL_MODEL]


def build_report(
    evaluations: Sequence[Evaluation],
    config: Mapping[str, Any],
    sites: Sequence[Mapping[str, Any]],
    provenance: Mapping[str, Any] | None = None,
    failed: Mapping[str, Mapping[str, str]] | None = None,
    privacy: Mapping[str, Any] | None = None,
    threshold_choices: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The report document (see the module docstring and ``report.schema.json``);
    ``privacy``: the DP block (``server.report.privacy``), omitted when None;
    ``threshold_choices``: each model's operating threshold chosen on validation data
    (``common.operating_point``), whose test tables list it first."""
    cfg = ReportSettings.from_flat(config)
    roles = {str(s["name"]): str(s["role"]) for s in sites}
    primary = primary_evaluations(evaluations, cfg.design)
    chosen = {str(c["model"]): float(c["threshold"]) for c in threshold_choices}
    primary_models = sorted({e.model for e in primary})
    operating = next((chosen[m] for m in primary_models if m in chosen), cfg.thresholds[0])
    body = loso_body(primary, cfg) if cfg.design == EvalDesign.LOSO else holdout_body(primary, cfg)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": cfg.task,
        "design": cfg.design,
        "settings": {
            "level": cfg.level,
            "thresholds": list(cfg.thresholds),
            "operating_threshold": operating,
            "pooling": cfg.pooling,
            "hartung_knapp": cfg.hartung_knapp,
            "margin": cfg.margin,
            "hooks": list(cfg.hooks),
            **(
                {"threshold_choices": [dict(c) for c in threshold_choices]}
                if threshold_choices
                else {}
            ),
        },
        # node ids are unsigned 64-bit: strings, so JSON readers keep every digit
        # a site that sent no acquisition summary has none in the report (not an empty one)
        "sites_joined": [
            {
                **{k: v for k, v in s.items() if k != "acquisition" or v},
                "node_id": str(s["node_id"]),
            }
            for s in sites
        ],
        **body,
        "matrix": model_site_matrix(evaluations, cfg),
        "provenance": dict(provenance or {}),
    }
    if privacy is not None:
        report["privacy"] = dict(privacy)
    if cfg.task == Task.LESION_TYPE:
        report["lesion_type"] = lesion_type_block(primary, cfg)
    report["flags"] = flags(report, cfg, roles, failed or {})
    return report
