"""The final evaluation: a model scored at every site named in a split plan, each site's
summary checked against the cases it declared; a site that fails is recorded as missing,
and a model that no site could score stops the run (``EvaluationsFailedError``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from common.keys import (
    ConfigKey,
    RecordKey,
    RecordPhase,
    Share,
    SiteKey,
)
from common.summary import SiteSummary
from server.reply_checks import ReplyError
from server.sites import (
    FederationError,
)

if TYPE_CHECKING:
    from server.federation import Federation

log = logging.getLogger("hepafed.progress")


def evaluate(
    federation: Federation,
    arrays: ArrayRecord,
    splits: dict[str, str],
    model: str,
    share: str = Share.SHARED,
    label: str = "",
    phase: RecordPhase = RecordPhase.FINAL_EVALUATE,
) -> dict[str, tuple[SiteSummary, str]]:
    """Per site named in ``splits`` (site -> split to score): the summary of ``arrays``
    and how the site adapted the model first (``client.site.prepare_for_scoring``).

    ``share`` says how the model was trained: ``Share.ALL`` for a model trained
    whole at one site. ``label`` names the evaluation in the records when it
    differs from the model id (a method scoring another method's model). A site
    that fails or does not answer is logged and recorded as missing; the
    others' results are returned. ``phase`` names the record: ``RecordPhase.VALIDATE`` for
    a score on the validation split, which chooses the operating threshold
    (``server.threshold_choice``) and is not a final result.
    """
    label = label or model
    start = time.monotonic()
    messages = []
    for site in federation.sites:
        if site.name in splits:
            config = federation.message_config(
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
    replies = federation.send(messages, f"evaluate {label}")
    out: dict[str, tuple[SiteSummary, str]] = {}
    failed: dict[str, str] = {}
    for reply in replies:
        name = federation.site_of(reply)
        if reply.has_error():
            failed[name] = str(reply.error.reason)
            log.warning("evaluation of %s at %s failed: %s", label, name, reply.error.reason)
            continue
        try:
            record = federation.summary_record(reply, name)
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
    federation.audit.append(
        "final-evaluation" if phase is RecordPhase.FINAL_EVALUATE else phase.value,
        {
            "model": label,
            "model_sha256": federation.trust.model_hash(arrays),
            "splits": splits,
            "summary": {site: headline(dict(summary.to_record()))
                        for site, (summary, _) in sorted(out.items())},
            "failed": failed,
        },
    )  # fmt: skip
    federation.recorder.log_round(
        {
            "model": label,
            "phase": phase.value,
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


HEADLINE = ("n", "auc", "auc-var", "accuracy", "sensitivity", "specificity", "dice", "loss")


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The evaluation figures the audit trail keeps (counts and headline metrics)."""
    out = {}
    for key in HEADLINE:
        value = metrics.get(key)
        if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
            out[key] = value
    return out
