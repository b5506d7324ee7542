"""The report's privacy section: epsilon and delta per site, from what the run recorded.

Under a central mode the server keeps one ledger per run (``server.privacy_ledger``)
and every training record carries its state; the last one is the run's total, each
site's epsilon composed over every federation it trained in. Under ``local`` each site
accounts for itself and reports its running total with every update
(``common.privacy.PrivacyMetric``); the largest total a site reported is its epsilon.
``privacy.mode = none`` has no section. Pure functions of plain values: the report
re-renders without torch or Flower.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from common.keys import PrivacyMode, RecordPhase
from common.privacy import PrivacyMetric

LEDGER_ACCOUNTING = "rdp"  # server.privacy_ledger: Flower's RDP accountant
SITE_ACCOUNTING = "gdp"  # client.privacy: each site's exact Gaussian-DP composition


def privacy_section(
    rounds: Iterable[Mapping[str, Any]], config: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The report's ``privacy`` block from rounds.jsonl records and the flat run config;
    None without differential privacy."""
    mode = str(config.get("privacy.mode", PrivacyMode.NONE.value))
    if mode == PrivacyMode.NONE:
        return None
    delta = float(config.get("privacy.delta", 0.0))
    if mode == PrivacyMode.LOCAL:
        sites, accounting = _reported_by_sites(rounds, delta), SITE_ACCOUNTING
    else:
        sites, accounting = _ledger_rows(rounds), LEDGER_ACCOUNTING
    return {
        "mode": mode,
        "delta": delta,
        "noise_multiplier": float(config.get("privacy.noise-multiplier", 0.0)),
        "clip_norm": float(config.get("privacy.clip-norm", 0.0)),
        "max_epsilon": float(config.get("privacy.max-epsilon", 0.0)),
        "accounting": accounting,
        "sites": sites,
    }


def privacy_lines(report: Mapping[str, Any]) -> list[str]:
    """The terminal summary's privacy lines (none without a privacy section)."""
    block = report.get("privacy")
    if not block:
        return []
    budget = f", budget {block['max_epsilon']:g}" if block["max_epsilon"] > 0 else ""
    lines = [
        f"privacy: {block['mode']}, epsilon at delta {block['delta']:g} "
        f"({block['accounting'].upper()}{budget})"
    ]
    for row in block["sites"]:
        if row["epsilon"] is None:
            lines.append(f"  {row['site']:<12} unbounded: {'; '.join(row['unbounded'])}")
        else:
            exact = row.get("epsilon_gdp")
            extra = f" (exact {exact:.3f})" if exact is not None else ""
            lines.append(
                f"  {row['site']:<12} epsilon {row['epsilon']:.3f}{extra} over "
                f"{row['releases']} release(s)"
            )
    if not block["sites"]:
        lines.append("  no site has released a noised update")
    return lines


def _ledger_rows(rounds: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    last: Mapping[str, Any] = {}
    for entry in rounds:
        privacy = entry.get("privacy")
        if isinstance(privacy, Mapping) and isinstance(privacy.get("sites"), Mapping):
            last = privacy["sites"]
    return [
        {
            "site": str(site),
            "epsilon": _number(spent.get("epsilon")),
            "epsilon_gdp": _number(spent.get("epsilon-gdp")),
            "delta": float(spent.get("delta", 0.0)),
            "releases": int(spent.get("releases", 0)),
            "unbounded": [str(r) for r in spent.get("unbounded", [])],
        }
        for site, spent in sorted(last.items())
    ]


def _reported_by_sites(rounds: Iterable[Mapping[str, Any]], delta: float) -> list[dict[str, Any]]:
    best: dict[str, tuple[int, float]] = {}
    for entry in rounds:
        if entry.get("phase") != RecordPhase.TRAIN or not isinstance(entry.get("sites"), Mapping):
            continue
        for site, metrics in entry["sites"].items():
            total = _number(metrics.get(PrivacyMetric.EPSILON_TOTAL.value))
            releases = metrics.get(PrivacyMetric.RELEASES.value)
            if total is None or not isinstance(releases, int | float):
                continue
            if site not in best or int(releases) > best[site][0]:
                best[str(site)] = (int(releases), total)
    return [
        {
            "site": site,
            "epsilon": total,
            "epsilon_gdp": total,
            "delta": delta,
            "releases": releases,
            "unbounded": [],
        }
        for site, (releases, total) in sorted(best.items())
    ]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
