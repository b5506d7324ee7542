"""The sites of a federation: waiting for them, asking who they are, their roles.

A node answers the site query with its name, case counts, manifest hash and
acquisition summary; the server assigns roles from ``federation.external-sites``
(external sites evaluate only, never train) and decides which split each site
scores by default.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.keys import EVAL_ALL, RecordKey, SiteKey, Split
from server.exchange import exchange

ROLE_TRAIN, ROLE_EXTERNAL = "train", "external"


class FederationError(RuntimeError):
    """The federation cannot proceed (too few sites, unknown site names...)."""


@dataclass(frozen=True)
class SiteInfo:
    """A node that answered the site query."""

    node_id: int
    name: str
    role: str
    n_train: int
    n_test: int
    manifest_sha256: str
    # common.acquisition.acquisition_summary of the site's cases (counts and ranges only)
    acquisition: dict[str, Any] = field(default_factory=dict)


class NodeView:
    """A Grid stand-in that shows a strategy only some nodes (e.g. training sites)."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


def wait_for_nodes(
    grid: Grid, expected: int, minimum: int, timeout_s: float, grace_s: float
) -> list[int]:
    """The connected node ids once the federation has assembled.

    With ``expected`` > 0 (``federation.expected-sites``), wait for that many
    nodes. Otherwise wait for ``minimum`` nodes, then keep waiting while more
    join, until no new node has connected for ``grace_s`` seconds: sites start
    at different times and a site must not miss the run because it was a
    second late. A FederationError after ``timeout_s`` names the shortfall.
    """
    target = expected or minimum
    start = time.monotonic()
    while len(ids := list(grid.get_node_ids())) < target:
        if time.monotonic() - start > timeout_s:
            key = "federation.expected-sites" if expected else "federation.min-sites"
            raise FederationError(
                f"only {len(ids)} site node(s) connected after {timeout_s:.0f}s; {key} = {target}"
            )
        time.sleep(0.2)
    if not expected:
        last_change, count = time.monotonic(), len(ids)
        while time.monotonic() - last_change < grace_s:
            time.sleep(0.2)
            if len(ids := list(grid.get_node_ids())) != count:
                last_change, count = time.monotonic(), len(ids)
    return sorted(ids)


def discover_sites(grid: Grid, cfg: RunConfig, node_ids: list[int]) -> list[SiteInfo]:
    """Ask every node who it is; assign roles from ``federation.external-sites``."""
    record = RecordDict({RecordKey.CONFIG: ConfigRecord(cfg.to_flat())})
    messages = [Message(record, dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
    replies = exchange(grid, messages, cfg.federation.round_timeout_s, "site query")
    sites: list[SiteInfo] = []
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise FederationError(f"site node {node} failed the site query: {reply.error.reason}")
        info = reply.content[RecordKey.SITE]
        name = str(info[SiteKey.NAME])
        role = ROLE_EXTERNAL if name in cfg.federation.external_sites else ROLE_TRAIN
        sites.append(
            SiteInfo(
                node,
                name,
                role,
                int(cast(int, info[SiteKey.N_TRAIN])),
                int(cast(int, info[SiteKey.N_TEST])),
                str(info[SiteKey.MANIFEST_SHA256]),
                parse_acquisition(info.get(SiteKey.ACQUISITION), name),
            )
        )
    names = [s.name for s in sites]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FederationError(f"two nodes serve the same site name(s): {duplicates}")
    unknown = sorted(set(cfg.federation.external_sites) - set(names))
    if unknown:
        raise FederationError(
            f"federation.external-sites names {unknown}, but the sites that joined are {names}"
        )
    return sorted(sites, key=lambda s: s.name)


def parse_acquisition(value: object, site: str) -> dict[str, Any]:
    """A site's acquisition summary from its query reply ({} when it sent none)."""
    if value is None or value == "":
        return {}
    try:
        summary = json.loads(str(value))
    except json.JSONDecodeError as e:
        msg = f"site {site} sent an acquisition summary that is not JSON: {e}"
        raise FederationError(msg) from e
    if not isinstance(summary, dict):
        raise FederationError(f"site {site} sent an acquisition summary that is not an object")
    return summary


def default_splits(sites: Iterable[SiteInfo]) -> dict[str, str]:
    """Training sites score their test split; designated external sites, which never
    train, score every case whatever their manifest's split column says."""
    out = {}
    for s in sites:
        if s.role == ROLE_EXTERNAL:
            out[s.name] = EVAL_ALL
        elif s.n_test > 0:
            out[s.name] = Split.TEST.value
    return out
