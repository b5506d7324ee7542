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

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.config import RunConfig
from common.hooks import HookError, HookSet
from common.keys import (
    GLOBAL_MODEL,
    Compression,
    ConfigKey,
    Phase,
    PrivacyMode,
    RecordKey,
    Share,
    SiteKey,
)
from common.models import build_model
from common.summary import SiteSummary
from common.weights import merge, subset, to_arrays
from server.aggregation import RoundAggregator
from server.audit import AuditTrail
from server.averaging import LateAverage, finish_average
from server.exchange import exchange
from server.privacy import (
    PrivacyBudgetError,
    PrivacyError,
    privacy_spent,
    sample_size,
    whole_model_privacy,
    wrap_for_privacy,
)
from server.privacy_ledger import SiteLedger
from server.records import RunRecorder, checkpoint_name, load_checkpoint
from server.reply_checks import MAX_CASES, ReplyError, summary_record
from server.resume import (
    ResumeError,
    archive_previous_trail,
    checkpoint_round,
    completed_record,
    load_strategy_state,
    resumed_run_id,
    rng_state,
    set_rng_state,
    strategy_state,
)
from server.round_screen import RoundScreen, reply_digest
from server.site_identity import identity_problem, identity_required, new_challenge
from server.sites import (
    ROLE_TRAIN,
    FederationError,
    NodeView,
    SiteInfo,
    discover_sites,
    wait_for_nodes,
)
from server.statistics_screen import screen_statistics
from server.strategies import build_strategy
from server.trust import ServerTrust, file_sha256
from server.validation import MIN_SITES_FOR_NORMS, screen_update

log = logging.getLogger("hepafed.progress")


def connect(grid: Grid, cfg: RunConfig, recorder: RunRecorder) -> Federation:
    """Wait for the sites, learn their names and roles, and start the run record."""
    random.seed(cfg.seed)  # Flower samples nodes with the global `random` module
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
    log.info("sites: %s", ", ".join(f"{s.name} ({s.role}, {s.n_train}/{s.n_test})" for s in sites))
    return Federation(grid, cfg, recorder, sites, trust, audit)


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
        # pooled hook statistics, shared by every ``with_config`` view of this federation
        self._statistics: dict[tuple[Any, ...], str] = {}  # (hooks, data, trainers) -> JSON
        self._model_statistics: dict[str, str] = {}  # model id -> combined JSON
        # what every site has spent under DP, across all federations of the run
        self.ledger = SiteLedger(cfg.privacy.delta)

    def with_config(self, cfg: RunConfig) -> Federation:
        """The same connected sites under another run config (e.g. another method);
        models trained under either are known to both."""
        view = Federation(self.grid, cfg, self.recorder, self.sites, self.trust, self.audit)
        view._statistics, view._model_statistics = self._statistics, self._model_statistics
        view.ledger = self.ledger
        return view

    @property
    def trainers(self) -> list[SiteInfo]:
        """Sites that may train: not designated external, with training cases."""
        return [s for s in self.sites if s.role == ROLE_TRAIN and s.n_train > 0]

    def initial_arrays(self) -> ArrayRecord:
        """The untrained model every federation and local-only model starts from."""
        return to_arrays(build_model(self.cfg))

    def _config(self, model: str, arrays: ArrayRecord | None = None, **extra: Any) -> ConfigRecord:
        """The round config: run config, model id, ``extra``; with ``arrays`` (the model the
        message carries) the run id and the server's signature of it for that round."""
        values: dict[str, Any] = {**self.cfg.to_flat(), ConfigKey.MODEL.value: model}
        values[ConfigKey.RUN_ID.value] = self.trust.run_id
        if arrays is not None:
            rnd = int(extra.get(ConfigKey.ROUND.value, 0))
            values.update(self.trust.model_entries(rnd, model, arrays))
        if self._model_statistics.get(model):
            values[ConfigKey.SHARED_STATISTICS.value] = self._model_statistics[model]
        return ConfigRecord({**values, **extra})

    def _send(
        self,
        messages: Iterable[Message],
        label: str,
        on_reply: Callable[[Message], None] | None = None,
    ) -> list[Message]:
        timeout = self.cfg.federation.round_timeout_s
        return exchange(
            self.grid, messages, timeout, label, self.names, on_reply, self.trust.sign_instruction
        )

    def _site(self, msg: Message) -> str:
        return self.names.get(msg.metadata.src_node_id, str(msg.metadata.src_node_id))

    # ---- statistics that hooks pool ---------------------------------------------------------

    def shared_statistics(self, trainers: list[SiteInfo]) -> str:
        """JSON of the hooks' combined statistics over ``trainers`` ("" if no hook pools any).

        Only the training sites contribute (a left-out or external site's images
        never shape the standard scale); each is weighted by the number of cases it
        fitted its statistics on.
        """
        if not self.hooks.shares_statistics:
            return ""
        key = (self.hooks.statistics_key(), self.cfg.data, frozenset(s.name for s in trainers))
        if key in self._statistics:
            return self._statistics[key]
        # a deployed site signs its statistics like its identity (server.site_identity)
        challenge = new_challenge() if identity_required(self.cfg) else ""
        asked = {ConfigKey.SITE_CHALLENGE.value: challenge} if challenge else {}
        phase = {ConfigKey.PHASE.value: Phase.STATISTICS.value}
        config = ConfigRecord({**self.cfg.to_flat(), **phase, **asked})
        messages = [
            Message(
                RecordDict({RecordKey.CONFIG: config}),
                dst_node_id=s.node_id,
                message_type=MessageType.QUERY,
            )
            for s in trainers
        ]
        replies = self._send(messages, "hook statistics")
        declared = {s.name: s.declared_cases for s in trainers}
        stats, rejected = screen_statistics(
            replies, self._site, declared, self.hooks,
            lambda reply, info: identity_problem(
                self.cfg, challenge, reply.metadata.src_node_id, info
            ),
        )  # fmt: skip
        if not stats:
            raise FederationError(
                f"hook statistics: no training site's statistics could be used ({rejected})"
            )
        try:
            combined = self.hooks.combine([stats[name] for name in sorted(stats)])
        except HookError as e:
            raise FederationError(f"hook statistics: {e}") from e
        entry = {"sites": sorted(stats), "rejected": rejected}
        self.recorder.log_round({"phase": "statistics", **entry, "statistics": combined})
        self.audit.append("statistics", entry)
        self._statistics[key] = json.dumps(combined, sort_keys=True)
        return self._statistics[key]

    # ---- federated training ----------------------------------------------------------------

    def train_global(self, trainers: list[SiteInfo], model: str = GLOBAL_MODEL) -> ArrayRecord:
        """``federation.num-rounds`` rounds among ``trainers``; the final global weights.

        After every round the model is checkpointed and evaluated at every site
        with a test split (progress monitoring; rounds.jsonl, tagged ``model``).
        Layers a hook keeps local keep their initial values in the global weights.
        """
        fed = self.cfg.federation
        if len(trainers) < fed.min_sites:
            raise FederationError(
                f"{model}: {len(trainers)} site(s) can train ({[s.name for s in trainers]}), "
                f"fewer than federation.min-sites = {fed.min_sites}"
            )
        try:
            strategy = wrap_for_privacy(
                self.hooks.wrap_strategy(build_strategy(self.cfg, len(trainers))),
                self.cfg,
                sample_size(self.cfg, len(trainers)),
                population=len(trainers),
                ledger=self.ledger,
                sites=[s.name for s in trainers],
            )
        except PrivacyError as e:
            raise FederationError(f"{model}: {e}") from e
        self._model_statistics[model] = self.shared_statistics(trainers)
        train_view = cast(Grid, NodeView(s.node_id for s in trainers))
        eval_view = cast(Grid, NodeView(s.node_id for s in self.sites if s.n_test > 0))
        resumed = self._resume_point(model) if self.cfg.output.resume else None
        late = LateAverage(fed.average_last)  # federation.average-last: the final model
        if resumed is None:
            arrays, first = self.initial_arrays(), 1
            self._monitor(strategy, 0, arrays, eval_view, model)
        else:
            arrays, done, state = resumed
            load_strategy_state(strategy, state.get("strategy", {}))
            self.ledger.restore(state.get("privacy-ledger", {}))
            set_rng_state(state["rng"])
            late.load_state_dict(state)
            first = done + 1
            path = self.recorder.run_dir / checkpoint_name(model)
            self.audit.append(
                "resume-model",
                {"model": model, "completed_rounds": done, "checkpoint_sha256": file_sha256(path)},
            )
            log.info("%s: rounds 1-%d completed before; continuing at round %d", model, done,
                     first)  # fmt: skip
        for rnd in range(first, fed.num_rounds + 1):
            try:
                arrays = self._train_round(strategy, rnd, arrays, train_view, model)
            except PrivacyBudgetError as e:  # refused before the round was sent
                log.warning("%s: %s; training stops after round %d", model, e, rnd - 1)
                entry = {"model": model, "round": rnd, "reason": str(e),
                         "privacy": privacy_spent(strategy)}  # fmt: skip
                self.recorder.log_round({**entry, "phase": "privacy-budget"})
                self.audit.append("privacy-budget", entry)
                break
            self._monitor(strategy, rnd, arrays, eval_view, model)
            late.add(rnd, arrays)
            # a round is complete once checkpointed with everything needed to go on from it
            path = self.recorder.checkpoint(
                arrays.to_torch_state_dict(),
                self.cfg,
                rnd,
                model,
                self._model_statistics.get(model, ""),
                resume={
                    "strategy": strategy_state(strategy),
                    "rng": rng_state(),
                    "privacy-ledger": self.ledger.state_dict(),
                    **late.state_dict(),
                },
            )
            self.audit.append(
                "checkpoint",
                {"model": model, "round": rnd, "file": path.name, "sha256": file_sha256(path),
                 "model_sha256": self.trust.model_hash(arrays)},
            )  # fmt: skip
        return finish_average(self, late, arrays, model)

    def _resume_point(self, model: str) -> tuple[ArrayRecord, int, dict[str, Any]] | None:
        """``model``'s last checkpointed round in the run folder: weights, round, state."""
        done = checkpoint_round(self.recorder, model)
        if done is None or done < 1:
            return None
        payload = load_checkpoint(self.recorder.run_dir / checkpoint_name(model))
        state = payload.get("resume") or {}
        if "rng" not in state:
            raise ResumeError(
                f"cannot resume {model}: {checkpoint_name(model)} predates resumable "
                "checkpoints (no optimiser/RNG state); start a new run"
            )
        return ArrayRecord(payload["model"]), done, state

    def _train_round(
        self, strategy: Strategy, rnd: int, arrays: ArrayRecord, view: Grid, model: str
    ) -> ArrayRecord:
        """Local training at the sampled sites; validated updates are aggregated as they
        arrive (``server.aggregation``), in site-name order whatever the arrival order."""
        start = time.monotonic()
        fed = self.cfg.federation
        shared = subset(arrays, self.local_keys)
        extra = {ConfigKey.SHARE.value: Share.SHARED.value, ConfigKey.ROUND.value: rnd}
        config = self._config(model, shared, **extra)
        messages = list(strategy.configure_train(rnd, shared, config, view))
        order = sorted(self.names[m.metadata.dst_node_id] for m in messages)
        # norm outliers need every norm of the round: then updates wait on disk until the end
        defer = self.cfg.trust.norm_z > 0 and len(order) >= MIN_SITES_FOR_NORMS
        declared = {s.name: s.n_train for s in self.sites}  # caps each site's weight
        aggregator = RoundAggregator(
            strategy, shared, order, fed.compression, self.recorder.run_dir, defer,
            track_norms=True, declared=declared,
        )  # fmt: skip
        screen = RoundScreen(
            self.cfg, self.trust, aggregator, shared, order, rnd, model, declared=declared
        )
        label = f"{_prefix(model)}round {rnd}/{fed.num_rounds} train"
        self._send(messages, label, lambda reply: screen.on_reply(reply, self._site(reply)))
        new_shared = screen.result(messages)
        new_arrays = merge(arrays, new_shared) if new_shared is not None else None
        privacy = privacy_spent(strategy)
        seconds = time.monotonic() - start
        self.recorder.log_round(screen.round_record(new_arrays is not None, privacy, seconds))
        self.audit.append("round", screen.audit_record(new_arrays, privacy))
        return new_arrays if new_arrays is not None else arrays

    def _monitor(
        self, strategy: Strategy, rnd: int, arrays: ArrayRecord, view: Grid, model: str
    ) -> None:
        """Every site with a test split scores ``arrays``; summaries are logged by site.

        Skipped with ``eval.every-round = false`` (the final evaluation still runs)."""
        if not self.cfg.eval.every_round:
            return
        start = time.monotonic()
        config = self._config(
            model, arrays, **{ConfigKey.ROUND.value: rnd, ConfigKey.SHARE.value: Share.SHARED.value}
        )
        messages = list(strategy.configure_evaluate(rnd, arrays, config, view))
        replies = self._send(messages, f"{_prefix(model)}round {rnd} evaluate")
        failed = {self._site(r): r.error.reason for r in replies if r.has_error()}
        answered = {self._site(r) for r in replies}
        failed.update(
            {self.names[m.metadata.dst_node_id]: "no reply in time" for m in messages
             if self.names[m.metadata.dst_node_id] not in answered}
        )  # fmt: skip
        metrics: dict[str, dict[str, Any]] = {}
        for reply in replies:
            if reply.has_error():
                continue
            site = self._site(reply)
            try:
                metrics[site] = self._summary_record(reply, site)
            except ReplyError as e:
                failed[site] = f"summary rejected: {e}"
        for site, reason in failed.items():
            log.warning("round %d: evaluation at %s failed: %s", rnd, site, reason)
        metrics = dict(sorted(metrics.items()))
        self.recorder.log_round(
            {
                "model": model,
                "round": rnd,
                "phase": "evaluate",
                "sites": metrics,
                "failed": failed,
                "seconds": time.monotonic() - start,
            }
        )
        self.audit.append(
            "evaluation",
            {
                "model": model,
                "round": rnd,
                "model_sha256": self.trust.model_hash(arrays),
                "summary": {site: _headline(m) for site, m in metrics.items()},
                "failed": failed,
            },
        )

    def _summary_record(self, reply: Message, site: str) -> dict[str, Any]:
        """A reply's evaluation summary, checked against the cases ``site`` declared."""
        joined = {s.name: s for s in self.sites}.get(site)
        return summary_record(reply, joined.declared_cases if joined is not None else MAX_CASES)

    # ---- models trained at one site ----------------------------------------------------------

    def train_local_only(self, site: SiteInfo, model: str) -> ArrayRecord | None:
        """The site trains the initial model alone for rounds x local epochs; its weights,
        recorded as ``model``."""
        epochs = self.cfg.federation.num_rounds * self.cfg.train.local_epochs
        self._model_statistics[model] = self.shared_statistics(self.trainers)
        return self.train_alone(site, self.initial_arrays(), epochs, model)

    def finetune(
        self, site: SiteInfo, arrays: ArrayRecord, base: str, model: str
    ) -> ArrayRecord | None:
        """The site trains the federated model ``base`` for ``hooks.finetune-epochs`` more
        epochs, starting from its own local layers of ``base``; its weights, recorded
        as ``model``."""
        self._model_statistics[model] = self._model_statistics.get(base, "")
        epochs = self.cfg.hooks.finetune_epochs
        return self.train_alone(site, arrays, epochs, model, base)

    def train_alone(
        self, site: SiteInfo, start: ArrayRecord, epochs: int, model: str, base: str = ""
    ) -> ArrayRecord | None:
        """One site trains ``start`` for ``epochs`` epochs and sends the whole model.

        A site that fails, times out (``round-timeout-s`` x ``num-rounds``) or sends a
        rejected model is logged and recorded, and ``None`` is returned: one site's
        model never costs the run its other results.
        """
        cfg = self.cfg
        extra: dict[str, Any] = {ConfigKey.ROUND.value: 0, ConfigKey.SHARE.value: Share.ALL.value}
        if base:
            extra[ConfigKey.BASE_MODEL.value] = base
        refused = whole_model_privacy(cfg, self.ledger, site.name, model)
        if refused is not None:
            log.warning("%s at %s: %s", model, site.name, refused)
            entry = {"model": model, "round": 0, "reason": refused,
                     "privacy": {"sites": self.ledger.summary()}}  # fmt: skip
            self.recorder.log_round({**entry, "phase": "privacy-budget"})
            self.recorder.log_round(
                {"model": model, "phase": "final-evaluate", "failed": {site.name: refused}}
            )
            self.audit.append("privacy-budget", entry)
            return None
        if cfg.privacy.mode != PrivacyMode.NONE:  # the report reads the ledger's last state
            entry = {"model": model, "privacy": {"sites": self.ledger.summary()}}
            self.recorder.log_round({**entry, "phase": "privacy"})
        if self.cfg.output.resume:
            done = checkpoint_round(self.recorder, model)
            if done is not None:  # trained whole before the server stopped: not trained again
                payload = load_checkpoint(self.recorder.run_dir / checkpoint_name(model))
                return ArrayRecord(payload["model"])
        config = self._config(model, start, **extra)
        config["train.local-epochs"] = epochs
        content = RecordDict({RecordKey.ARRAYS: start, RecordKey.CONFIG: config})
        message = Message(content, dst_node_id=site.node_id, message_type=MessageType.TRAIN)
        timeout = cfg.federation.round_timeout_s * cfg.federation.num_rounds
        replies = exchange(
            self.grid, [message], timeout, f"{model} at {site.name}", self.names,
            sign=self.trust.sign_instruction,
        )  # fmt: skip
        if not replies:
            problem: str | None = "no reply in time"
        elif replies[0].has_error():
            problem = f"training failed: {replies[0].error.reason}"
        else:  # the same screening chain as a federated update, size limit included
            digest = reply_digest(replies[0])
            problem = screen_update(
                replies[0], start, cfg, self.trust, site.name, 0, model, digest, site.n_train,
                Compression.NONE,
            )  # fmt: skip
        if problem is not None:
            log.warning("%s at %s: %s", model, site.name, problem)
            self.recorder.log_round(
                {"model": model, "phase": "final-evaluate", "failed": {site.name: problem}}
            )
            return None
        arrays = cast(ArrayRecord, replies[0].content[RecordKey.ARRAYS])
        path = self.recorder.checkpoint(
            arrays.to_torch_state_dict(), cfg, 0, model, self._model_statistics.get(model, "")
        )
        self.audit.append(
            "checkpoint",
            {"model": model, "round": 0, "site": site.name, "file": path.name,
             "sha256": file_sha256(path), "update_sha256": digest,
             "model_sha256": self.trust.model_hash(arrays)},
        )  # fmt: skip
        return arrays

    # ---- final evaluation ------------------------------------------------------------------

    def evaluate(
        self,
        arrays: ArrayRecord,
        splits: dict[str, str],
        model: str,
        share: str = Share.SHARED,
        label: str = "",
    ) -> dict[str, tuple[SiteSummary, str]]:
        """Per site named in ``splits`` (site -> split to score): the summary of ``arrays``
        and how the site adapted the model first (``client.site.prepare_for_scoring``).

        ``share`` says how the model was trained: ``Share.ALL`` for a model trained
        whole at one site. ``label`` names the evaluation in the records when it
        differs from the model id (a method scoring another method's model). A site
        that fails or does not answer is logged and recorded as missing; the
        others' results are returned.
        """
        label = label or model
        start = time.monotonic()
        messages = []
        for site in self.sites:
            if site.name in splits:
                config = self._config(
                    model,
                    arrays,
                    **{
                        ConfigKey.ROUND.value: 0,
                        ConfigKey.EVAL_SPLIT.value: splits[site.name],
                        ConfigKey.SHARE.value: str(share),
                    },
                )
                content = RecordDict({RecordKey.ARRAYS: arrays, RecordKey.CONFIG: config})
                messages.append(
                    Message(content, dst_node_id=site.node_id, message_type=MessageType.EVALUATE)
                )
        replies = self._send(messages, f"evaluate {label}")
        out: dict[str, tuple[SiteSummary, str]] = {}
        failed: dict[str, str] = {}
        for reply in replies:
            name = self._site(reply)
            if reply.has_error():
                failed[name] = str(reply.error.reason)
                log.warning("evaluation of %s at %s failed: %s", label, name, reply.error.reason)
                continue
            try:
                record = self._summary_record(reply, name)
                info = reply.content.config_records.get(RecordKey.SITE, ConfigRecord())
                adaptation = str(info.get(SiteKey.ADAPTATION, "none"))
                ids = info.get(SiteKey.SKIPPED_CASE_IDS, [])
                skipped = [str(i) for i in ids] if isinstance(ids, list) else []
                out[name] = (SiteSummary.from_record(record, skipped_ids=skipped), adaptation)
            except ReplyError as err:
                failed[name] = f"summary rejected: {err}"
                log.warning("evaluation of %s at %s: summary rejected: %s", label, name, err)
            except (KeyError, ValueError, TypeError) as err:
                failed[name] = f"unreadable summary: {err!r}"
                log.warning("evaluation of %s at %s: unreadable summary %r", label, name, err)
        failed.update({s: "no reply" for s in splits if s not in out and s not in failed})
        self.audit.append(
            "final-evaluation",
            {
                "model": label,
                "model_sha256": self.trust.model_hash(arrays),
                "splits": splits,
                "summary": {site: _headline(dict(summary.to_record()))
                            for site, (summary, _) in sorted(out.items())},
                "failed": failed,
            },
        )  # fmt: skip
        self.recorder.log_round(
            {
                "model": label,
                "phase": "final-evaluate",
                "splits": splits,
                "failed": failed,
                "adaptation": {site: a for site, (_, a) in sorted(out.items())},
                "seconds": time.monotonic() - start,
            }
        )
        if splits and not out:
            raise EvaluationsFailedError(label, failed)
        return dict(sorted(out.items()))


class EvaluationsFailedError(FederationError):
    """Every final evaluation of a model failed: the run stops instead of reporting it."""

    def __init__(self, model: str, failed: dict[str, str]) -> None:
        reasons = "; ".join(f"{site}: {reason}" for site, reason in sorted(failed.items()))
        super().__init__(
            f"every final evaluation of {model} failed ({len(failed)} site(s): {reasons}); "
            "no site could score the model, so the run stops without a report. Check the "
            "sites' logs; a model with non-finite weights or statistics cannot be scored"
        )
        self.model, self.failed = model, dict(failed)


def _prefix(model: str) -> str:
    return "" if model == GLOBAL_MODEL else f"{model}: "


HEADLINE = ("n", "auc", "auc-var", "accuracy", "sensitivity", "specificity", "dice", "loss")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The evaluation figures the audit trail keeps (counts and headline metrics)."""
    out = {}
    for key in HEADLINE:
        value = metrics.get(key)
        if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
            out[key] = value
    return out
