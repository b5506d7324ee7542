"""One training round's replies: screened, aggregated, and accounted for by site.

Every reply is screened on arrival (``server.validation.screen_update``: structure,
size, signature) and handed to the round's aggregator, which checks its values as it
folds them (``server.folding``: one read of the bytes); once the round's replies
are in, norm outliers are excluded, sites that never replied are named, and the round is
applied only if ``federation.min-sites`` updates remain. The outcome is written twice:
to rounds.jsonl (metrics by site) and to the audit trail (digests, norms, reasons, hashes).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from common.array_views import array_view, records
from common.config import RunConfig
from common.keys import RecordPhase
from common.signing import arrays_hash, update_digest
from server.aggregation import RoundAggregator, UpdateRejected
from server.trust import ServerTrust
from server.validation import norm_outliers, screen_update

log = logging.getLogger("hepafed.progress")


@dataclass
class RoundScreen:
    """What happened to each site's update in round ``rnd`` of ``model``."""

    cfg: RunConfig
    trust: ServerTrust
    aggregator: RoundAggregator
    shared: ArrayRecord  # the weights the sites received
    order: list[str]  # every site the round's messages went to
    rnd: int
    model: str
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> its metrics
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why
    digests: dict[str, str] = field(default_factory=dict)
    no_reply: list[str] = field(default_factory=list)
    # site -> the training cases it declared when it joined (caps its num-examples)
    declared: dict[str, int] = field(default_factory=dict)

    def on_reply(self, reply: Message, site: str) -> None:
        """Screen one reply and, if acceptable, hand it to the aggregator; whatever the
        reply holds, the outcome is an accepted update or a named rejection."""
        digest = "" if reply.has_error() else reply_digest(reply)
        self.digests[site] = digest
        # the values' finite check is the aggregator's: it checks each block as it folds
        # it, so the update's bytes are read once (a bad value is rejected below)
        problem = screen_update(
            reply, self.shared, self.cfg, self.trust, site, self.rnd, self.model, digest,
            self.declared.get(site), values=False,
        )  # fmt: skip
        if problem is None:
            try:
                self.aggregator.accept(site, reply)
            except UpdateRejected as e:
                problem = str(e)
        if problem is None:
            self.accepted[site] = dict(next(iter(records(reply.content, MetricRecord).values())))
        else:
            self.rejected[site] = problem
            self.aggregator.skip(site)
            log.warning("round %d: update from %s rejected: %s", self.rnd, site, problem)

    def result(self, messages: list[Message]) -> ArrayRecord | None:
        """The new shared weights once every reply is in, or None if the round is not
        applied: norm outliers excluded, dropouts named, ``federation.min-sites`` checked."""
        trust = self.cfg.trust
        if self.aggregator.defer:
            norms = {s: self.aggregator.norms[s] for s in self.accepted}
            outliers = norm_outliers(norms, trust.norm_z, trust.norm_ratio)
            for site, reason in outliers.items():
                log.warning("round %d: update from %s rejected: %s", self.rnd, site, reason)
                self.rejected[site] = reason
                del self.accepted[site]
            self.aggregator.exclude(outliers)
        self.no_reply = [s for s in self.order if s not in self.accepted and s not in self.rejected]
        for site in self.no_reply:
            log.warning("round %d: %s did not reply in time (dropped out)", self.rnd, site)
        new_shared = self.aggregator.result(self.rnd, messages)
        if new_shared is not None and not all(
            np.isfinite(array_view(a)).all() for a in new_shared.values()
        ):
            log.warning(
                "round %d: the aggregate of %s is not finite (the weighted sum overflows): "
                "the global model is left unchanged this round", self.rnd, sorted(self.accepted),
            )  # fmt: skip
            return None
        needed = min(self.cfg.federation.min_sites, len(self.order))
        if len(self.accepted) < needed:
            log.warning(
                "round %d: %d update(s) accepted, fewer than federation.min-sites = %d: "
                "the global model is left unchanged this round", self.rnd, len(self.accepted),
                needed,
            )  # fmt: skip
            return None
        return new_shared

    def round_record(self, applied: bool, privacy: Any, seconds: float) -> dict[str, Any]:
        """The rounds.jsonl record of the round."""
        return {
            "model": self.model,
            "round": self.rnd,
            "phase": RecordPhase.TRAIN.value,
            "sites": dict(sorted(self.accepted.items())),
            "rejected": self.rejected,
            "no_reply": self.no_reply,
            "applied": applied,
            "norms": self._norms(),
            "aggregation": self.aggregator.mode.value,
            "parked": self.aggregator.parked,
            "privacy": privacy,
            "seconds": seconds,
        }

    def audit_record(self, new_arrays: ArrayRecord | None, privacy: Any) -> dict[str, Any]:
        """The audit-trail entry of the round (``new_arrays``: the applied model, or None)."""
        norms = self._norms()
        return {
            "model": self.model,
            "round": self.rnd,
            "global_sha256": self.trust.model_hash(self.shared),
            "participants": self.order,
            "updates": {
                site: {
                    "digest": self.digests[site],
                    "norm": norms.get(site),
                    "accepted": site in self.accepted,
                    "reason": self.rejected.get(site, ""),
                }
                for site in self.order
                if site in self.digests
            },
            "no_reply": self.no_reply,
            "aggregate_sha256": arrays_hash(new_arrays) if new_arrays is not None else None,
            "applied": new_arrays is not None,
            "privacy": privacy,
        }

    def _norms(self) -> dict[str, float | None]:
        """Each accepted update's norm (None where it overflowed: records stay valid JSON)."""
        norms = self.aggregator.norms
        return {s: norms[s] if math.isfinite(norms[s]) else None for s in sorted(norms)}


def reply_digest(reply: Message) -> str:
    """The reply's ``update_digest``, or "" when its metrics cannot be put in canonical
    JSON (NaN, infinity): such a reply is rejected by screening, never digested."""
    try:
        return update_digest(reply.content)
    except (ValueError, TypeError, OverflowError):
        return ""
