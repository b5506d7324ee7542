"""The federation's mechanics: train, validate, aggregate, evaluate, by site name.

Flower strategies do the sampling and the aggregation maths; ``Federation``
adds what a multi-center study needs around them: it trains only the sites it
is told to (designated external sites never train; a leave-one-site-out fold
leaves one more out), validates every update before aggregation, evaluates the
model at every site after each round (the initial model as round 0), trains
local-only and fine-tuned models on request, and records everything by site
name. The run's domain-adaptation hooks act here on the server side: layers a
hook keeps local are neither sent nor averaged, a hook may wrap the strategy,
and statistics that hooks pool (Nyul landmarks) are gathered before training.
Which federations run and what is evaluated at the end is the evaluation
design's business (``server.designs``); site discovery is ``server.sites``.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from common.config import RunConfig
from common.hooks import HookError, HookSet
from common.keys import GLOBAL_MODEL, ConfigKey, RecordPhase, Share
from common.models import build_model
from common.processes import own_memory_mb
from common.summary import SiteSummary
from common.weights import to_arrays
from server import final_evaluation, hook_statistics, rounds, single_site
from server.audit import AuditTrail
from server.exchange import exchange
from server.privacy_ledger import SiteLedger
from server.records import RunRecorder
from server.reply_checks import MAX_CASES, summary_record
from server.resume import (
    archive_previous_trail,
    completed_record,
    resumed_run_id,
)
from server.sites import (
    ROLE_TRAIN,
    FederationError,
    SiteInfo,
    discover_sites,
    wait_for_nodes,
)
from server.trust import ServerTrust
from server.validation import reply_budget

log = logging.getLogger("hepafed.progress")


def connect(grid: Grid, cfg: RunConfig, recorder: RunRecorder) -> Federation:
    """Wait for the sites, learn their names and roles, and start the run record."""
    random.seed(cfg.seed)  # Flower samples nodes with the global `random` module
    memory = own_memory_mb()  # the process before any model: its runtime alone
    fed = cfg.federation
    node_ids = wait_for_nodes(
        grid, fed.expected_sites, fed.min_sites, fed.round_timeout_s, fed.join_grace_s
    )
    resuming = cfg.output.resume
    run_id = resumed_run_id(recorder, cfg) if resuming else uuid.uuid4().hex
    trust = ServerTrust(cfg, recorder.run_dir, run_id)  # signs every message from the query on
    refused: dict[str, str] = {}
    sites = discover_sites(grid, cfg, node_ids, refused, sign=trust.sign_instruction)
    site_docs = [asdict(s) for s in sites]
    trust.prepare_sites(s.name for s in sites)
    trust.publish_key(recorder.run_dir)
    if not resuming:
        archive_previous_trail(recorder)
    audit = AuditTrail(recorder.run_dir, sign=trust.signer())
    if resuming:
        done: dict[str, int | None] = {}
        dropped = recorder.keep_rounds(lambda e: completed_record(e, recorder, done))
        audit.append("resume", {"run_id": run_id, "sites": site_docs, "records_dropped": dropped})
        log.info("resuming run %s in %s (%d unfinished records dropped)", run_id,
                 recorder.run_dir, dropped)  # fmt: skip
    else:
        recorder.start(cfg, site_docs, run_id)
        audit.append(
            "config",
            {"run_id": run_id, "config": cfg.to_flat(), "sites": site_docs,
             "signing": trust.describe(), "refused_sites": refused},
        )  # fmt: skip
    joined = (
        f"{s.name} ({s.role}, train/val/test {s.n_train}/{s.n_val}/{s.n_test})" for s in sites
    )
    log.info("sites: %s", ", ".join(joined))
    federation = Federation(grid, cfg, recorder, sites, trust, audit)
    federation.rss_at_start_mb = memory.get("rss")
    return federation


class Federation:
    """The connected sites of one run and what can be done with them."""

    def __init__(
        self,
        grid: Grid,
        cfg: RunConfig,
        recorder: RunRecorder,
        sites: list[SiteInfo],
        trust: ServerTrust,
        audit: AuditTrail,
    ) -> None:
        self.grid, self.cfg, self.recorder, self.sites = grid, cfg, recorder, sites
        self.trust, self.audit = trust, audit
        self.names = {s.node_id: s.name for s in sites}
        probe = build_model(cfg)
        try:
            self.hooks = HookSet(cfg)
            self.hooks.check_model(probe)
        except HookError as e:
            raise FederationError(f"hooks.use = {','.join(cfg.hooks.use)!r}: {e}") from e
        # entries a hook keeps at the sites: never sent in training, never averaged
        self.local_keys = self.hooks.local_keys(probe)
        # floating-point buffers (BatchNorm running statistics): averaged, never stepped
        self.statistics_keys = frozenset(
            name for name, b in probe.named_buffers() if b.is_floating_point()
        )
        # pooled hook statistics, shared by every ``with_config`` view of this federation
        self.statistics_cache: dict[tuple[Any, ...], str] = {}  # (hooks, data, trainers) -> JSON
        self.model_statistics: dict[str, str] = {}  # model id -> combined JSON
        # what every site has spent under DP, across all federations of the run
        self.ledger = SiteLedger(cfg.privacy.delta)
        self.rss_at_start_mb: float | None = None  # the process's memory before any model

    def with_config(self, cfg: RunConfig) -> Federation:
        """The same connected sites under another run config (e.g. another method);
        models trained under either are known to both."""
        view = Federation(self.grid, cfg, self.recorder, self.sites, self.trust, self.audit)
        view.statistics_cache, view.model_statistics = self.statistics_cache, self.model_statistics
        view.ledger, view.rss_at_start_mb = self.ledger, self.rss_at_start_mb
        return view

    @property
    def trainers(self) -> list[SiteInfo]:
        """Sites that may train: not designated external, with training cases."""
        return [s for s in self.sites if s.role == ROLE_TRAIN and s.n_train > 0]

    def initial_arrays(self) -> ArrayRecord:
        """The untrained model every federation and local-only model starts from."""
        return to_arrays(build_model(self.cfg))

    def message_config(
        self, model: str, arrays: ArrayRecord | None = None, **extra: Any
    ) -> ConfigRecord:
        """The round config: run config, model id, ``extra``; with ``arrays`` (the model the
        message carries) the run id and the server's signature of it for that round."""
        values: dict[str, Any] = {**self.cfg.to_flat(), ConfigKey.MODEL.value: model}
        values[ConfigKey.RUN_ID.value] = self.trust.run_id
        if arrays is not None:
            rnd = int(extra.get(ConfigKey.ROUND.value, 0))
            values.update(self.trust.model_entries(rnd, model, arrays))
        if self.model_statistics.get(model):
            values[ConfigKey.SHARED_STATISTICS.value] = self.model_statistics[model]
        return ConfigRecord({**values, **extra})

    def send(
        self,
        messages: Iterable[Message],
        label: str,
        on_reply: Callable[[Message], None] | None = None,
    ) -> list[Message]:
        """Send ``messages`` (signed per node) and collect the replies within the round
        timeout; ``on_reply`` sees each reply as it arrives."""
        timeout = self.cfg.federation.round_timeout_s
        return exchange(
            self.grid, messages, timeout, label, self.names, on_reply, self.trust.sign_instruction,
            reply_budget(self.cfg),
        )  # fmt: skip

    def site_of(self, msg: Message) -> str:
        """The name of the site that sent ``msg``."""
        return self.names.get(msg.metadata.src_node_id, str(msg.metadata.src_node_id))

    def summary_record(self, reply: Message, site: str) -> dict[str, Any]:
        """A reply's evaluation summary, checked against the cases ``site`` declared."""
        joined = {s.name: s for s in self.sites}.get(site)
        return summary_record(reply, joined.declared_cases if joined is not None else MAX_CASES)

    # ---- what can be done with the sites (one module per job) ------------------------------

    def shared_statistics(self, trainers: list[SiteInfo]) -> str:
        """JSON of the hooks' pooled statistics over ``trainers`` (``server.hook_statistics``)."""
        return hook_statistics.shared_statistics(self, trainers)

    def train_global(self, trainers: list[SiteInfo], model: str = GLOBAL_MODEL) -> ArrayRecord:
        """Federated rounds among ``trainers``; the final global weights (``server.rounds``)."""
        return rounds.train_global(self, trainers, model)

    def train_local_only(self, site: SiteInfo, model: str) -> ArrayRecord | None:
        """``site``'s local-only model (``server.single_site``); None if it failed."""
        return single_site.train_local_only(self, site, model)

    def finetune(
        self, site: SiteInfo, arrays: ArrayRecord, base: str, model: str
    ) -> ArrayRecord | None:
        """``base`` fine-tuned at ``site`` (``server.single_site``); None if it failed."""
        return single_site.finetune(self, site, arrays, base, model)

    def train_alone(
        self, site: SiteInfo, start: ArrayRecord, epochs: int, model: str, base: str = ""
    ) -> ArrayRecord | None:
        """One site trains ``start`` for ``epochs`` epochs (``server.single_site``)."""
        return single_site.train_alone(self, site, start, epochs, model, base)

    def evaluate(
        self,
        arrays: ArrayRecord,
        splits: dict[str, str],
        model: str,
        share: str = Share.SHARED,
        label: str = "",
    ) -> dict[str, tuple[SiteSummary, str]]:
        """``arrays`` scored at every site in ``splits`` (``server.final_evaluation``)."""
        return final_evaluation.evaluate(self, arrays, splits, model, share, label)

    def evaluate_split(
        self,
        arrays: ArrayRecord,
        splits: dict[str, str],
        model: str,
        share: str,
        phase: RecordPhase,
    ) -> dict[str, tuple[SiteSummary, str]]:
        """``evaluate`` recorded as ``phase`` (the validation scores that choose a threshold)."""
        label = f"{model} {phase.value}"
        return final_evaluation.evaluate(self, arrays, splits, model, share, label, phase)
