"""A site's window summary, checked before the server stores it.

Like every reply (``server.reply_checks``), a monitoring reply is untrusted input: each
count a whole number no larger than the test cases the site declared, labelled cases no
more than cases, the 2x2 table adding up to the labelled cases, the score counts to the
window's cases, every estimate and its interval in [0, 1] and in order, the lists as long as
the run config says, and the threshold the one the server asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Message

from common.config import RunConfig
from common.window_summary import WindowSummary
from server.reply_checks import ReplyError, count_problem, metrics_problem, summary_record

ESTIMATES = ("est-auc", "est-sens", "est-spec")
MAX_MOMENT = 1e6  # an embedding mean or covariance entry beyond this is not one


def _problem(record: Mapping[str, Any], max_cases: int, cfg: RunConfig) -> str | None:
    problem = metrics_problem(record)
    if problem is not None:
        return problem
    counts = ("n", "n-labelled", "n-labelled-pos", "tp", "fp", "fn", "tn")
    for key in counts:
        if key in record:
            problem = count_problem(key, record[key], max_cases)
            if problem is not None:
                return problem
    if "n" not in record:
        return "no window count 'n'"
    n = int(record["n"])
    labelled, pos = int(record.get("n-labelled", 0)), int(record.get("n-labelled-pos", 0))
    if not pos <= labelled <= n:
        return f"n-labelled-pos = {pos} <= n-labelled = {labelled} <= n = {n} does not hold"
    cells = [record.get(k) for k in ("tp", "fp", "fn", "tn")]
    present = [int(c) for c in cells if c is not None]
    if present and (len(present) != 4 or sum(present) != labelled):
        return f"the 2x2 table {cells} does not add up to n-labelled = {labelled}"
    if "score-count" in record:
        scores = [int(v) for v in record["score-count"]]
        if len(scores) != cfg.eval.calibration_bins or min(scores) < 0 or sum(scores) != n:
            return (
                f"score-count has {len(scores)} bins summing to {sum(scores)}: expected "
                f"{cfg.eval.calibration_bins} non-negative counts summing to n = {n}"
            )
    for key in (*ESTIMATES, "auc"):
        lo, value, hi = (record.get(f"{key}-lo"), record.get(key), record.get(f"{key}-hi"))
        for name, v in ((key, value), (f"{key}-lo", lo), (f"{key}-hi", hi)):
            if v is not None and not 0.0 <= float(v) <= 1.0:
                return f"{name} = {v!r}: must lie in [0, 1]"
        if lo is not None and value is not None and hi is not None and not lo <= value <= hi:
            return f"{key} = {value!r} lies outside its interval [{lo!r}, {hi!r}]"
    if "auc-var" in record and not 0.0 <= float(record["auc-var"]) <= 0.25:
        return f"auc-var = {record['auc-var']!r}: an AUC's variance lies in [0, 0.25]"
    if "threshold" in record and float(record["threshold"]) != cfg.eval.thresholds[0]:
        return (
            f"threshold = {record['threshold']!r}: the server asked for {cfg.eval.thresholds[0]!r}"
        )
    for key in ("emb-mean", "emb-cov"):  # a projected embedding's moments, not any number
        values = record.get(key, [])
        if any(abs(float(v)) > MAX_MOMENT for v in values):
            return f"{key}: a value beyond +-{MAX_MOMENT:g}, no embedding moment"
    dims = cfg.eval.embedding_dims
    if "emb-mean" in record and (
        len(record["emb-mean"]) != dims or len(record.get("emb-cov", [])) != dims * dims
    ):
        return f"emb-mean / emb-cov: expected {dims} and {dims * dims} values"
    if "hist" in record:
        bins = cfg.eval.histogram_bins * len(cfg.data.channels)
        channels = int(record.get("hist-channels", 0))
        if len(record["hist"]) != bins or channels != len(cfg.data.channels):
            return f"hist: expected {len(cfg.data.channels)} channels x {cfg.eval.histogram_bins}"

    return None


def window_record(reply: Message, max_cases: int, cfg: RunConfig) -> dict[str, Any]:
    """A reply's window summary (its one MetricRecord), parsed and checked; ReplyError
    naming what cannot be believed."""
    record = summary_record(reply, max_cases)
    problem = _problem(record, max_cases, cfg)
    if problem is not None:
        raise ReplyError(problem)
    try:
        WindowSummary.from_record(record)  # the shapes parse
    except (KeyError, ValueError, TypeError) as e:
        raise ReplyError(f"unreadable window summary: {e!r}") from e
    return record
