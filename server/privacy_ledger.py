"""One privacy ledger per run: what every site has spent, across all its federations.

A site's data can shape many releases of one run: every round of every federation it
trains in (one per leave-one-site-out fold it is not left out of, one per method of a
comparison), and any whole model it trains alone. Its epsilon is the composition of
all of them, not the largest per-federation value. ``SiteLedger`` keeps, per site
name, how many Gaussian releases of each noise multiplier it took part in, and
composes them with Flower's ``RdpAccountant`` (the accountant each federation's DP
wrapper uses) for the RDP epsilon that ``privacy.max-epsilon`` is enforced on, and
exactly in Gaussian DP (``common.privacy``) for ``epsilon-gdp``. A whole model sent
without noise under a central mode (``eval.local-only``, ``hooks.finetune-epochs``),
or any release with ``privacy.noise-multiplier = 0``, makes the site's epsilon
unbounded; the ledger says why. Its state travels in every checkpoint, so a resumed
run goes on from what was spent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)

from common.privacy import gaussian_epsilon

ACCOUNTING = "rdp"


class SiteLedger:
    """Per-site Gaussian releases of one run, composed on demand (see module docstring)."""

    def __init__(self, delta: float) -> None:
        self.delta = delta
        # site -> noise multiplier -> number of releases
        self._releases: dict[str, dict[float, int]] = {}
        self._unbounded: dict[str, list[str]] = {}  # site -> why it has no guarantee

    def charge(self, sites: Iterable[str], noise_multiplier: float) -> None:
        """One Gaussian release of noise std ``noise_multiplier`` x C (sensitivity C), taken
        part in by every site of ``sites``."""
        for site in sites:
            counts = self._releases.setdefault(site, {})
            counts[noise_multiplier] = counts.get(noise_multiplier, 0) + 1

    def mark_unbounded(self, site: str, reason: str) -> None:
        """Something shaped by ``site``'s data left without noise (``reason`` says what):
        the site has no DP guarantee (epsilon ``inf``)."""
        reasons = self._unbounded.setdefault(site, [])
        if reason not in reasons:
            reasons.append(reason)

    def releases(self, site: str) -> int:
        return sum(self._releases.get(site, {}).values())

    def epsilon(self, site: str, extra: float | None = None) -> float:
        """``site``'s RDP epsilon at ``delta`` (``inf`` if unbounded); with ``extra``, after
        one more release of that noise multiplier (the ledger is left untouched)."""
        if site in self._unbounded:
            return math.inf
        counts = dict(self._releases.get(site, {}))
        if extra is not None:
            counts[extra] = counts.get(extra, 0) + 1
        if not counts:
            return 0.0
        return rdp_epsilon(counts, self.delta)

    def epsilon_gdp(self, site: str) -> float:
        """``site``'s exact epsilon of the same composition (Gaussian DP, ``inf`` if unbounded)."""
        if site in self._unbounded:
            return math.inf
        mu2 = sum(n / (z * z) for z, n in self._releases.get(site, {}).items())
        return gaussian_epsilon(math.sqrt(mu2), self.delta)

    def over_budget(
        self, sites: Iterable[str], noise_multiplier: float, max_epsilon: float
    ) -> tuple[str, float] | None:
        """The site of ``sites`` that one more release would take furthest past
        ``max_epsilon``, with its projected epsilon; None when every site stays within."""
        worst: tuple[str, float] | None = None
        for site in sorted(sites):
            projected = self.epsilon(site, noise_multiplier)
            if projected > max_epsilon and (worst is None or projected > worst[1]):
                worst = (site, projected)
        return worst

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per site: RDP and exact epsilon at ``delta`` (None when unbounded), releases and
        why it is unbounded; JSON-ready, sorted by site."""
        out: dict[str, dict[str, Any]] = {}
        for site in sorted(set(self._releases) | set(self._unbounded)):
            eps, gdp = self.epsilon(site), self.epsilon_gdp(site)
            out[site] = {
                "epsilon": eps if math.isfinite(eps) else None,
                "epsilon-gdp": gdp if math.isfinite(gdp) else None,
                "delta": self.delta,
                "releases": self.releases(site),
                "unbounded": list(self._unbounded.get(site, [])),
                "accounting": ACCOUNTING if math.isfinite(eps) else "none",
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint (``torch.load(weights_only=True)`` reads them)."""
        return {
            "delta": self.delta,
            "releases": {
                s: [[z, n] for z, n in sorted(c.items())] for s, c in self._releases.items()
            },
            "unbounded": {s: list(m) for s, m in self._unbounded.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Merge a checkpoint's ledger: per site and noise multiplier the larger count (the
        ledger only grows during a run, so checkpoints of any of its models can be merged)."""
        for site, pairs in dict(state.get("releases", {})).items():
            counts = self._releases.setdefault(str(site), {})
            for z, n in pairs:
                counts[float(z)] = max(counts.get(float(z), 0), int(n))
        for site, reasons in dict(state.get("unbounded", {})).items():
            for reason in reasons:
                self.mark_unbounded(str(site), str(reason))


def rdp_epsilon(counts: Mapping[float, int], delta: float) -> float:
    """RDP epsilon at ``delta`` of ``counts[z]`` Gaussian releases of noise multiplier ``z``
    each (sensitivity 1, no subsampling amplification), by Flower's ``RdpAccountant``."""
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=1,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    for z, n in sorted(counts.items()):
        accountant.compose(GaussianPrivacyEvent(z, 1, 1), n)
    return accountant.get_privacy_spent().epsilon
