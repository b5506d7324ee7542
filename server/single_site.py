"""Models trained at one site: a local-only model (the initial model, trained for the
federation's whole budget of passes) and a fine-tuned one (the federated model, a few more
epochs at the site). The site sends the whole model; it goes through the same screening
as a federated update, and a failed site costs the run only its own model."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from flwr.app import ArrayRecord, Message, MessageType, RecordDict

from common.array_views import tensor_views
from common.keys import (
    Compression,
    ConfigKey,
    PrivacyMode,
    RecordKey,
    RecordPhase,
    Share,
)
from server.exchange import exchange
from server.privacy import (
    whole_model_privacy,
)
from server.records import checkpoint_name, load_checkpoint
from server.resume import (
    checkpoint_round,
)
from server.round_screen import reply_digest
from server.sites import (
    SiteInfo,
)
from server.trust import file_sha256
from server.validation import reply_budget, screen_update

if TYPE_CHECKING:
    from server.federation import Federation

log = logging.getLogger("hepafed.progress")


def train_local_only(federation: Federation, site: SiteInfo, model: str) -> ArrayRecord | None:
    """The site trains the initial model alone for rounds x local epochs; its weights,
    recorded as ``model``."""
    epochs = federation.cfg.federation.num_rounds * federation.cfg.train.local_epochs
    federation.model_statistics[model] = federation.shared_statistics(federation.trainers)
    return train_alone(federation, site, federation.initial_arrays(), epochs, model)


def finetune(
    federation: Federation, site: SiteInfo, arrays: ArrayRecord, base: str, model: str
) -> ArrayRecord | None:
    """The site trains the federated model ``base`` for ``hooks.finetune-epochs`` more
    epochs, starting from its own local layers of ``base``; its weights, recorded
    as ``model``."""
    federation.model_statistics[model] = federation.model_statistics.get(base, "")
    epochs = federation.cfg.hooks.finetune_epochs
    return train_alone(federation, site, arrays, epochs, model, base)


def train_alone(
    federation: Federation,
    site: SiteInfo,
    start: ArrayRecord,
    epochs: int,
    model: str,
    base: str = "",
) -> ArrayRecord | None:
    """One site trains ``start`` for ``epochs`` epochs and sends the whole model.

    A site that fails, times out (``round-timeout-s`` x ``num-rounds``) or sends a
    rejected model is logged and recorded, and ``None`` is returned: one site's
    model never costs the run its other results.
    """
    cfg = federation.cfg
    extra: dict[str, Any] = {ConfigKey.ROUND.value: 0, ConfigKey.SHARE.value: Share.ALL.value}
    if base:
        extra[ConfigKey.BASE_MODEL.value] = base
    refused = whole_model_privacy(cfg, federation.ledger, site.name, model)
    if refused is not None:
        log.warning("%s at %s: %s", model, site.name, refused)
        entry = {"model": model, "round": 0, "reason": refused,
                 "privacy": {"sites": federation.ledger.summary()}}  # fmt: skip
        federation.recorder.log_round({**entry, "phase": RecordPhase.PRIVACY_BUDGET.value})
        federation.recorder.log_round(
            {
                "model": model,
                "phase": RecordPhase.FINAL_EVALUATE.value,
                "failed": {site.name: refused},
            }
        )
        federation.audit.append("privacy-budget", entry)
        return None
    if cfg.privacy.mode != PrivacyMode.NONE:  # the report reads the ledger's last state
        entry = {"model": model, "privacy": {"sites": federation.ledger.summary()}}
        federation.recorder.log_round({**entry, "phase": RecordPhase.PRIVACY.value})
    if federation.cfg.output.resume:
        done = checkpoint_round(federation.recorder, model)
        if done is not None:  # trained whole before the server stopped: not trained again
            payload = load_checkpoint(federation.recorder.run_dir / checkpoint_name(model))
            return ArrayRecord(payload["model"])
    config = federation.message_config(model, start, **extra)
    config["train.local-epochs"] = epochs
    content = RecordDict({RecordKey.ARRAYS: start, RecordKey.CONFIG: config})
    message = Message(content, dst_node_id=site.node_id, message_type=MessageType.TRAIN)
    timeout = cfg.federation.round_timeout_s * cfg.federation.num_rounds
    replies = exchange(
        federation.grid, [message], timeout, f"{model} at {site.name}", federation.names,
        sign=federation.trust.sign_instruction, max_reply_bytes=reply_budget(cfg),
    )  # fmt: skip
    if not replies:
        problem: str | None = "no reply in time"
    elif replies[0].has_error():
        problem = f"training failed: {replies[0].error.reason}"
    else:  # the same screening chain as a federated update, size limit included
        digest = reply_digest(replies[0])
        problem = screen_update(
            replies[0], start, cfg, federation.trust, site.name, 0, model, digest, site.n_train,
            Compression.NONE,
        )  # fmt: skip
    if problem is not None:
        log.warning("%s at %s: %s", model, site.name, problem)
        federation.recorder.log_round(
            {
                "model": model,
                "phase": RecordPhase.FINAL_EVALUATE.value,
                "failed": {site.name: problem},
            }
        )
        return None
    arrays = cast(ArrayRecord, replies[0].content[RecordKey.ARRAYS])
    path = federation.recorder.checkpoint(
        tensor_views(arrays), cfg, 0, model, federation.model_statistics.get(model, "")
    )
    federation.audit.append(
        "checkpoint",
        {"model": model, "round": 0, "site": site.name, "file": path.name,
         "sha256": file_sha256(path), "update_sha256": digest,
         "model_sha256": federation.trust.model_hash(arrays)},
    )  # fmt: skip
    return arrays
