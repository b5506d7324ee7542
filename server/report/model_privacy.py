"""The report's ``privacy`` block: epsilon and delta per site under differential privacy
(``server.report.privacy`` writes it; absent with ``privacy.mode = none``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from server.report.model_base import (
    SITE,
    Count,
    NonNegative,
    OpenProbability,
    ReportModel,
)

# common.keys.PrivacyMode without "none", which has no block
DpMode = Literal["central", "central-client-clip", "local"]


class PrivacySite(ReportModel):
    """What one site has spent over the whole run."""

    site: str = Field(description=SITE)
    epsilon: NonNegative | None = Field(
        description="Epsilon at delta by the block's accounting (what privacy.max-epsilon is "
        "checked against); null when unbounded."
    )
    epsilon_gdp: NonNegative | None = Field(
        description="The exact (Gaussian DP) epsilon of the same composition; null when unbounded."
    )
    delta: OpenProbability = Field(description="The delta of this row's epsilon.")
    releases: Count = Field(
        description="Noised releases the site took part in, over every federation of the run."
    )
    unbounded: list[str] = Field(
        description="Why the site has no guarantee (e.g. a whole model sent without noise); "
        "empty when epsilon is finite."
    )


class Privacy(ReportModel):
    """Differential privacy of the model updates (privacy.*; docs/privacy.md); absent with
    privacy.mode = none. One row per site that released an update under DP: its epsilon
    composed over every federation of the run it trained in."""

    mode: DpMode = Field(description="privacy.mode.")
    delta: OpenProbability = Field(
        description="privacy.delta: the delta every epsilon is given at."
    )
    noise_multiplier: NonNegative = Field(description="privacy.noise-multiplier (sigma).")
    clip_norm: float = Field(gt=0, description="privacy.clip-norm (C).")
    max_epsilon: NonNegative = Field(
        description="privacy.max-epsilon, enforced per site over the whole run; 0: no budget."
    )
    accounting: Literal["rdp", "gdp"] = Field(
        description="How epsilon is composed: rdp (the server's per-site ledger, Flower's RDP "
        "accountant) or gdp (each site's own exact Gaussian-DP total, local mode)."
    )
    sites: list[PrivacySite] = Field(description="Per site, sorted by name.")
