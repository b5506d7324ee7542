"""What a site reports about a model on its data: the evaluation summary.

Only aggregates cross the wire: counts, the AUC with its DeLong variance, 2x2
tables at the configured thresholds, sensitivities on a fixed false-positive
rate grid, calibration bin counts and sums, the Brier score and a logistic
recalibration fit, per-channel intensity histograms on fixed bins, and the mean
and covariance of a fixed low-dimensional projection of the penultimate-layer
embedding. Every list has a length fixed by the run config (``eval.*``), never
by the number of cases, so no per-case value can hide in one.

A site with fewer than ``eval.min-cases`` cases, or fewer than
``eval.min-per-class`` positives or negatives, reports its counts and
``insufficient`` only. Under the small-cell rule (the site's ``policy.min-cell``,
k) no calibration or histogram bin and no ROC step that fewer than k cases
determine is sent: ``small_cell_groups`` / ``pool_cells`` merge bins with their
neighbours and ``coarse_rates`` puts the ROC grid in steps of k cases
(docs/privacy.md, "Disclosure model").

Cases left out under ``data.on-bad-case = "skip"`` are counted (``skipped``) and
the first ``common.badcases.MAX_LISTED`` of them named by id (``skipped_ids``):
ids are identifiers, not patient values. A MetricRecord holds numbers only: the
count is in it (``SKIPPED_CASES``), the ids belong in the reply's site record
(``SKIPPED_CASE_IDS``) and are read back with ``from_record(..., skipped_ids=...)``;
``to_dict`` keeps both for JSON.

A three-class task (``lesion-type``) adds per-class counts (``class_n``, always), and
when every class holds ``eval.min-per-class`` cases: predicted-class counts, the
correct ones, the confusion matrix under complementary suppression (-1: a suppressed
cell), OvR AUCs with their covariance, per-class calibration bins and the multiclass
Brier score (``client.evaluation_multiclass``); its binary view (benign vs malignant)
fills the binary fields.

With ``eval.saliency`` a classification summary adds two means and a count (``saliency-lesion``,
``saliency-chance``, ``saliency-n``): where the model's Grad-CAM evidence lies relative to
the lesion, over at least the site's ``min-cell`` cases; where the site has liver masks, two
more means and a count (``saliency-liver``, ``saliency-liver-chance``, ``saliency-liver-n``,
sent only when the count is at least ``min-cell`` too): the share in the liver outside the
lesion and its chance level, over those of the same cases that have a liver mask. The maps
themselves stay at the site (``client.explain``).

``SiteSummary.to_record`` / ``from_record`` are the one encoding both sides use
(a Flower ``MetricRecord`` holds numbers and lists of numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.badcases import MAX_LISTED, SKIPPED_CASE_IDS, SKIPPED_CASES

RecordValue = int | float | list[int] | list[float]


# SiteSummary's optional scalar fields and their record keys
SCALAR_KEYS = {
    "loss": "loss",
    "auc": "auc",
    "auc_var": "auc-var",
    "brier": "brier",
    "cal_citl": "cal-citl",
    "cal_citl_se": "cal-citl-se",
    "cal_slope": "cal-slope",
    "cal_slope_se": "cal-slope-se",
    "cal_intercept": "cal-intercept",
    "cal_intercept_se": "cal-intercept-se",
    "recal_brier": "recal-brier",
    "recal_citl": "recal-citl",
    "recal_citl_se": "recal-citl-se",
    "recal_slope": "recal-slope",
    "recal_slope_se": "recal-slope-se",
    "recal_intercept": "recal-intercept",
    "recal_intercept_se": "recal-intercept-se",
    "dice_mean": "dice",
    "dice_sd": "dice-sd",
    "dice_median": "dice-median",
    "dice_q1": "dice-q1",
    "dice_q3": "dice-q3",
    "hd95_mean": "hd95",
    "brier_multi": "brier-multi",
    "saliency_lesion": "saliency-lesion",
    "saliency_chance": "saliency-chance",
    "saliency_liver": "saliency-liver",
    "saliency_liver_chance": "saliency-liver-chance",
}

SUPPRESSED_CELL = -1  # a confusion-matrix cell sent as this was not disclosed (small cell)

# SiteSummary's multiclass list fields and their record keys: counts, then floats
CLASS_COUNT_KEYS = {
    "class_n": "class-n",
    "class_pred": "class-pred",
    "class_correct": "class-correct",
    "confusion": "confusion",
    "class_cal_count": "class-cal-count",
    "class_cal_sum_y": "class-cal-sum-y",
}
CLASS_FLOAT_KEYS = {
    "class_auc": "class-auc",
    "class_auc_cov": "class-auc-cov",
    "class_cal_sum_p": "class-cal-sum-p",
}


@dataclass(frozen=True)
class Table2x2:
    """Counts at one threshold: a case is called positive when its probability >= threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int


@dataclass(frozen=True)
class SiteSummary:
    """One site's evaluation of one model (all fields are aggregates)."""

    n: int
    n_pos: int = 0
    n_neg: int = 0
    insufficient: bool = False
    loss: float | None = None
    # classification
    auc: float | None = None
    auc_var: float | None = None
    tables: tuple[Table2x2, ...] = ()
    roc_tpr: tuple[float, ...] = ()  # sensitivity at linspace(0, 1, eval.roc-points)
    cal_count: tuple[int, ...] = ()  # cases per equal-width probability bin
    cal_sum_p: tuple[float, ...] = ()  # sum of predicted probabilities per bin
    cal_sum_y: tuple[int, ...] = ()  # positives per bin
    cal_sum_sq: tuple[float, ...] = ()  # sum of squared errors (p - y)^2 per bin
    brier: float | None = None
    cal_citl: float | None = None  # calibration-in-the-large: glm(y ~ offset(logit p))
    cal_citl_se: float | None = None
    cal_slope: float | None = None  # logistic recalibration: glm(y ~ logit p)
    cal_slope_se: float | None = None
    cal_intercept: float | None = None  # ... and its intercept
    cal_intercept_se: float | None = None
    # after the recalibration eval.recalibration (common.recalibration), on the same cases:
    # per calibration group above (same counts, same positives) the sums of the recalibrated
    # probabilities and of their squared errors, and the same scalars
    recal_sum_p: tuple[float, ...] = ()
    recal_sum_sq: tuple[float, ...] = ()
    recal_brier: float | None = None
    recal_citl: float | None = None
    recal_citl_se: float | None = None
    recal_slope: float | None = None
    recal_slope_se: float | None = None
    recal_intercept: float | None = None
    recal_intercept_se: float | None = None
    # segmentation
    dice_mean: float | None = None
    dice_sd: float | None = None
    dice_median: float | None = None
    dice_q1: float | None = None
    dice_q3: float | None = None
    hd95_mean: float | None = None
    hd95_n: int = 0  # cases with a finite HD95 (both masks non-empty)
    # drift
    hist_counts: tuple[tuple[int, ...], ...] = ()  # channel x bin, model input on [0, 1]
    emb_mean: tuple[float, ...] = ()
    emb_cov: tuple[tuple[float, ...], ...] = field(default=())  # d x d (ddof = 1)
    # multiclass (lesion-type, K classes): the binary fields above hold benign vs the rest
    class_n: tuple[int, ...] = ()  # cases per true class
    class_pred: tuple[int, ...] = ()  # cases per predicted class (argmax)
    class_correct: tuple[int, ...] = ()  # cases per class predicted correctly (the diagonal)
    confusion: tuple[int, ...] = ()  # K*K row-major, rows true; -1 = suppressed (small cell)
    class_auc: tuple[float, ...] = ()  # one-vs-rest AUC per class
    class_auc_cov: tuple[float, ...] = ()  # their K*K DeLong covariance, row-major
    class_cal_count: tuple[int, ...] = ()  # K * eval.calibration-bins, class-major (OvR)
    class_cal_sum_p: tuple[float, ...] = ()
    class_cal_sum_y: tuple[int, ...] = ()
    brier_multi: float | None = None  # mean over cases of sum_k (p_k - [y = k])^2
    # eval.saliency (client.explain): over saliency_n cases (>= the site's min-cell), the mean
    # share of Grad-CAM mass inside the lesion mask, and the mean share of the image the mask
    # covers (the share a map spread evenly would give: the chance level)
    saliency_lesion: float | None = None
    saliency_chance: float | None = None
    saliency_n: int = 0
    # ... and over saliency_liver_n of those cases (the ones with a liver mask; >= min-cell too),
    # the mean share inside the liver but outside the lesion, and the mean share of the image
    # that region covers (its chance level); None / 0 when the site has no liver masks
    saliency_liver: float | None = None
    saliency_liver_chance: float | None = None
    saliency_liver_n: int = 0
    # data.on-bad-case = skip: cases left out of ``n``, and the first MAX_LISTED of their ids
    skipped: int = 0
    skipped_ids: tuple[str, ...] = ()

    # ---- the wire format -------------------------------------------------------------------

    def to_record(self) -> dict[str, RecordValue]:
        """Flat keys -> numbers or lists of numbers (a Flower MetricRecord's content)."""
        out: dict[str, RecordValue] = {
            "num-examples": self.n,  # Flower's weighting key
            "n": self.n,
            "n-pos": self.n_pos,
            "n-neg": self.n_neg,
            "insufficient": int(self.insufficient),
        }
        scalars = {key: getattr(self, attr) for attr, key in SCALAR_KEYS.items()}
        # a non-finite value (e.g. a calibration slope that cannot be estimated) is left out
        out.update({k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)})
        if self.hd95_n:
            out["hd95-n"] = self.hd95_n
        if self.saliency_n:
            out["saliency-n"] = self.saliency_n
        if self.saliency_liver_n:
            out["saliency-liver-n"] = self.saliency_liver_n
        if self.tables:
            out["thresholds"] = [t.threshold for t in self.tables]
            for cell in ("tp", "fp", "fn", "tn"):
                out[cell] = [int(getattr(t, cell)) for t in self.tables]
        lists: dict[str, list[float] | list[int]] = {
            "roc-tpr": list(self.roc_tpr),
            "cal-count": [int(v) for v in self.cal_count],
            "cal-sum-p": list(self.cal_sum_p),
            "cal-sum-y": [int(v) for v in self.cal_sum_y],
            "cal-sum-sq": list(self.cal_sum_sq),
            "recal-sum-p": list(self.recal_sum_p),
            "recal-sum-sq": list(self.recal_sum_sq),
            "emb-mean": list(self.emb_mean),
            "emb-cov": [v for row in self.emb_cov for v in row],
            "hist": [int(v) for row in self.hist_counts for v in row],
        }
        lists.update({k: [int(v) for v in getattr(self, a)] for a, k in CLASS_COUNT_KEYS.items()})
        lists.update({k: [float(v) for v in getattr(self, a)] for a, k in CLASS_FLOAT_KEYS.items()})
        out.update({k: v for k, v in lists.items() if v})
        if self.hist_counts:
            out["hist-channels"] = len(self.hist_counts)
        if self.skipped:
            out[SKIPPED_CASES] = self.skipped
        return out

    def to_dict(self) -> dict[str, RecordValue | list[str]]:
        """``to_record`` plus the skipped cases' ids: the JSON form (``server.designs``)."""
        out: dict[str, RecordValue | list[str]] = dict(self.to_record())
        if self.skipped_ids:
            out[SKIPPED_CASE_IDS] = list(self.skipped_ids)
        return out

    @classmethod
    def from_record(cls, record: Any, skipped_ids: Sequence[str] | None = None) -> SiteSummary:
        """Parse what ``to_record`` (a MetricRecord) or ``to_dict`` wrote; ``skipped_ids``:
        the ids a reply's site record carries next to its MetricRecord."""
        r = dict(record)
        ids = r.get(SKIPPED_CASE_IDS, []) if skipped_ids is None else skipped_ids

        def num(key: str) -> float | None:
            return float(r[key]) if key in r else None

        def seq(key: str) -> list[float]:
            return [float(v) for v in r.get(key, [])]

        tables = tuple(
            Table2x2(float(t), int(tp), int(fp), int(fn), int(tn))
            for t, tp, fp, fn, tn in zip(
                r.get("thresholds", []),
                r.get("tp", []),
                r.get("fp", []),
                r.get("fn", []),
                r.get("tn", []),
                strict=True,
            )
        )
        hist: tuple[tuple[int, ...], ...] = ()
        if "hist" in r:
            channels = int(r["hist-channels"])
            flat = np.asarray(r["hist"], dtype=np.int64).reshape(channels, -1)
            hist = tuple(tuple(int(v) for v in row) for row in flat)
        emb_mean = tuple(seq("emb-mean"))
        cov: tuple[tuple[float, ...], ...] = ()
        if emb_mean:
            d = len(emb_mean)
            cov_flat = np.asarray(seq("emb-cov"), dtype=float).reshape(d, d)
            cov = tuple(tuple(float(v) for v in row) for row in cov_flat)
        fields: dict[str, Any] = {attr: num(key) for attr, key in SCALAR_KEYS.items()}
        fields.update({a: tuple(int(v) for v in r.get(k, [])) for a, k in CLASS_COUNT_KEYS.items()})
        fields.update({a: tuple(seq(k)) for a, k in CLASS_FLOAT_KEYS.items()})
        return cls(
            **fields,
            n=int(r.get("n", 0)),
            n_pos=int(r.get("n-pos", 0)),
            n_neg=int(r.get("n-neg", 0)),
            insufficient=bool(r.get("insufficient", 0)),
            tables=tables,
            roc_tpr=tuple(seq("roc-tpr")),
            cal_count=tuple(int(v) for v in r.get("cal-count", [])),
            cal_sum_p=tuple(seq("cal-sum-p")),
            cal_sum_y=tuple(int(v) for v in r.get("cal-sum-y", [])),
            cal_sum_sq=tuple(seq("cal-sum-sq")),
            recal_sum_p=tuple(seq("recal-sum-p")),
            recal_sum_sq=tuple(seq("recal-sum-sq")),
            hd95_n=int(r.get("hd95-n", 0)),
            saliency_n=int(r.get("saliency-n", 0)),
            saliency_liver_n=int(r.get("saliency-liver-n", 0)),
            hist_counts=hist,
            emb_mean=emb_mean,
            emb_cov=cov,
            skipped=int(r.get(SKIPPED_CASES, 0)),
            skipped_ids=tuple(str(v) for v in ids)[:MAX_LISTED],
        )


def fpr_grid(points: int) -> np.ndarray:
    """The false-positive rates every site reports sensitivity at."""
    return np.linspace(0.0, 1.0, points)


def histogram_edges(bins: int) -> np.ndarray:
    """Bin edges of the intensity histograms (model input scaled to [0, 1])."""
    return np.linspace(0.0, 1.0, bins + 1)


# ---- the small-cell rule: no bin, cell or point that fewer than k cases determine ----------


def small_cell_groups(present: np.ndarray, k: int) -> list[list[int]] | None:
    """Adjacent bins grouped so that each non-empty group holds at least ``k`` cases.

    ``present[i, b]`` says case ``i`` contributes to bin ``b``. Bins are taken left to
    right until the group holds ``k`` cases; an empty bin stands alone (it discloses
    nothing); a short group left at the end joins the last non-empty group before it.
    None when all the cases together are fewer than ``k`` (everything is suppressed).
    """
    present = np.asarray(present, dtype=bool)
    if k <= 1:
        return [[b] for b in range(present.shape[1])]
    if int(present.any(axis=1).sum()) < k:
        return None
    groups: list[list[int]] = []
    current: list[int] = []
    for b in range(present.shape[1]):
        current.append(b)
        cases = int(present[:, current].any(axis=1).sum())
        if cases == 0 or cases >= k:
            groups.append(current)
            current = []
    if current:  # fewer than k cases at the end: join the last group that holds any
        last = max(i for i, g in enumerate(groups) if present[:, g].any())
        groups = [*groups[:last], [b for g in groups[last:] for b in g] + current]
    return groups


def pool_cells(rows: np.ndarray, groups: list[list[int]] | None, weight: np.ndarray) -> np.ndarray:
    """``rows`` (sums per bin, one row per quantity) with each group's totals in its bin of
    largest ``weight`` and zeros in its other bins; all zeros when ``groups`` is None."""
    rows = np.asarray(rows, dtype=float)
    out = np.zeros_like(rows)
    for group in groups or []:
        target = group[int(np.argmax(np.asarray(weight, dtype=float)[group]))]
        out[..., target] = rows[..., group].sum(axis=-1)
    return out


def coarse_rates(rates: np.ndarray, n: int, k: int) -> np.ndarray:
    """Rates over ``n`` cases rounded down to multiples of ``k`` cases (a rate of 1 stays 1).

    The ROC grid is read at coarse FPRs (steps of ``k`` negatives) and its TPRs are
    coarsened (steps of ``k`` positives), so no point of it moves with fewer than ``k``
    cases."""
    r = np.asarray(rates, dtype=float)
    if k <= 1 or n <= 0:
        return r
    return np.where(r >= 1.0, 1.0, np.floor(r * n / k + 1e-9) * k / n)
