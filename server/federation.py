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
    names = {s.node_id: s.name for s in sites}
    recorder.start(cfg, [asdict(s) for s in sites])
    log.info("sites: %s", ", ".join(f"{s.name} ({s.role}, {s.n_train}/{s.n_test})" for s in sites))

    model = build_model(cfg)
    arrays = to_arrays(model)
    strategy = build_strategy(cfg, len(trainers))
    train_view = cast(Grid, _NodeView(s.node_id for s in trainers))
    eval_view = cast(Grid, _NodeView(s.node_id for s in sites if s.n_test > 0))
    config = ConfigRecord(cfg.to_flat())

    _evaluate_round(grid, strategy, eval_view, 0, arrays, config, fed, names, recorder)
    for rnd in range(1, fed.num_rounds + 1):
        start = time.monotonic()
        messages = strategy.configure_train(rnd, arrays, config, train_view)
        replies = exchange(
            grid, messages, fed.round_timeout_s, f"round {rnd}/{fed.num_rounds} train", names
        )
        accepted, rejected = [], {}
        for reply in replies:
            problem = update_problem(reply, arrays)
            site = names.get(reply.metadata.src_node_id, str(reply.metadata.src_node_id))
            if problem is None:
                accepted.append(reply)
            else:
                rejected[site] = problem
                log.warning("round %d: update from %s rejected: %s", rnd, site, problem)
        new_arrays, _ = strategy.aggregate_train(rnd, accepted)
        if new_arrays is not None:
            arrays = new_arrays
        recorder.log_round(
            {
                "round": rnd,
                "phase": "train",
                "sites": _metrics_by_site(accepted, names),
                "rejected": rejected,
                "seconds": time.monotonic() - start,
            }
        )
        recorder.checkpoint(arrays.to_torch_state_dict(), cfg, rnd)
        _evaluate_round(grid, strategy, eval_view, rnd, arrays, config, fed, names, recorder)
    return arrays


def _evaluate_round(
    grid: Grid,
    strategy: Any,
    view: Grid,
    rnd: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    fed: Any,
    names: dict[int, str],
    recorder: RunRecorder,
) -> None:
    start = time.monotonic()
    config[ConfigKey.ROUND.value] = rnd
    messages = strategy.configure_evaluate(rnd, arrays, config, view)
    replies = exchange(grid, messages, fed.round_timeout_s, f"round {rnd} evaluate", names)
    failed = {
        names.get(r.metadata.src_node_id, "?"): r.error.reason for r in replies if r.has_error()
    }
    for site, reason in failed.items():
        log.warning("round %d: evaluation at %s failed: %s", rnd, site, reason)
    recorder.log_round(
        {
            "round": rnd,
            "phase": "evaluate",
            "sites": _metrics_by_site([r for r in replies if not r.has_error()], names),
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
