"""What a site's reply says about itself, checked before the server believes it.

Every number and text a site sends is untrusted input: counts, metrics, JSON.
Each check here returns why a value must not be used, naming the key, the value
and the limit, or None; ``ReplyError`` carries the same reason where a parser
must stop. The callers turn a reason into a named rejection of that site's reply
(``server.validation``, ``server.sites``, ``server.federation``), never a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord

from common.badcases import SKIPPED_CASES
from common.keys import RecordKey
from common.summary import SUPPRESSED_CELL

# more cases than any one hospital's manifest lists: a count above it is absurd, not large
MAX_CASES = 10_000_000
MAX_INT = 2**63  # MetricRecord integers are int64; a larger Python int is no honest metric
MAX_JSON_CHARS = 1_000_000  # a site's JSON text (acquisition summary, hook statistics)

CLASS_CAL_KEYS = ("class-cal-count", "class-cal-sum-p", "class-cal-sum-y")
# evaluation summary keys (``common.summary.SiteSummary.to_record``) that count cases
SUMMARY_COUNTS = (
    "num-examples", "n", "n-pos", "n-neg", "hd95-n", "saliency-n", "saliency-liver-n",
    SKIPPED_CASES,
)  # fmt: skip
# evaluation summary keys that are shares of a whole (``client.explain``: Grad-CAM mass in
# the lesion and in the liver outside it, the shares of the image they cover)
SUMMARY_SHARES = ("saliency-lesion", "saliency-chance", "saliency-liver", "saliency-liver-chance")
# the saliency means and their count (``client.explain``): each group comes whole or not at all
LESION_SALIENCY = ("saliency-lesion", "saliency-chance", "saliency-n")
LIVER_SALIENCY = ("saliency-liver", "saliency-liver-chance", "saliency-liver-n")
SHARE_SLACK = 1e-6  # rounding allowed where shares of one whole add up
# summary values with a fixed range: AUCs and rates in [0, 1], variances >= 0, Brier scores
SUMMARY_RANGES = {
    "auc": (0.0, 1.0),
    "class-auc": (0.0, 1.0),
    "roc-tpr": (0.0, 1.0),
    "auc-var": (0.0, 1.0),
    "brier": (0.0, 1.0),
    "brier-multi": (0.0, 2.0),
}
SUMMARY_COUNT_LISTS = (
    "tp", "fp", "fn", "tn", "cal-count", "cal-sum-y",
    "class-n", "class-pred", "class-correct", "class-cal-count", "class-cal-sum-y",
)  # fmt: skip


class ReplyError(ValueError):
    """A site's reply holds a value the server cannot believe (the message says which)."""


def brief(reason: str | None, limit: int = 300) -> str:
    """The last line of an error a node sent (a Ray traceback ends with its message),
    at most ``limit`` characters: enough to name the fault, short enough to log."""
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else "..." + last[-limit:]


def site_record(reply: Message, failed: str) -> ConfigRecord:
    """The ``site`` ConfigRecord of a query reply; ReplyError when the site answered with an
    error (``failed``: what the site could not do) or without the record."""
    if reply.has_error():
        raise ReplyError(f"{failed}: {brief(reply.error.reason)}")
    info = reply.content.get(RecordKey.SITE)
    if not isinstance(info, ConfigRecord):
        raise ReplyError(f"no ConfigRecord {RecordKey.SITE.value!r} in the reply")
    return info


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def count_problem(
    key: str, value: object, limit: float = MAX_CASES, minimum: int = 0, limit_name: str = ""
) -> str | None:
    """Why ``value`` is not a whole number of cases in [``minimum``, ``limit``], or None.

    ``limit_name`` says what the limit is, with its value. An integral float (``20.0``,
    how Flower metrics often carry counts) is a whole number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{key} = {_show(value)}: must be a whole number"
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        return f"{key} = {value!r}: must be a whole number"
    if value < minimum:
        return f"{key} = {_show(value)}: must be >= {minimum}"
    if value > limit:
        name = limit_name or f"the {limit:g} cases a site can hold"
        return f"{key} = {_show(value)}: more than {name}"
    return None


def number_problem(key: str, value: object) -> str | None:
    """Why ``value`` is not one finite number or a list of finite numbers, or None."""
    many = isinstance(value, list | tuple)
    items: list[object] = list(value) if isinstance(value, list | tuple) else [value]
    for i, v in enumerate(items):
        name = f"metric {key!r}" + (f"[{i}]" if many else "")
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"{name} = {_show(v)}: not a number"
        if isinstance(v, int) and abs(v) >= MAX_INT:
            return f"{name} = {_show(v)}: out of the int64 range"
        if isinstance(v, float) and not math.isfinite(v):
            return f"{name} = {v!r}: must be finite (no NaN or infinity)"
    return None


def metrics_problem(metrics: Mapping[str, Any]) -> str | None:
    """Why a reply's metrics cannot be recorded or used (the first bad key), or None."""
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            return f"metric key {_show(key)}: must be a non-empty string"
        problem = number_problem(key, value)
        if problem is not None:
            return problem
    return None


def summary_problem(record: Mapping[str, Any], max_cases: int) -> str | None:
    """Why an evaluation summary (a ``SiteSummary`` MetricRecord) cannot be believed, or None.

    Every value finite; every case count a whole number from 0 to ``max_cases`` (the
    cases the site declared when it joined); saliency shares in [0, 1] and consistent
    (``saliency_problem``); positives, negatives, saliency cases and each 2x2 table no more
    than ``n``; per-class counts (``class-n``) adding up to ``n``; each confusion cell a
    count or -1 (suppressed).
    """
    problem = metrics_problem(record)
    if problem is not None:
        return problem
    limit_name = f"the {max_cases} case(s) the site declared when it joined"
    for key in SUMMARY_COUNTS:
        if key in record:
            problem = count_problem(key, record[key], max_cases, limit_name=limit_name)
            if problem is not None:
                return problem
    for key in SUMMARY_COUNT_LISTS:
        for i, value in enumerate(_as_list(record.get(key, []))):
            problem = count_problem(f"{key}[{i}]", value, max_cases, limit_name=limit_name)
            if problem is not None:
                return problem
    for i, value in enumerate(_as_list(record.get("confusion", []))):
        if value == SUPPRESSED_CELL and not isinstance(value, bool):
            continue
        problem = count_problem(f"confusion[{i}]", value, max_cases, limit_name=limit_name)
        if problem is not None:
            return f"{problem} (or {SUPPRESSED_CELL}: a suppressed cell)"
    for i, value in enumerate(_as_list(record.get("hist", []))):  # pixels, not cases
        problem = count_problem(f"hist[{i}]", value, MAX_INT, limit_name="the int64 range")
        if problem is not None:
            return problem
    for key in SUMMARY_SHARES:  # finite numbers (metrics_problem), maybe a list
        value = record.get(key, 0.0)
        if isinstance(value, list | tuple) or not 0.0 <= value <= 1.0:
            return f"{key} = {_show(value)}: a share, must be one number in [0, 1]"
    for key, (low, high) in SUMMARY_RANGES.items():  # a value out of range breaks the report
        for i, value in enumerate(_as_list(record.get(key, []))):
            if not low <= value <= high:
                where = f"{key}[{i}]" if isinstance(record[key], list | tuple) else key
                return f"{where} = {_show(value)}: must lie in [{low:g}, {high:g}]"
    n = record.get("n", 0)
    for key in ("n-pos", "n-neg", "saliency-n"):
        if record.get(key, 0) > n:
            return f"{key} = {record[key]!r} exceeds n = {n!r}"
    problem = saliency_problem(record)
    if problem is not None:
        return problem
    cells = [_as_list(record.get(c, [])) for c in ("tp", "fp", "fn", "tn")]
    for i, table in enumerate(zip(*cells, strict=False)):
        if sum(table) > n:
            return f"2x2 table {i} counts {sum(table):g} cases, more than n = {n!r}"
    class_n = _as_list(record.get("class-n", []))
    if class_n and sum(class_n) != n:
        return f"class-n {_show(class_n)} sums to {sum(class_n):g} cases, but n = {n!r}"
    return class_shape_problem(record, len(class_n))


def saliency_problem(record: Mapping[str, Any]) -> str | None:
    """Why a summary's saliency means (``client.explain``, shares in [0, 1] already checked)
    cannot be believed, or None.

    Each group (the lesion's two means and count, the liver's) comes whole, over at least
    one case; the liver's only with the lesion's, over no more cases: its cases are among
    the lesion's. On each case the map's shares in the lesion and in the liver outside it
    add up to at most 1, and so do the shares of the image the two regions cover; so over
    n lesion and m liver cases, n x lesion mean + m x liver mean <= n (lesion + liver <= 1
    when m = n). The site's ``policy.min-cell`` is its own, unknown to the server: a count
    below it cannot be told from here (the site does not send one, ``client.explain``)."""
    for group in (LESION_SALIENCY, LIVER_SALIENCY):
        present = [key for key in group if key in record]
        if present and len(present) < len(group):
            missing = ", ".join(key for key in group if key not in record)
            sent = ", ".join(present)
            return f"{sent} without {missing}: the means and their count come together"
        if present and record[group[-1]] < 1:
            return f"{group[-1]} = {_show(record[group[-1]])}: means over no case"
    if LIVER_SALIENCY[0] not in record:
        return None
    if LESION_SALIENCY[0] not in record:
        return "saliency-liver without saliency-lesion: the liver's cases are among the lesion's"
    n, m = record["saliency-n"], record["saliency-liver-n"]
    if m > n:
        return (
            f"saliency-liver-n = {m!r} exceeds saliency-n = {n!r}: the liver's cases are among "
            "the lesion's"
        )
    for lesion, liver, whole in (
        ("saliency-lesion", "saliency-liver", "the map"),
        ("saliency-chance", "saliency-liver-chance", "the image"),
    ):
        if n * record[lesion] + m * record[liver] > n * (1.0 + SHARE_SLACK):
            return (
                f"{lesion} = {_show(record[lesion])} over {n!r} case(s) and {liver} = "
                f"{_show(record[liver])} over {m!r} of them: more than the whole of {whole} "
                "(two shares of one case add up to at most 1)"
            )
    return None


def class_shape_problem(record: Mapping[str, Any], k: int) -> str | None:
    """A three-way summary's lists must have the lengths its K classes (``class-n``) give:
    K per class, K x K for the confusion matrix and the AUC covariance, and the per-class
    calibration lists one equal multiple of K (the bins)."""
    shapes = {"class-pred": k, "class-correct": k, "class-auc": k}
    shapes |= {"confusion": k * k, "class-auc-cov": k * k}
    cal = [len(_as_list(record[key])) for key in CLASS_CAL_KEYS if key in record]
    if cal:
        shapes |= dict.fromkeys(CLASS_CAL_KEYS, cal[0] if k and cal[0] % k == 0 else -1)
    for key, length in shapes.items():
        if key in record and len(_as_list(record[key])) != length:
            need = str(length) if length >= 0 else f"a multiple of {k}"
            return (
                f"{key} has {len(_as_list(record[key]))} value(s); with the {k} class(es) "
                f"of class-n it needs {need}"
            )
    return None


def summary_record(reply: Message, max_cases: int) -> dict[str, Any]:
    """A reply's evaluation summary (its one MetricRecord) if ``summary_problem`` finds
    nothing wrong with it; ReplyError otherwise."""
    found = [v for v in reply.content.values() if isinstance(v, MetricRecord)]
    if len(found) != 1:
        raise ReplyError(f"expected one MetricRecord, got {len(found)}")
    record = dict(found[0])
    problem = summary_problem(record, max_cases)
    if problem is not None:
        raise ReplyError(problem)
    return record


def _as_list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def json_object(text: object, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ReplyError naming ``what`` if it is not one.

    Strict JSON: NaN and Infinity are refused, as are texts over ``MAX_JSON_CHARS``
    characters and nesting too deep to parse.
    """
    if not isinstance(text, str):
        raise ReplyError(f"{what} must be JSON text, got {type(text).__name__}")
    if len(text) > MAX_JSON_CHARS:
        raise ReplyError(f"{what} is {len(text)} characters, over the {MAX_JSON_CHARS} accepted")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise ReplyError(f"{what} is not valid JSON: {_show(str(e), 120)}") from e
    if not isinstance(value, dict):
        raise ReplyError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
