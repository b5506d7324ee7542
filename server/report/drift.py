"""Drift: each site's input-histogram and embedding distances to the reference sites'
pooled distribution, and drift against degradation (Spearman's rho across sites)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from common.stats import (
    frechet_distance,
    population_stability_index,
    wasserstein_1,
)
from common.summary import SiteSummary, histogram_edges
from server.report.site_statistics import json_float


def reference_distribution(
    summaries: Iterable[SiteSummary],
) -> tuple[np.ndarray | None, tuple | None]:
    """Pooled histogram counts and pooled embedding Gaussian of the reference sites."""
    hist = None
    n_total, sum_mu, parts = 0, None, []
    for s in summaries:
        if s.hist_counts:
            h = np.asarray(s.hist_counts, dtype=float)
            hist = h if hist is None else hist + h
        if s.emb_mean and s.n > 1:
            mu = np.asarray(s.emb_mean)
            cov = np.asarray(s.emb_cov)
            n_total += s.n
            sum_mu = mu * s.n if sum_mu is None else sum_mu + mu * s.n
            parts.append((s.n, mu, cov))
    gauss = None
    if parts and sum_mu is not None and n_total > 1:
        mean = sum_mu / n_total
        scatter = sum((n - 1) * c + n * np.outer(mu - mean, mu - mean) for n, mu, c in parts)
        gauss = (mean, scatter / (n_total - 1))
    return hist, gauss


def drift_distances(
    s: SiteSummary, ref_hist: np.ndarray | None, ref_gauss: tuple | None, bins: int
) -> dict[str, Any]:
    """The site's input and embedding distances to the reference sites' pooled distribution."""
    out: dict[str, Any] = {}
    if s.hist_counts and ref_hist is not None:
        edges = histogram_edges(bins)
        h = np.asarray(s.hist_counts, dtype=float)
        w1 = [wasserstein_1(h[c], ref_hist[c], edges) for c in range(len(h))]
        psi = [population_stability_index(h[c], ref_hist[c]) for c in range(len(h))]
        out["wasserstein1"] = json_float(float(np.mean(w1)))
        out["wasserstein1_per_channel"] = [json_float(v) for v in w1]
        out["psi"] = json_float(float(np.mean(psi)))
        out["psi_per_channel"] = [json_float(v) for v in psi]
    if s.emb_mean and ref_gauss is not None:
        fd = frechet_distance(s.emb_mean, np.asarray(s.emb_cov), ref_gauss[0], ref_gauss[1])
        spread = float(np.trace(ref_gauss[1]))
        out["frechet"] = json_float(fd)
        # scale-free: in units of the reference embedding's total variance
        out["frechet_relative"] = json_float(fd / spread) if spread > 0 else None
    return out


def drift_vs_degradation(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """AUC drop (the row's pooled internal reference minus the site's AUC) against the
    embedding's relative Fréchet distance, with Spearman's rho across sites.

    A site with several rows (a designated external site under every loso fold)
    is one point: the means of its drifts and drops, so no site counts twice.
    """
    by_site: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        ref = r["reference"]
        if ref is not None and "auc" in r and r["drift"].get("frechet_relative") is not None:
            by_site.setdefault(r["site"], []).append(r)
    points = []
    for site, group in by_site.items():
        drops = [g["reference"]["auc"] - g["auc"]["estimate"] for g in group]
        w1 = [g["drift"]["wasserstein1"] for g in group if g["drift"].get("wasserstein1")]
        points.append(
            {
                "site": site,
                "model": group[0]["model"] if len(group) == 1 else f"mean of {len(group)} models",
                "role": group[0]["role"],
                "drift": json_float(
                    float(np.mean([g["drift"]["frechet_relative"] for g in group]))
                ),
                "wasserstein1": json_float(float(np.mean(w1))) if w1 else None,
                "auc_drop": json_float(float(np.mean(drops))),
            }
        )
    spearman: dict[str, Any] = {"rho": None, "p": None, "n": len(points)}
    xs, ys = [p["drift"] for p in points], [p["auc_drop"] for p in points]
    if len(points) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:  # else rho is undefined
        res = sps.spearmanr(xs, ys)
        spearman = {"rho": json_float(res.statistic), "p": json_float(res.pvalue), "n": len(points)}
    return {"measure": "frechet-relative", "points": points, "spearman": spearman}
