"""The sites of a federation: waiting for them, asking who they are, their roles.

A node answers the site query with its name, case counts (train, test and val; a site
older than the val split sends no val count, read as 0), manifest hash and acquisition
summary; the server assigns roles from ``federation.external-sites`` (external sites
evaluate only, never train) and decides which split each site scores by default. A
node whose answer cannot be believed (an error, a missing or malformed field, an absurd
count, bad JSON) is refused by name and left out; the run stops only when too few
sites remain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.keys import EVAL_ALL, ConfigKey, RecordKey, SiteKey, Split, site_name_problem
from server.exchange import exchange
from server.reply_checks import (
    MAX_CASES,
    ReplyError,
    count_problem,
    json_object,
    site_record,
)
from server.site_identity import identity_problem, identity_required, new_challenge
from server.validation import reply_budget

log = logging.getLogger("hepafed.progress")
MAX_NAME_CHARS = 200  # a site name is an identifier, not a payload

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
    n_val: int = 0  # validation cases; 0 from a site that does not send the count

    @property
    def declared_cases(self) -> int:
        """Every case the site's manifest lists, as it declared when it joined (the
        acquisition summary's count; train plus val plus test when it sent none)."""
        n = self.acquisition.get("n_cases")
        return int(n) if isinstance(n, int) else self.n_train + self.n_val + self.n_test


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


def discover_sites(
    grid: Grid,
    cfg: RunConfig,
    node_ids: list[int],
    refused: dict[str, str] | None = None,
    sign: Callable[[Message, int], Message] | None = None,
) -> list[SiteInfo]:
    """Ask every node who it is; assign roles from ``federation.external-sites``.

    A node whose answer cannot be believed is left out, logged and named in
    ``refused`` (``"node <id>"`` or its site name -> why); a FederationError says so
    when fewer than ``federation.min-sites`` sites remain.
    """
    # a deployed site signs the challenge with its name (server.site_identity); simulated
    # sites get their keys from the server after this query, and are not asked
    challenge = new_challenge() if identity_required(cfg) else ""
    flat = {**cfg.to_flat(), **({ConfigKey.SITE_CHALLENGE.value: challenge} if challenge else {})}
    record = RecordDict({RecordKey.CONFIG: ConfigRecord(flat)})
    messages = [Message(record, dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
    replies = exchange(grid, messages, cfg.federation.round_timeout_s, "site query", sign=sign,
                       max_reply_bytes=reply_budget(cfg))  # fmt: skip
    refused = {} if refused is None else refused
    sites: list[SiteInfo] = []
    for reply in replies:
        try:
            site = site_from_reply(reply, cfg)
            info = cast(ConfigRecord, reply.content[RecordKey.SITE])
            problem = identity_problem(cfg, challenge, reply.metadata.src_node_id, info)
            if problem is not None:
                raise ReplyError(problem)
            sites.append(site)
        except ReplyError as e:
            who = _who(reply)
            refused[who] = str(e)
            log.warning("site query: %s refused and left out: %s", who, e)
    if refused and len(sites) < cfg.federation.min_sites:
        raise FederationError(
            f"{len(sites)} site(s) left after refusing {len(refused)} ({refused}), fewer than "
            f"federation.min-sites = {cfg.federation.min_sites}: fix those sites and restart"
        )
    names = [s.name for s in sites]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FederationError(f"two nodes serve the same site name(s): {duplicates}")
    unknown = sorted(set(cfg.federation.external_sites) - set(names))
    if unknown:
        raise FederationError(
            f"federation.external-sites names {unknown}, but the sites that joined are {names}"
            + (f"; refused: {refused}" if refused else "")
        )
    return sorted(sites, key=lambda s: s.name)


def _who(reply: Message) -> str:
    """The site name a query reply claims, if readable, else its node id."""
    node = f"node {reply.metadata.src_node_id}"
    if reply.has_error():
        return node
    info = reply.content.get(RecordKey.SITE)
    name = info.get(SiteKey.NAME) if isinstance(info, ConfigRecord) else None
    if isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable():
        return f"{name} ({node})"
    return node


def site_from_reply(reply: Message, cfg: RunConfig) -> SiteInfo:
    """The SiteInfo a node's query reply declares; ReplyError naming the first field that
    cannot be believed (name, counts, manifest hash, acquisition summary)."""
    info = site_record(reply, "the site query failed at the node")
    name = info.get(SiteKey.NAME)
    problem = site_name_problem(name)
    if problem is not None or not isinstance(name, str):
        raise ReplyError(f"{SiteKey.NAME.value}: {problem}")
    counts = {SiteKey.N_VAL: 0}  # a site from before the val split sends no n-val
    for key in (SiteKey.N_TRAIN, SiteKey.N_TEST, SiteKey.N_VAL):
        if key == SiteKey.N_VAL and key not in info:
            continue
        problem = count_problem(key.value, info.get(key))
        if problem is not None:
            raise ReplyError(problem)
        counts[key] = int(info[key])  # type: ignore[arg-type]
    manifest = info.get(SiteKey.MANIFEST_SHA256)
    if not isinstance(manifest, str) or len(manifest) > MAX_NAME_CHARS:
        raise ReplyError(f"{SiteKey.MANIFEST_SHA256.value} = {str(manifest)[:40]!r}: not a hash")
    try:
        acquisition = parse_acquisition(info.get(SiteKey.ACQUISITION), name)
    except FederationError as e:
        raise ReplyError(str(e)) from e
    declared = sum(counts.values())
    if "n_cases" in acquisition:
        problem = count_problem("acquisition n_cases", acquisition["n_cases"], MAX_CASES, declared)
        if problem is not None:
            parts = [k.value for k in (SiteKey.N_TRAIN, SiteKey.N_VAL, SiteKey.N_TEST) if k in info]
            raise ReplyError(f"{problem} ({' + '.join(parts)} = {declared})")
        acquisition["n_cases"] = int(acquisition["n_cases"])
    role = ROLE_EXTERNAL if name in cfg.federation.external_sites else ROLE_TRAIN
    return SiteInfo(
        reply.metadata.src_node_id,
        name,
        role,
        counts[SiteKey.N_TRAIN],
        counts[SiteKey.N_TEST],
        manifest,
        acquisition,
        counts[SiteKey.N_VAL],
    )


def parse_acquisition(value: object, site: str) -> dict[str, Any]:
    """A site's acquisition summary from its query reply ({} when it sent none);
    FederationError if it is not a JSON object."""
    if value is None or value == "":
        return {}
    try:
        return json_object(value, "the text")
    except ReplyError as e:
        msg = f"site {site} sent an acquisition summary that is not JSON or not an object: {e}"
        raise FederationError(msg) from e


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
