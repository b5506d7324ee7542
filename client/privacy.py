"""The site's side of differential privacy: one ClientApp mod, driven by the round config.

``privacy_mod`` reads ``privacy.*`` from each training message's config (the ClientApp
is built once, the run config arrives with every message) and, in a federated round
(``share = shared``), changes the update ``u = trained - received`` before it leaves:

* ``central-client-clip``: ``u <- u * min(1, C / ||u||)`` (Flower's ``fixedclipping_mod``);
  the server adds the noise (``server.privacy``).
* ``local``: clip as above, then add N(0, (sigma C)^2) to every entry. The site reports
  what it spent in its reply's metrics (``common.privacy.PrivacyMetric``): epsilon of
  this release and of all its releases so far, at ``privacy.delta``. Local DP must hold
  between *any* two datasets of the site, whose clipped updates can lie ``2C`` apart, so
  the site accounts each release as a Gaussian mechanism with ``mu = 2 / sigma`` (exact,
  ``common.privacy``); Flower's ``LocalDpMod`` needs ``sensitivity = 2C`` for the same
  claim. The releases are counted in the site's ledger (``client.ledger``), which a
  deployed site keeps in its ``policy.state-dir`` across runs. With ``privacy.max-epsilon``
  (the run's budget) or ``policy.max-epsilon`` (the site's own, across runs) > 0 the site
  refuses, before training, a round that would take its total past either. A whole
  locally trained model
  (``share = all``: ``eval.local-only``, ``hooks.finetune-epochs``) would leave
  un-noised, so under ``local`` the site refuses to train one.

Everything else (other modes, query and evaluate messages) passes through untouched.
Flower's own mods draw noise from NumPy's global generator, which ``client.site``
seeds from the run seed the server knows; the noise here comes from the operating
system (``common.privacy.noise_rng``). Install the mod *inside* any signing mod, so the
site signs the update as it leaves: ``ClientApp(mods=[signing, ..., privacy_mod])``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.ledger import Ledger, LedgerError, load_ledger, save_ledger
from client.message_config import run_config
from client.policy import PolicyError, SitePolicy, site_policy
from common.config import ConfigError
from common.config_sections import PrivacyConfig
from common.keys import ConfigKey, NodeKey, PrivacyMode, RecordKey, Share
from common.privacy import (
    PrivacyMetric,
    add_gaussian_noise,
    clip_update,
    composed_mu,
    gaussian_epsilon,
    noise_rng,
)

log = logging.getLogger(__name__)

LOCAL_SENSITIVITY = 2.0  # clip norms between two clipped updates (any two site datasets)


def privacy_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """Clip (and under ``local`` noise) this site's update before it is signed and sent."""
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, ctx)
    config = msg.content.get(RecordKey.CONFIG)
    if not isinstance(config, ConfigRecord):
        return call_next(msg, ctx)
    flower_clip = config.pop(KEY_CLIPPING_NORM, None)  # a stock Flower DP server adds it
    try:
        p = run_config(config).privacy
    except ConfigError as e:
        return _refuse(msg, f"privacy settings: {e}")
    mode = p.mode
    if mode not in (PrivacyMode.CENTRAL_CLIENT_CLIP, PrivacyMode.LOCAL):
        return call_next(msg, ctx)
    if flower_clip is not None and float(cast(float, flower_clip)) != p.clip_norm:
        return _refuse(
            msg,
            f"the server's clipping_norm = {flower_clip!r} differs from privacy.clip-norm "
            f"= {p.clip_norm!r}",
        )
    if str(config.get(ConfigKey.SHARE, Share.SHARED)) != Share.SHARED:
        if mode is PrivacyMode.LOCAL:
            return _refuse(
                msg,
                "privacy.mode = 'local': this site sends only noised federated updates, "
                "not a whole locally trained model (turn off eval.local-only and "
                "hooks.finetune-epochs)",
            )
        return call_next(msg, ctx)
    ledger = Ledger()
    if mode is PrivacyMode.LOCAL:
        try:
            policy = site_policy(ctx.node_config, dict(config))
            path = _ledger_path(ctx, policy)
            ledger = load_ledger(ctx, path)
        except (PolicyError, ConfigError, LedgerError) as e:
            return _refuse(msg, str(e))
        problem = _budget_problem(p, ledger, policy)
        if problem:
            return _refuse(msg, problem)
    received = msg.content.get(RecordKey.ARRAYS)
    if not isinstance(received, ArrayRecord):
        return _refuse(
            msg, f"a training message without the ArrayRecord {RecordKey.ARRAYS.value!r}"
        )
    reply = call_next(msg, ctx)
    if reply.has_error():
        return reply
    if mode is PrivacyMode.LOCAL:
        return _bound_local(msg, reply, received, p, ctx, ledger, path)
    return _bound(msg, reply, received, p)


def local_epsilon(settings: PrivacyConfig, releases: int) -> float:
    """Epsilon at ``privacy.delta`` of ``releases`` local-DP updates of one site (exact)."""
    mu = composed_mu(settings.noise_multiplier, releases, LOCAL_SENSITIVITY)
    return gaussian_epsilon(mu, settings.delta) if math.isfinite(mu) else math.inf


# ---- internals ---------------------------------------------------------------------------


def release_mu(settings: PrivacyConfig) -> float:
    """GDP ``mu`` of one local-DP update at these settings (``inf`` without noise)."""
    return composed_mu(settings.noise_multiplier, 1, LOCAL_SENSITIVITY)


def _ledger_path(ctx: Context, policy: SitePolicy) -> Path | None:
    """The ledger file: the policy's state folder; a deployed site must have one."""
    path = policy.ledger_path()
    if path is None and NodeKey.SITE_DIR.value in ctx.node_config:
        raise LedgerError(
            "privacy.mode = 'local': this site's policy.state-dir is empty, so it cannot keep "
            "its local-DP ledger across runs; set policy.state-dir in its node-config.toml"
        )
    return path


def _bound(msg: Message, reply: Message, received: ArrayRecord, p: PrivacyConfig) -> Message:
    """``reply`` with its update clipped (``central-client-clip``)."""
    update = _update(msg, reply, received)
    if isinstance(update, Message):
        return update
    reference, delta = update
    clipped, was_clipped = clip_update(delta, p.clip_norm)
    if was_clipped:  # an update within the bound leaves exactly as trained
        reply.content[RecordKey.ARRAYS] = _weights(reference, clipped)
    return reply


def _bound_local(
    msg: Message,
    reply: Message,
    received: ArrayRecord,
    p: PrivacyConfig,
    ctx: Context,
    ledger: Ledger,
    path: Path | None,
) -> Message:
    """``reply`` with its update clipped, noised and recorded in the ledger before it leaves."""
    update = _update(msg, reply, received)
    if isinstance(update, Message):
        return update
    reference, delta = update
    clipped, _ = clip_update(delta, p.clip_norm)
    std = p.noise_multiplier * p.clip_norm
    noised = add_gaussian_noise(clipped, std, noise_rng()) if std > 0 else clipped
    spent = ledger.after(release_mu(p))
    try:
        save_ledger(ctx, path, spent)  # recorded first: an update never leaves unaccounted
    except LedgerError as e:
        return _refuse(msg, str(e))
    content = reply.content
    content[RecordKey.ARRAYS] = _weights(reference, noised)
    if p.noise_multiplier > 0:
        metric_records = [(k, v) for k, v in content.items() if isinstance(v, MetricRecord)]
        for name, metrics in metric_records:
            content[name] = MetricRecord({**metrics, **_spent(p, spent)})
    log.info("local DP: update clipped to %g, noise std %.4g added", p.clip_norm, std)
    return reply


def _update(
    msg: Message, reply: Message, received: ArrayRecord
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | Message:
    """The weights the server sent and the update ``trained - received`` (or a refusal)."""
    sent = reply.content.get(RecordKey.ARRAYS)
    if not isinstance(sent, ArrayRecord) or not sent or not set(sent) <= set(received):
        return _refuse(
            msg,
            f"the reply's ArrayRecord {RecordKey.ARRAYS.value!r} holds tensors the server did "
            "not send (or none); cannot bound the update",
        )
    # tensors a hook keeps local (e.g. normalisation statistics under DP) never leave
    reference = {k: v.numpy() for k, v in received.items() if k in sent}
    return reference, {k: sent[k].numpy().astype(np.float64) - reference[k] for k in reference}


def _spent(p: PrivacyConfig, ledger: Ledger) -> dict[str, float | int]:
    return {
        PrivacyMetric.EPSILON.value: local_epsilon(p, 1),
        PrivacyMetric.DELTA.value: p.delta,
        PrivacyMetric.EPSILON_TOTAL.value: ledger.epsilon(p.delta),
        PrivacyMetric.RELEASES.value: ledger.releases,
    }


def _budget_problem(p: PrivacyConfig, ledger: Ledger, policy: SitePolicy) -> str | None:
    """Why the next release would exceed the run's or the site's budget (None: it would not)."""
    after = ledger.after(release_mu(p))
    total = after.epsilon(p.delta)
    budgets = [
        ("privacy.max-epsilon", p.max_epsilon, "the run's budget"),
        ("policy.max-epsilon", policy.max_epsilon, "this site's budget across all runs"),
    ]
    for key, budget, what in budgets:
        if budget > 0 and total > budget:
            return (
                f"{key} = {budget:g} ({what}): update {after.releases} would bring this "
                f"site's local epsilon to {total:.3f} at delta {p.delta:g}; the site does not "
                "train this round"
            )
    return None


def _weights(reference: dict[str, np.ndarray], update: dict[str, np.ndarray]) -> ArrayRecord:
    """``reference + update`` in the reference's dtypes and key order (what the server sent)."""
    return ArrayRecord(
        OrderedDict(
            (k, Array((ref + update[k]).astype(ref.dtype, copy=False)))
            for k, ref in reference.items()
        )
    )


def _refuse(msg: Message, reason: str) -> Message:
    log.error("privacy_mod: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)
