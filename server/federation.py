"""The federated run: discover sites, then train, validate, aggregate, evaluate.

Flower strategies do the sampling and the aggregation maths; this loop adds
what a multi-center study needs around them: it knows each node's site name,
keeps designated external sites out of training, validates every update before
aggregation, evaluates the global model at every site after each round (and
the initial model as round 0), and records everything by site name.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.keys import ConfigKey, RecordKey, SiteKey
from common.models import build_model
from common.weights import to_arrays
from server.exchange import exchange
from server.records import RunRecorder
from server.strategies import build_strategy
from server.validation import update_problem

log = logging.getLogger("hepafed.progress")

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


class _NodeView:
    """A Grid stand-in that shows a strategy only some nodes (e.g. training sites)."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


def wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> list[int]:
    """Node ids once at least ``n`` nodes are connected, or a FederationError."""
    deadline = time.monotonic() + timeout_s
    while len(ids := list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(ids)} site node(s) connected after {timeout_s:.0f}s; "
                f"federation.min-sites = {n}"
            )
        time.sleep(0.5)
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


def run_federation(grid: Grid, cfg: RunConfig, recorder: RunRecorder) -> ArrayRecord:
    """Run ``federation.num-rounds`` rounds; return the final global weights."""
    random.seed(cfg.seed)  # Flower samples nodes with the global `random` module
    fed = cfg.federation
    node_ids = wait_for_nodes(grid, fed.min_sites, fed.round_timeout_s)
    sites = discover_sites(grid, cfg, node_ids)
    trainers = [s for s in sites if s.role == ROLE_TRAIN and s.n_train > 0]
    if len(trainers) < fed.min_sites:
        raise FederationError(
            f"{len(trainers)} site(s) can train ({[s.name for s in trainers]}), "
            f"fewer than federation.min-sites = {fed.min_sites}"
        )
    recorder.start(cfg, [asdict(s) for s in sites])
    log.info("sites: %s", ", ".join(f"{s.name} ({s.role}, {s.n_train}/{s.n_test})" for s in sites))
    rounds = _Rounds(grid, cfg, recorder, sites, trainers)
    arrays = to_arrays(build_model(cfg))
    rounds.evaluate(0, arrays)
    for rnd in range(1, fed.num_rounds + 1):
        arrays = rounds.train(rnd, arrays)
        recorder.checkpoint(arrays.to_torch_state_dict(), cfg, rnd)
        rounds.evaluate(rnd, arrays)
    return arrays


class _Rounds:
    """One federation's round mechanics: who trains, who evaluates, what is logged."""

    def __init__(
        self,
        grid: Grid,
        cfg: RunConfig,
        recorder: RunRecorder,
        sites: list[SiteInfo],
        trainers: list[SiteInfo],
    ) -> None:
        self.grid, self.cfg, self.recorder = grid, cfg, recorder
        self.names = {s.node_id: s.name for s in sites}
        self.strategy = build_strategy(cfg, len(trainers))
        self.train_view = cast(Grid, _NodeView(s.node_id for s in trainers))
        self.eval_view = cast(Grid, _NodeView(s.node_id for s in sites if s.n_test > 0))
        self.config = ConfigRecord(cfg.to_flat())

    def _send(self, messages: Iterable[Message], label: str) -> list[Message]:
        timeout = self.cfg.federation.round_timeout_s
        return exchange(self.grid, messages, timeout, label, self.names)

    def _site(self, msg: Message) -> str:
        return self.names.get(msg.metadata.src_node_id, str(msg.metadata.src_node_id))

    def train(self, rnd: int, arrays: ArrayRecord) -> ArrayRecord:
        """Local training at the training sites; validated updates are aggregated."""
        start = time.monotonic()
        messages = self.strategy.configure_train(rnd, arrays, self.config, self.train_view)
        replies = self._send(messages, f"round {rnd}/{self.cfg.federation.num_rounds} train")
        accepted, rejected = [], {}
        for reply in replies:
            problem = update_problem(reply, arrays)
            if problem is None:
                accepted.append(reply)
            else:
                site = self._site(reply)
                rejected[site] = problem
                log.warning("round %d: update from %s rejected: %s", rnd, site, problem)
        new_arrays, _ = self.strategy.aggregate_train(rnd, accepted)
        self.recorder.log_round(
            {
                "round": rnd,
                "phase": "train",
                "sites": _metrics_by_site(accepted, self.names),
                "rejected": rejected,
                "seconds": time.monotonic() - start,
            }
        )
        return new_arrays if new_arrays is not None else arrays

    def evaluate(self, rnd: int, arrays: ArrayRecord) -> None:
        """Every site with a test split scores ``arrays``; summaries are logged by site."""
        start = time.monotonic()
        self.config[ConfigKey.ROUND.value] = rnd
        messages = self.strategy.configure_evaluate(rnd, arrays, self.config, self.eval_view)
        replies = self._send(messages, f"round {rnd} evaluate")
        failed = {self._site(r): r.error.reason for r in replies if r.has_error()}
        for site, reason in failed.items():
            log.warning("round %d: evaluation at %s failed: %s", rnd, site, reason)
        self.recorder.log_round(
            {
                "round": rnd,
                "phase": "evaluate",
                "sites": _metrics_by_site([r for r in replies if not r.has_error()], self.names),
                "failed": failed,
                "seconds": time.monotonic() - start,
            }
        )


def _metrics_by_site(replies: list[Message], names: dict[int, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for reply in replies:
        metrics = next(iter(reply.content.metric_records.values()))
        out[names[reply.metadata.src_node_id]] = dict(metrics)
    return dict(sorted(out.items()))
