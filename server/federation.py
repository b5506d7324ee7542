"""The federation's mechanics: discover sites, train, validate, aggregate, evaluate.

Flower strategies do the sampling and the aggregation maths; ``Federation``
adds what a multi-center study needs around them: it knows each node's site
name, trains only the sites it is told to (designated external sites never
train; a leave-one-site-out fold leaves one more out), validates every update
before aggregation, evaluates the model at every site after each round (the
initial model as round 0), trains local-only models on request, and records
everything by site name. Which federations run and what is evaluated at the
end is the evaluation design's business (``server.designs``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.config import RunConfig
from common.keys import EVAL_ALL, ConfigKey, RecordKey, SiteKey, Split
from common.models import build_model
from common.summary import SiteSummary
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
    # common.acquisition.acquisition_summary of the site's cases (counts and ranges only)
    acquisition: dict[str, Any] = field(default_factory=dict)


class _NodeView:
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


def connect(grid: Grid, cfg: RunConfig, recorder: RunRecorder) -> Federation:
    """Wait for the sites, learn their names and roles, and start the run record."""
    random.seed(cfg.seed)  # Flower samples nodes with the global `random` module
    fed = cfg.federation
    node_ids = wait_for_nodes(
        grid, fed.expected_sites, fed.min_sites, fed.round_timeout_s, fed.join_grace_s
    )
    sites = discover_sites(grid, cfg, node_ids)
    recorder.start(cfg, [asdict(s) for s in sites])
    log.info("sites: %s", ", ".join(f"{s.name} ({s.role}, {s.n_train}/{s.n_test})" for s in sites))
    return Federation(grid, cfg, recorder, sites)


class Federation:
    """The connected sites of one run and what can be done with them."""

    def __init__(
        self, grid: Grid, cfg: RunConfig, recorder: RunRecorder, sites: list[SiteInfo]
    ) -> None:
        self.grid, self.cfg, self.recorder, self.sites = grid, cfg, recorder, sites
        self.names = {s.node_id: s.name for s in sites}

    @property
    def trainers(self) -> list[SiteInfo]:
        """Sites that may train: not designated external, with training cases."""
        return [s for s in self.sites if s.role == ROLE_TRAIN and s.n_train > 0]

    def initial_arrays(self) -> ArrayRecord:
        """The untrained model every federation and local-only model starts from."""
        return to_arrays(build_model(self.cfg))

    def _config(self, **extra: Any) -> ConfigRecord:
        return ConfigRecord({**self.cfg.to_flat(), **extra})

    def _send(self, messages: Iterable[Message], label: str) -> list[Message]:
        timeout = self.cfg.federation.round_timeout_s
        return exchange(self.grid, messages, timeout, label, self.names)

    def _site(self, msg: Message) -> str:
        return self.names.get(msg.metadata.src_node_id, str(msg.metadata.src_node_id))

    # ---- federated training ----------------------------------------------------------------

    def train_global(self, trainers: list[SiteInfo], model: str = "global") -> ArrayRecord:
        """``federation.num-rounds`` rounds among ``trainers``; the final global weights.

        After every round the model is checkpointed and evaluated at every site
        with a test split (progress monitoring; rounds.jsonl, tagged ``model``).
        """
        fed = self.cfg.federation
        if len(trainers) < fed.min_sites:
            raise FederationError(
                f"{model}: {len(trainers)} site(s) can train ({[s.name for s in trainers]}), "
                f"fewer than federation.min-sites = {fed.min_sites}"
            )
        strategy = build_strategy(self.cfg, len(trainers))
        train_view = cast(Grid, _NodeView(s.node_id for s in trainers))
        eval_view = cast(Grid, _NodeView(s.node_id for s in self.sites if s.n_test > 0))
        arrays = self.initial_arrays()
        self._monitor(strategy, 0, arrays, eval_view, model)
        for rnd in range(1, fed.num_rounds + 1):
            arrays = self._train_round(strategy, rnd, arrays, train_view, model)
            self.recorder.checkpoint(arrays.to_torch_state_dict(), self.cfg, rnd, model)
            self._monitor(strategy, rnd, arrays, eval_view, model)
        return arrays

    def _train_round(
        self, strategy: Strategy, rnd: int, arrays: ArrayRecord, view: Grid, model: str
    ) -> ArrayRecord:
        """Local training at the sampled sites; validated updates are aggregated."""
        start = time.monotonic()
        messages = strategy.configure_train(rnd, arrays, self._config(), view)
        label = f"{_prefix(model)}round {rnd}/{self.cfg.federation.num_rounds} train"
        # aggregate in site-name order, not arrival order: floating-point sums then do not
        # depend on which site finished first, and a rerun gives the same model
        replies = sorted(self._send(messages, label), key=self._site)
        accepted, rejected = [], {}
        for reply in replies:
            problem = update_problem(reply, arrays)
            if problem is None:
                accepted.append(reply)
            else:
                site = self._site(reply)
                rejected[site] = problem
                log.warning("round %d: update from %s rejected: %s", rnd, site, problem)
        new_arrays, _ = strategy.aggregate_train(rnd, accepted)
        self.recorder.log_round(
            {
                "model": model,
                "round": rnd,
                "phase": "train",
                "sites": _metrics_by_site(accepted, self.names),
                "rejected": rejected,
                "seconds": time.monotonic() - start,
            }
        )
        return new_arrays if new_arrays is not None else arrays

    def _monitor(
        self, strategy: Strategy, rnd: int, arrays: ArrayRecord, view: Grid, model: str
    ) -> None:
        """Every site with a test split scores ``arrays``; summaries are logged by site."""
        start = time.monotonic()
        config = self._config(**{ConfigKey.ROUND.value: rnd})
        messages = strategy.configure_evaluate(rnd, arrays, config, view)
        replies = self._send(messages, f"{_prefix(model)}round {rnd} evaluate")
        failed = {self._site(r): r.error.reason for r in replies if r.has_error()}
        for site, reason in failed.items():
            log.warning("round %d: evaluation at %s failed: %s", rnd, site, reason)
        self.recorder.log_round(
            {
                "model": model,
                "round": rnd,
                "phase": "evaluate",
                "sites": _metrics_by_site([r for r in replies if not r.has_error()], self.names),
                "failed": failed,
                "seconds": time.monotonic() - start,
            }
        )

    # ---- local-only models -----------------------------------------------------------------

    def train_local_only(self, site: SiteInfo) -> ArrayRecord | None:
        """The site trains the initial model alone for rounds x local epochs; its weights.

        A site that fails, times out (``round-timeout-s`` x ``num-rounds``) or sends a
        rejected model is logged and recorded, and ``None`` is returned: one site's
        local-only model never costs the run its other results.
        """
        cfg = self.cfg
        epochs = cfg.federation.num_rounds * cfg.train.local_epochs
        config = ConfigRecord(
            {
                **cfg.replace({"train.local-epochs": epochs}).to_flat(),
                ConfigKey.ROUND.value: 0,
            }
        )
        initial = self.initial_arrays()
        content = RecordDict({RecordKey.ARRAYS: initial, RecordKey.CONFIG: config})
        message = Message(content, dst_node_id=site.node_id, message_type=MessageType.TRAIN)
        timeout = cfg.federation.round_timeout_s * cfg.federation.num_rounds
        replies = exchange(
            self.grid, [message], timeout, f"local-only model at {site.name}", self.names
        )
        if not replies:
            problem: str | None = "no reply in time"
        elif replies[0].has_error():
            problem = f"training failed: {replies[0].error.reason}"
        else:
            problem = update_problem(replies[0], initial)
        model = f"local-{site.name}"
        if problem is not None:
            log.warning("local-only model at %s: %s", site.name, problem)
            self.recorder.log_round(
                {"model": model, "phase": "final-evaluate", "failed": {site.name: problem}}
            )
            return None
        reply = replies[0]
        arrays = cast(ArrayRecord, next(iter(reply.content.array_records.values())))
        self.recorder.checkpoint(arrays.to_torch_state_dict(), cfg, 0, f"local-{site.name}")
        return arrays

    # ---- final evaluation ------------------------------------------------------------------

    def evaluate(
        self, arrays: ArrayRecord, splits: dict[str, str], model: str
    ) -> dict[str, SiteSummary]:
        """Summaries of ``arrays`` at the sites named in ``splits`` (site -> split to score).

        A site that fails or does not answer is logged and recorded as missing;
        the others' summaries are returned.
        """
        start = time.monotonic()
        messages = []
        for site in self.sites:
            if site.name in splits:
                config = self._config(
                    **{ConfigKey.ROUND.value: 0, ConfigKey.EVAL_SPLIT.value: splits[site.name]}
                )
                content = RecordDict({RecordKey.ARRAYS: arrays, RecordKey.CONFIG: config})
                messages.append(
                    Message(content, dst_node_id=site.node_id, message_type=MessageType.EVALUATE)
                )
        replies = self._send(messages, f"evaluate {model}")
        out: dict[str, SiteSummary] = {}
        failed: dict[str, str] = {}
        for reply in replies:
            name = self._site(reply)
            if reply.has_error():
                failed[name] = str(reply.error.reason)
                log.warning("evaluation of %s at %s failed: %s", model, name, reply.error.reason)
                continue
            try:
                record = next(iter(reply.content.metric_records.values()))
                out[name] = SiteSummary.from_record(record)
            except (StopIteration, KeyError, ValueError, TypeError) as err:
                failed[name] = f"unreadable summary: {err!r}"
                log.warning("evaluation of %s at %s: unreadable summary %r", model, name, err)
        failed.update({s: "no reply" for s in splits if s not in out and s not in failed})
        self.recorder.log_round(
            {
                "model": model,
                "phase": "final-evaluate",
                "splits": splits,
                "failed": failed,
                "seconds": time.monotonic() - start,
            }
        )
        return dict(sorted(out.items()))


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


def _prefix(model: str) -> str:
    return "" if model == "global" else f"{model}: "


def _metrics_by_site(replies: list[Message], names: dict[int, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for reply in replies:
        records = list(reply.content.metric_records.values())
        out[names[reply.metadata.src_node_id]] = dict(records[0]) if records else {}
    return dict(sorted(out.items()))
