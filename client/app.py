"""The ClientApp: turns Flower Messages into calls of ``client.site`` and back.

``query`` tells the server who this site is and how much data it has; ``train``
trains the received global model locally; ``evaluate`` scores it on the held-out
split. Replies carry weights and aggregate numbers only, never per-case values.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import open_site, site_evaluate, site_train
from common.acquisition import acquisition_json
from common.config import RunConfig
from common.keys import ConfigKey, RecordKey, SiteKey, Split

app = ClientApp()


def _run_config(msg: Message) -> tuple[RunConfig, int]:
    """The run config the server sent with this message, and the round number."""
    flat = dict(msg.content[RecordKey.CONFIG])
    server_round = int(str(flat.pop(ConfigKey.ROUND, 0)))
    for key in ConfigKey:  # the other server-added keys are not run-config keys
        flat.pop(key, None)
    return RunConfig.from_flat(flat), server_round


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report the site's name, case counts, manifest hash and acquisition summary.

    The acquisition summary (``SiteKey.ACQUISITION``) is JSON text of
    ``common.acquisition.acquisition_summary``: counts per vendor, scanner model
    and kernel and ranges of slice thickness, kVp, field strength and contrast
    timing over the site's cases; no per-case value.
    """
    cfg, _ = _run_config(msg)
    site = open_site(context.node_config, cfg)
    info = ConfigRecord(
        {
            SiteKey.NAME.value: site.name,
            SiteKey.N_TRAIN.value: len(site.manifest.split(Split.TRAIN)),
            SiteKey.N_TEST.value: len(site.manifest.split(Split.TEST)),
            SiteKey.MANIFEST_SHA256.value: site.manifest.sha256,
            SiteKey.ACQUISITION.value: acquisition_json(site.manifest.cases),
        }
    )
    return Message(RecordDict({RecordKey.SITE: info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this site's train split and send the update."""
    cfg, server_round = _run_config(msg)
    site = open_site(context.node_config, cfg)
    state, metrics = site_train(site, msg.content[RecordKey.ARRAYS], cfg, server_round)
    content = RecordDict(
        {
            RecordKey.ARRAYS: ArrayRecord(state),
            RecordKey.METRICS: MetricRecord(dict(metrics)),
            RecordKey.SITE: ConfigRecord({SiteKey.NAME.value: site.name}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model on this site's test split; reply with summaries."""
    cfg, _ = _run_config(msg)
    split = str(msg.content[RecordKey.CONFIG].get(ConfigKey.EVAL_SPLIT, Split.TEST.value))
    site = open_site(context.node_config, cfg)
    summary = site_evaluate(site, msg.content[RecordKey.ARRAYS], cfg, split)
    content = RecordDict(
        {
            RecordKey.METRICS: MetricRecord(summary.to_record()),
            RecordKey.SITE: ConfigRecord({SiteKey.NAME.value: site.name}),
        }
    )
    return Message(content, reply_to=msg)
