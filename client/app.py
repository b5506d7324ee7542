"""The ClientApp: turns Flower Messages into calls of ``client.site`` and back.

``query`` tells the server who this site is and how much data it has; ``train``
trains the received global model locally; ``evaluate`` scores it on the held-out
split. Replies carry weights and aggregate numbers only, never per-case values.
Every job runs under the site's policy (``client.policy``): ``policy_mod`` refuses a
request beyond it before any work, and the handlers use the site's own cache folder,
resource limits and small-cell rule.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, cast

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode

from client.memory import keep_residual, recall_residual, residual_files
from client.message_config import split_config
from client.monitor_site import WindowRequest, site_monitor
from client.policy import SitePolicy, is_deployed, policy_mod, site_policy
from client.privacy import privacy_mod
from client.site import Instructions, Site, open_site, site_evaluate, site_train
from client.trust import trust_mod
from common.acquisition import acquisition_json
from common.badcases import redacted_reason, skipped_fields
from common.compression import PACKED, compress_update, pack
from common.config import RunConfig
from common.keys import (
    Compression,
    ConfigKey,
    NodeKey,
    Phase,
    RecordKey,
    Share,
    SiteKey,
    Split,
)
from common.packing import packing_mod

log = logging.getLogger(__name__)


def redaction_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Whatever goes wrong at the site, the error reply names no absolute path and no DICOM
    UID (``common.badcases.redacted_reason``): Flower would send the exception's text as it
    is. The full text stays in the site's own log."""
    try:
        return call_next(msg, context)
    except Exception as e:
        log.exception("the site's reply is an error (full text here, redacted in the reply)")
        site_dir = context.node_config.get(NodeKey.SITE_DIR.value)
        folder = str(site_dir) if site_dir else None
        reason = redacted_reason(f"{type(e).__name__}: {e}", folder)
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        return Message(Error(code=code, reason=reason), reply_to=msg)


# outermost: a packed instruction is unpacked before anything reads it and the reply is
# packed after it is signed (common.packing); whatever fails leaves redacted; the site
# refuses what its policy forbids before anything else; then it checks the model exactly as
# it came in and signs exactly what leaves
OUTER_MODS: list[Mod] = [packing_mod, redaction_mod, policy_mod, trust_mod]


def _run_config(msg: Message) -> tuple[RunConfig, int, Instructions]:
    """The run config the server sent, the round number and the server's other keys."""
    cfg, server_round, extras = split_config(msg.content[RecordKey.CONFIG])
    return cfg, server_round, Instructions.from_config(extras)


def _open(
    msg: Message, context: Context, loads_images: bool = True
) -> tuple[Site, RunConfig, int, Instructions, SitePolicy]:
    """The site under its policy: the run config as the site runs it (its own cache folder),
    checked against its resource limits when the job loads images."""
    cfg, server_round, todo = _run_config(msg)
    policy = site_policy(context.node_config, dict(msg.content[RecordKey.CONFIG]))
    cfg = policy.apply(cfg)
    site = open_site(context.node_config, cfg)
    if loads_images:
        policy.check_resources(cfg, len(site.manifest.cases))
    return site, cfg, server_round, todo, policy


def query(msg: Message, context: Context) -> Message:
    """Report the site's name, case counts (train, test, val), manifest hash and acquisition
    summary.

    The acquisition summary (``SiteKey.ACQUISITION``) is JSON text of
    ``common.acquisition.acquisition_summary``: counts per vendor, scanner model
    and kernel and ranges of slice thickness, kVp, field strength and contrast
    timing over the site's cases; no per-case value, and no value or range of fewer
    than the site's ``policy.min-cell`` cases.

    With ``phase = statistics`` it sends instead the image statistics of the hooks
    that pool them (``SiteKey.STATISTICS``, e.g. Nyul landmark percentiles).
    """
    statistics_phase = msg.content[RecordKey.CONFIG].get(ConfigKey.PHASE) == Phase.STATISTICS
    site, cfg, _, _, policy = _open(msg, context, loads_images=statistics_phase)
    if statistics_phase:
        statistics, n_cases = site.statistics(cfg)
        stats = ConfigRecord(
            {
                SiteKey.NAME.value: site.name,
                SiteKey.STATISTICS.value: json.dumps(statistics),
                SiteKey.N_CASES.value: n_cases,
            }
        )
        return Message(RecordDict({RecordKey.SITE: stats}), reply_to=msg)
    info = ConfigRecord(
        {
            SiteKey.NAME.value: site.name,
            SiteKey.N_TRAIN.value: len(site.manifest.split(Split.TRAIN)),
            SiteKey.N_TEST.value: len(site.manifest.split(Split.TEST)),
            SiteKey.N_VAL.value: len(site.manifest.split(Split.VAL)),
            SiteKey.MANIFEST_SHA256.value: site.manifest.sha256,
            SiteKey.ACQUISITION.value: acquisition_json(site.manifest.cases, policy.min_cell),
        }
    )
    return Message(RecordDict({RecordKey.SITE: info}), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Train the global model on this site's train split and send the update."""
    site, cfg, server_round, todo, policy = _open(msg, context)
    state, metrics = site_train(
        site,
        msg.content[RecordKey.ARRAYS],
        cfg,
        server_round,
        instructions=todo,
        state=context.state,
    )
    # cached: no reload; file paths relative to the site folder
    skipped = skipped_fields(site.split(Split.TRAIN, cfg).skipped, site.manifest.site_dir)
    content = RecordDict(
        {
            RecordKey.METRICS: MetricRecord(dict(metrics)),
            RecordKey.SITE: ConfigRecord({SiteKey.NAME.value: site.name, **skipped}),
        }
    )
    # item access, not ``content.array_records``: that view keeps the message alive in a
    # reference cycle until the garbage collector runs
    received = cast(ArrayRecord, msg.content[RecordKey.ARRAYS])
    if cfg.federation.compression == Compression.NONE or todo.share != Share.SHARED:
        content[RecordKey.ARRAYS] = ArrayRecord(state)
    else:  # a federated round: send the encoded update, keep what encoding lost
        trained = {k: v.numpy() for k, v in state.items()}
        deployed = is_deployed(context.node_config)
        files = residual_files(deployed, policy.state_dir, context.run_id)  # there: on disk
        codes, scales, residual = compress_update(
            trained,
            {k: received[k].numpy() for k in trained},
            cfg.federation.compression,
            recall_residual(context.state, todo.model, files),
        )
        keep_residual(context.state, todo.model, residual, files)
        # one flat array of codes (and one of scales) in the order the server sent
        flat, flat_scales = pack(codes, scales, list(received.keys()))
        content[RecordKey.ARRAYS] = ArrayRecord({PACKED: Array(flat)})
        if flat_scales is not None:
            content[RecordKey.SCALES] = ArrayRecord({PACKED: Array(flat_scales)})
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model on this site's test split; reply with summaries. A monitoring
    request (``ConfigKey.WINDOW``) scores the test cases acquired in one window instead."""
    site, cfg, _, todo, policy = _open(msg, context)
    request = WindowRequest.from_instructions(todo.raw)
    if request is not None:
        window, acquisition = site_monitor(
            site, msg.content[RecordKey.ARRAYS], cfg, request, policy=policy
        )
        info: dict[str, Any] = {
            SiteKey.NAME.value: site.name,
            SiteKey.ACQUISITION.value: acquisition,
        }
        return Message(
            RecordDict(
                {
                    RecordKey.METRICS: MetricRecord(window.to_record()),
                    RecordKey.SITE: ConfigRecord(info),
                }
            ),
            reply_to=msg,
        )
    summary, adaptation = site_evaluate(
        site,
        msg.content[RecordKey.ARRAYS],
        cfg,
        todo.split,
        instructions=todo,
        state=context.state,
        policy=policy,
    )
    content = RecordDict(
        {
            RecordKey.METRICS: MetricRecord(summary.to_record()),
            RecordKey.SITE: ConfigRecord(
                {SiteKey.NAME.value: site.name, SiteKey.ADAPTATION.value: adaptation}
            ),
        }
    )
    if summary.skipped_ids:  # ids (never values) of cases left out under on-bad-case = skip
        site_record = cast(ConfigRecord, content[RecordKey.SITE])
        site_record[SiteKey.SKIPPED_CASE_IDS.value] = list(summary.skipped_ids)
    return Message(content, reply_to=msg)


def client_app(inner_mods: Sequence[Mod] = ()) -> ClientApp:
    """hepafed's ClientApp; ``inner_mods`` run between the site's signing mod (outer)
    and its privacy mod (innermost, next to the handlers): a simulated misbehaving site
    alters its reply there, after any DP it would skip and before it signs the result."""
    new = ClientApp(mods=[*OUTER_MODS, *inner_mods, privacy_mod])
    new.query()(query)
    new.train()(train)
    new.evaluate()(evaluate)
    return new


app = client_app()
