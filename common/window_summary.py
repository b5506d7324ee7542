"""A site's summary of one monitoring window, as it travels: the numbers only, each list
with a length fixed by the run config (never by the number of cases).

``client.monitor_window.window_summary`` computes it at the site (its docstring says what
each field means); the server checks (``server.monitoring.checks``) and stores it
(``server.monitoring.store``). ``WindowSummary.to_record`` / ``from_record`` are its
encoding (numbers and lists of numbers, a Flower ``MetricRecord``'s content), exact both
ways. ``LABEL_KEYS`` are the record keys that depend on the labels known as of the
window's as-of date: the server stores them apart, as revisions, since late labels change
them and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.summary import RecordValue

# WindowSummary's optional float fields and their record keys (left out when None)
FLOAT_KEYS = {
    "threshold": "threshold",
    "level": "level",
    "est_auc": "est-auc",
    "est_auc_lo": "est-auc-lo",
    "est_auc_hi": "est-auc-hi",
    "est_sens": "est-sens",
    "est_sens_lo": "est-sens-lo",
    "est_sens_hi": "est-sens-hi",
    "est_spec": "est-spec",
    "est_spec_lo": "est-spec-lo",
    "est_spec_hi": "est-spec-hi",
    "auc": "auc",
    "auc_var": "auc-var",
}
# ... its optional 2x2 cells (left out when None)
CELL_KEYS = {"tp": "tp", "fp": "fp", "fn": "fn", "tn": "tn"}


@dataclass(frozen=True)
class WindowSummary:
    """One site's aggregates about a model on one time window (module docstring)."""

    n: int
    n_labelled: int = 0
    n_labelled_pos: int = 0
    insufficient: bool = False
    actual_insufficient: bool = True
    threshold: float | None = None
    # score distribution and drift inputs
    score_count: tuple[int, ...] = ()  # cases per probability bin, small cells merged
    hist_counts: tuple[tuple[int, ...], ...] = ()  # channel x bin, model input on [0, 1]
    emb_mean: tuple[float, ...] = ()
    emb_cov: tuple[tuple[float, ...], ...] = ()  # d x d (ddof = 1)
    # label-free estimate on all n cases (calibrated probabilities assumed)
    level: float | None = None
    est_auc: float | None = None
    est_auc_lo: float | None = None
    est_auc_hi: float | None = None
    est_sens: float | None = None
    est_sens_lo: float | None = None
    est_sens_hi: float | None = None
    est_spec: float | None = None
    est_spec_lo: float | None = None
    est_spec_hi: float | None = None
    # actual figures on the labelled cases (None when actual_insufficient)
    auc: float | None = None
    auc_var: float | None = None
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None
    tn: int | None = None

    def to_record(self) -> dict[str, RecordValue]:
        """Flat keys -> numbers or lists of numbers; absent fields are left out."""
        out: dict[str, RecordValue] = {
            "num-examples": self.n,  # Flower's weighting key
            "n": self.n,
            "n-labelled": self.n_labelled,
            "insufficient": int(self.insufficient),
            "actual-insufficient": int(self.actual_insufficient),
        }
        if not self.actual_insufficient:  # how many labelled cases are malignant: only
            # with the figures that need it (a small labelled set would show its labels)
            out["n-labelled-pos"] = self.n_labelled_pos
        for attr, key in FLOAT_KEYS.items():
            value = getattr(self, attr)
            if value is not None:
                out[key] = float(value)
        for attr, key in CELL_KEYS.items():
            value = getattr(self, attr)
            if value is not None:
                out[key] = int(value)
        if self.score_count:
            out["score-count"] = [int(v) for v in self.score_count]
        if self.hist_counts:
            out["hist"] = [int(v) for row in self.hist_counts for v in row]
            out["hist-channels"] = len(self.hist_counts)
        if self.emb_mean:
            out["emb-mean"] = [float(v) for v in self.emb_mean]
            out["emb-cov"] = [float(v) for row in self.emb_cov for v in row]
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> WindowSummary:
        """Parse what ``to_record`` wrote (a MetricRecord or a plain dict)."""
        r = dict(record)
        values: dict[str, Any] = {
            attr: float(r[key]) if key in r else None for attr, key in FLOAT_KEYS.items()
        }
        values.update({attr: int(r[key]) if key in r else None for attr, key in CELL_KEYS.items()})
        hist: tuple[tuple[int, ...], ...] = ()
        if "hist" in r:
            flat = np.asarray(r["hist"], dtype=np.int64).reshape(int(r["hist-channels"]), -1)
            hist = tuple(tuple(int(v) for v in row) for row in flat)
        emb_mean = tuple(float(v) for v in r.get("emb-mean", []))
        cov: tuple[tuple[float, ...], ...] = ()
        if emb_mean:
            d = len(emb_mean)
            cov_flat = np.asarray(r["emb-cov"], dtype=float).reshape(d, d)
            cov = tuple(tuple(float(v) for v in row) for row in cov_flat)
        return cls(
            **values,
            n=int(r["n"]),
            n_labelled=int(r.get("n-labelled", 0)),
            n_labelled_pos=int(r.get("n-labelled-pos", 0)),
            insufficient=bool(r.get("insufficient", 0)),
            actual_insufficient=bool(r.get("actual-insufficient", 1)),
            score_count=tuple(int(v) for v in r.get("score-count", [])),
            hist_counts=hist,
            emb_mean=emb_mean,
            emb_cov=cov,
        )


# record keys that depend on the labels known as of the as-of date (revised as labels arrive)
LABEL_KEYS = ("n-labelled", "n-labelled-pos", "actual-insufficient", "auc", "auc-var",
              "tp", "fp", "fn", "tn")  # fmt: skip
