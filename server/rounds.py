"""Federated training: ``federation.num-rounds`` rounds among the training sites.

Each round sends the shared part of the model, screens every update as it arrives
(``server.round_screen``), aggregates in site-name order (``server.aggregation``),
checkpoints with what a resumed run needs, and scores the new model at every site with
a test split (``monitor``); a resumed run continues from its last checkpointed round."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, cast

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.array_views import tensor_views
from common.keys import GLOBAL_MODEL, ConfigKey, RecordPhase, RoundSelection, Share, Split
from common.processes import own_memory_mb
from common.weights import merge, subset
from server.aggregation import RoundAggregator
from server.averaging import LateAverage, finish_average
from server.final_evaluation import headline
from server.privacy import (
    PrivacyBudgetError,
    PrivacyError,
    privacy_spent,
    sample_size,
    wrap_for_privacy,
)
from server.records import checkpoint_name, load_checkpoint
from server.reply_checks import ReplyError
from server.resume import (
    ResumeError,
    checkpoint_round,
    load_strategy_state,
    rng_state,
    set_rng_state,
    strategy_state,
)
from server.round_screen import RoundScreen
from server.round_selection import BestRound, finish_best, validation_auc
from server.sites import (
    FederationError,
    NodeView,
    SiteInfo,
)
from server.strategies import build_strategy
from server.trust import file_sha256
from server.validation import norm_rule_applies

if TYPE_CHECKING:
    from server.federation import Federation

log = logging.getLogger("hepafed.progress")


def train_global(
    federation: Federation, trainers: list[SiteInfo], model: str = GLOBAL_MODEL
) -> ArrayRecord:
    """``federation.num-rounds`` rounds among ``trainers``; the final global weights.

    After every round the model is checkpointed and evaluated at every site
    with a test split (progress monitoring; rounds.jsonl, tagged ``model``).
    Layers a hook keeps local keep their initial values in the global weights.
    """
    fed = federation.cfg.federation
    if len(trainers) < fed.min_sites:
        raise FederationError(
            f"{model}: {len(trainers)} site(s) can train ({[s.name for s in trainers]}), "
            f"fewer than federation.min-sites = {fed.min_sites}"
        )
    try:
        strategy = wrap_for_privacy(
            federation.hooks.wrap_strategy(build_strategy(federation.cfg, len(trainers))),
            federation.cfg,
            sample_size(federation.cfg, len(trainers)),
            population=len(trainers),
            ledger=federation.ledger,
            sites=[s.name for s in trainers],
        )
    except PrivacyError as e:
        raise FederationError(f"{model}: {e}") from e
    federation.model_statistics[model] = federation.shared_statistics(trainers)
    train_view = cast(Grid, NodeView(s.node_id for s in trainers))
    select = fed.select_round is RoundSelection.BEST_VAL_AUC
    # monitoring scores every site's test split; choosing a round scores the val split of
    # the training sites instead, never a test split
    watched = [s for s in trainers if s.n_val > 0] if select else federation.sites
    eval_view = cast(Grid, NodeView(s.node_id for s in watched if select or s.n_test > 0))
    split = Split.VAL if select else Split.TEST
    resumed = resume_point(federation, model) if federation.cfg.output.resume else None
    late = LateAverage(fed.average_last)  # federation.average-last: the final model
    best = BestRound()  # federation.select-round = best-val-auc: the final model
    if resumed is None:
        arrays, first = federation.initial_arrays(), 1
        monitor(federation, strategy, 0, arrays, eval_view, model, split)
    else:
        arrays, done, state = resumed
        load_strategy_state(strategy, state.get("strategy", {}))
        federation.ledger.restore(state.get("privacy-ledger", {}))
        set_rng_state(state["rng"])
        late.load_state_dict(state)
        best.load_state_dict(state)
        first = done + 1
        path = federation.recorder.run_dir / checkpoint_name(model)
        federation.audit.append(
            "resume-model",
            {"model": model, "completed_rounds": done, "checkpoint_sha256": file_sha256(path)},
        )
        log.info("%s: rounds 1-%d completed before; continuing at round %d", model, done,
                 first)  # fmt: skip
    for rnd in range(first, fed.num_rounds + 1):
        try:
            arrays = train_round(federation, strategy, rnd, arrays, train_view, model)
        except PrivacyBudgetError as e:  # refused before the round was sent
            log.warning("%s: %s; training stops after round %d", model, e, rnd - 1)
            entry = {"model": model, "round": rnd, "reason": str(e),
                     "privacy": privacy_spent(strategy)}  # fmt: skip
            federation.recorder.log_round({**entry, "phase": RecordPhase.PRIVACY_BUDGET.value})
            federation.audit.append("privacy-budget", entry)
            break
        scores = monitor(federation, strategy, rnd, arrays, eval_view, model, split)
        late.add(rnd, arrays)
        if select:
            best.add(rnd, arrays, validation_auc(scores))
        # a round is complete once checkpointed with everything needed to go on from it
        path = federation.recorder.checkpoint(
            tensor_views(arrays),
            federation.cfg,
            rnd,
            model,
            federation.model_statistics.get(model, ""),
            resume={
                "strategy": strategy_state(strategy),
                "rng": rng_state(),
                "privacy-ledger": federation.ledger.state_dict(),
                **late.state_dict(),
                **(best.state_dict() if select else {}),
            },
        )
        federation.audit.append(
            "checkpoint",
            {"model": model, "round": rnd, "file": path.name, "sha256": file_sha256(path),
             "model_sha256": federation.trust.model_hash(arrays)},
        )  # fmt: skip
    if select:
        return finish_best(federation, best, arrays, model)
    return finish_average(federation, late, arrays, model)


def resume_point(
    federation: Federation, model: str
) -> tuple[ArrayRecord, int, dict[str, Any]] | None:
    """``model``'s last checkpointed round in the run folder: weights, round, state."""
    done = checkpoint_round(federation.recorder, model)
    if done is None or done < 1:
        return None
    payload = load_checkpoint(federation.recorder.run_dir / checkpoint_name(model))
    state = payload.get("resume") or {}
    if "rng" not in state:
        raise ResumeError(
            f"cannot resume {model}: {checkpoint_name(model)} predates resumable "
            "checkpoints (no optimiser/RNG state); start a new run"
        )
    return ArrayRecord(payload["model"]), done, state


def train_round(
    federation: Federation,
    strategy: Strategy,
    rnd: int,
    arrays: ArrayRecord,
    view: Grid,
    model: str,
) -> ArrayRecord:
    """Local training at the sampled sites; validated updates are aggregated as they
    arrive (``server.aggregation``), in site-name order whatever the arrival order."""
    start = time.monotonic()
    fed = federation.cfg.federation
    shared = subset(arrays, federation.local_keys)
    extra = {ConfigKey.SHARE.value: Share.SHARED.value, ConfigKey.ROUND.value: rnd}
    config = federation.message_config(model, shared, **extra)
    messages = list(strategy.configure_train(rnd, shared, config, view))
    order = sorted(federation.names[m.metadata.dst_node_id] for m in messages)
    # norm outliers need every norm of the round: then updates wait on disk until the end
    defer = norm_rule_applies(federation.cfg.trust.norm_z, len(order))
    declared = {s.name: s.n_train for s in federation.sites}  # caps each site's weight
    aggregator = RoundAggregator(
        strategy, shared, order, fed.compression, federation.recorder.run_dir, defer,
        track_norms=True, declared=declared, statistics=federation.statistics_keys,
    )  # fmt: skip
    screen = RoundScreen(
        federation.cfg, federation.trust, aggregator, shared, order, rnd, model, declared=declared
    )
    label = f"{_prefix(model)}round {rnd}/{fed.num_rounds} train"
    prepared = time.monotonic()
    screening = [0.0]  # seconds spent checking and folding replies as they arrive

    def on_reply(reply: Message) -> None:
        began = time.monotonic()
        screen.on_reply(reply, federation.site_of(reply))
        screening[0] += time.monotonic() - began

    federation.send(messages, label, on_reply)
    exchanged = time.monotonic()
    new_shared = screen.result(messages)
    new_arrays = merge(arrays, new_shared) if new_shared is not None else None
    privacy = privacy_spent(strategy)
    seconds = time.monotonic() - start
    record = screen.round_record(new_arrays is not None, privacy, seconds)
    # where the round's time went (hepafed bench compares them with stock Flower's)
    record["phase_seconds"] = {
        "prepare": prepared - start,  # config, the model's hash and signature, the aggregator
        "exchange": exchanged - prepared - screening[0],  # signing, transfer, the sites' work
        "screen_fold": screening[0],  # each reply checked, verified and folded on arrival
        "finish": seconds - (exchanged - start),  # parked updates, the norm rule, the result
    }
    memory = own_memory_mb()  # of the process the ServerApp runs in (Linux)
    if memory:
        record["server_memory_mb"] = {"at_start": federation.rss_at_start_mb, **memory}
    federation.recorder.log_round(record)
    federation.audit.append("round", screen.audit_record(new_arrays, privacy))
    return new_arrays if new_arrays is not None else arrays


def monitor(
    federation: Federation,
    strategy: Strategy,
    rnd: int,
    arrays: ArrayRecord,
    view: Grid,
    model: str,
    split: Split = Split.TEST,
) -> dict[str, dict[str, Any]]:
    """The sites of ``view`` score ``arrays`` on their ``split`` (test: progress
    monitoring; val: choosing the final round); their summaries, logged by site.

    Skipped with ``eval.every-round = false`` (the final evaluation still runs)."""
    if not federation.cfg.eval.every_round:
        return {}
    start = time.monotonic()
    extra = {ConfigKey.ROUND.value: rnd, ConfigKey.SHARE.value: Share.SHARED.value}
    if split is not Split.TEST:
        extra[ConfigKey.EVAL_SPLIT.value] = split.value
    config = federation.message_config(model, arrays, **extra)
    messages = list(strategy.configure_evaluate(rnd, arrays, config, view))
    replies = federation.send(messages, f"{_prefix(model)}round {rnd} evaluate")
    failed = {federation.site_of(r): r.error.reason for r in replies if r.has_error()}
    answered = {federation.site_of(r) for r in replies}
    failed.update(
        {federation.names[m.metadata.dst_node_id]: "no reply in time" for m in messages
         if federation.names[m.metadata.dst_node_id] not in answered}
    )  # fmt: skip
    metrics: dict[str, dict[str, Any]] = {}
    for reply in replies:
        if reply.has_error():
            continue
        site = federation.site_of(reply)
        try:
            metrics[site] = federation.summary_record(reply, site)
        except ReplyError as e:
            failed[site] = f"summary rejected: {e}"
    for site, reason in failed.items():
        log.warning("round %d: evaluation at %s failed: %s", rnd, site, reason)
    metrics = dict(sorted(metrics.items()))
    federation.recorder.log_round(
        {
            "model": model,
            "round": rnd,
            "phase": RecordPhase.EVALUATE.value,
            "split": split.value,
            "sites": metrics,
            "failed": failed,
            "seconds": time.monotonic() - start,
        }
    )
    federation.audit.append(
        "evaluation",
        {
            "model": model,
            "round": rnd,
            "model_sha256": federation.trust.model_hash(arrays),
            "summary": {site: headline(m) for site, m in metrics.items()},
            "failed": failed,
        },
    )
    return metrics


def _prefix(model: str) -> str:
    return "" if model == GLOBAL_MODEL else f"{model}: "
