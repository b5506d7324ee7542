"""Statistics that hooks pool (Nyul landmarks, ...), gathered from the training sites before
training: each site's are screened (``server.statistics_screen``), a deployed site's
signed, and the combined statistics recorded and cached per (hooks, data, trainers)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from common.hooks import HookError
from common.keys import (
    ConfigKey,
    Phase,
    RecordKey,
    RecordPhase,
)
from server.site_identity import identity_problem, identity_required, new_challenge
from server.sites import (
    FederationError,
    SiteInfo,
)
from server.statistics_screen import screen_statistics

if TYPE_CHECKING:
    from server.federation import Federation

log = logging.getLogger("hepafed.progress")


def shared_statistics(federation: Federation, trainers: list[SiteInfo]) -> str:
    """JSON of the hooks' combined statistics over ``trainers`` ("" if no hook pools any).

    Only the training sites contribute (a left-out or external site's images
    never shape the standard scale); each is weighted by the number of cases it
    fitted its statistics on.
    """
    if not federation.hooks.shares_statistics:
        return ""
    key = (
        federation.hooks.statistics_key(),
        federation.cfg.data,
        frozenset(s.name for s in trainers),
    )
    if key in federation.statistics_cache:
        return federation.statistics_cache[key]
    # a deployed site signs its statistics like its identity (server.site_identity)
    challenge = new_challenge() if identity_required(federation.cfg) else ""
    asked = {ConfigKey.SITE_CHALLENGE.value: challenge} if challenge else {}
    phase = {ConfigKey.PHASE.value: Phase.STATISTICS.value}
    config = ConfigRecord({**federation.cfg.to_flat(), **phase, **asked})
    messages = [
        Message(
            RecordDict({RecordKey.CONFIG: config}),
            dst_node_id=s.node_id,
            message_type=MessageType.QUERY,
        )
        for s in trainers
    ]
    replies = federation.send(messages, "hook statistics")
    declared = {s.name: s.declared_cases for s in trainers}
    stats, rejected = screen_statistics(
        replies, federation.site_of, declared, federation.hooks,
        lambda reply, info: identity_problem(
            federation.cfg, challenge, reply.metadata.src_node_id, info
        ),
    )  # fmt: skip
    if not stats:
        raise FederationError(
            f"hook statistics: no training site's statistics could be used ({rejected})"
        )
    try:
        combined = federation.hooks.combine([stats[name] for name in sorted(stats)])
    except HookError as e:
        raise FederationError(f"hook statistics: {e}") from e
    entry = {"sites": sorted(stats), "rejected": rejected}
    federation.recorder.log_round(
        {"phase": RecordPhase.STATISTICS.value, **entry, "statistics": combined}
    )
    federation.audit.append("statistics", entry)
    federation.statistics_cache[key] = json.dumps(combined, sort_keys=True)
    return federation.statistics_cache[key]
