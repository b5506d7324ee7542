"""The ``monitor`` design: a finished run's frozen model scored window by window at every site.

``eval.design = "monitor"`` (``hepafed monitor`` sets it; a deployment passes it with
``hepafed run``) trains nothing. The server

1. checks the training run (``monitor.model-run``): its audit trail verifies and is sealed,
   and the checkpoint is the one the trail recorded (``server.audit_run.verify_run``);
   monitoring starts only from a finished, accounted-for run;
2. takes the model's operating point from that trail: the threshold chosen on the training
   sites' validation summaries, and the recalibration fitted there, if any (else the run's
   first ``eval.thresholds`` value, said so);
3. runs under the training run's model, data and evaluation settings (the sites must
   preprocess as the model was trained), with this invocation's federation, trust, output
   and monitor settings, connects the sites as any run does (signed messages, the run's own
   audit trail in ``output.run-dir``);
4. for each window of ``monitor.windows``, asks every site for its window summary
   (``client.monitor_site``), checks it (``server.monitoring.checks``) and appends it to the
   model's monitoring folder (``server.monitoring.store``): the label-free part as the
   window, the figures from labels as a labels revision;
5. analyses every window the folder holds (``server.monitoring.analysis``), writes
   ``monitor.json`` and ``monitor.html`` there, and ``monitor-run.json`` (what this
   invocation recorded, what failed, and its exit status) in its run folder.

Only the lesion-malignancy task is watched, and only a model whose weights are all in the
checkpoint: hooks that keep layers at the sites or adapt the model at test time are refused.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.dates import check_disjoint, expand_windows, parse_date, window_bounds
from common.files import write_atomic
from common.keys import GLOBAL_MODEL, ConfigKey, EvalDesign, RecordKey, Share, SiteKey, Split, Task
from common.models import build_model
from common.run_files import load_checkpoint, read_config
from common.signing import load_public_key, verify
from common.weights import to_arrays
from common.window_summary import LABEL_KEYS
from server.audit import entries
from server.federation import Federation, connect
from server.monitoring.analysis import MonitorSettings, analyse, exit_status
from server.monitoring.checks import window_record
from server.monitoring.html import render_html
from server.monitoring.store import MonitorError, MonitorStore
from server.records import RunRecorder
from server.reply_checks import ReplyError, brief, json_object
from server.trust import file_sha256

log = logging.getLogger("hepafed.progress")

MONITOR_JSON, MONITOR_HTML, RUN_OUTCOME = "monitor.json", "monitor.html", "monitor-run.json"
ONE_DAY = timedelta(days=1)
# run-config sections a monitoring invocation takes from its own config; everything else
# (task, model, data, eval, hooks, train) is the training run's
OWN_SECTIONS = ("federation.", "output.", "monitor.", "trust.", "privacy.", "tracking.")
OWN_KEYS = ("data.site-root", "data.cache-dir")  # where this invocation's sites keep data


class MonitorRunError(RuntimeError):
    """The model cannot be monitored as asked; the message says what to do."""


@dataclass(frozen=True)
class Watched:
    """The frozen model and how it operates."""

    run_dir: Path
    checkpoint: str
    cfg: RunConfig  # the training run's config
    arrays: ArrayRecord
    run_id: str
    threshold: float
    recalibration: tuple[float, ...]
    how: str  # how the threshold (and recalibration) were chosen


def _verify(run_dir: Path) -> str:
    """The training run's id once its trail, report and checkpoints verify and it ended."""
    from server.audit_run import verify_run  # imports the report's models

    key_file = run_dir / "keys" / "server.pub"
    key = load_public_key(key_file) if key_file.is_file() else None
    check = (lambda data, sig: verify(key, data, sig)) if key is not None else None
    audit = verify_run(run_dir, check, key)
    if audit.problems or not audit.finished:
        why = "; ".join(audit.problems) or "the run has not ended (its trail is not sealed)"
        raise MonitorRunError(
            f"the training run {run_dir} cannot be monitored: {why}. Monitor the model of a "
            "finished run whose audit trail verifies (`hepafed audit verify RUN`)"
        )
    return str(audit.trail.run_id)


def _operating_point(run_dir: Path, cfg: RunConfig) -> tuple[float, tuple[float, ...], str]:
    """The global model's threshold and recalibration as the trail recorded their choice."""
    chosen = [
        e["data"]
        for e in entries(run_dir)
        if e["kind"] == "threshold" and e["data"].get("model") == GLOBAL_MODEL
    ]
    if not chosen:
        return (
            cfg.eval.thresholds[0],
            cfg.eval.recalibration,
            "the run's first eval.thresholds value (no threshold was chosen on validation)",
        )
    last = chosen[-1]
    recal = last.get("recalibration") or {}
    params: tuple[float, ...] = ()
    if recal.get("fitted") and recal.get("intercept") is not None:
        params = (float(recal["intercept"]), float(recal["slope"]))
    if last.get("chosen"):
        sites = ", ".join(last.get("sites", []))
        how = f"{last.get('rule', '?')} on the validation cases of {sites}"
        how += f": {last.get('reason', '')}" if last.get("reason") else ""
    else:
        how = f"the run's first eval.thresholds value, not chosen: {last.get('reason', '')}"
    if params:
        how += f"; logistic recalibration a = {params[0]:.3f}, b = {params[1]:.3f}"
    return float(last["threshold"]), params, how


def load_watched(run_dir: Path, checkpoint: str) -> Watched:
    """The training run's model, config and operating point, after checking the run."""
    if not (run_dir / "config.json").is_file():
        raise MonitorRunError(
            f"monitor.model-run = {str(run_dir)!r}: no config.json there; name the folder of "
            "a finished training run"
        )
    run_id = _verify(run_dir)
    cfg = RunConfig.from_flat(read_config(run_dir)["config"])
    if cfg.task != Task.MALIGNANCY:
        raise MonitorRunError(
            f"the run's task is {cfg.task.value!r}: monitoring watches a lesion-malignancy "
            "model's probabilities"
        )
    if cfg.hooks.use:
        raise MonitorRunError(
            f"the run used hooks {', '.join(cfg.hooks.use)}: a model with layers kept at the "
            "sites or adapted at test time is not the checkpoint alone; monitor a run "
            "trained without hooks"
        )
    path = run_dir / checkpoint
    if not path.is_file():
        raise MonitorRunError(f"{path}: no such checkpoint in the training run")
    model = build_model(cfg)
    model.load_state_dict(load_checkpoint(path)["model"])
    threshold, recalibration, how = _operating_point(run_dir, cfg)
    return Watched(
        run_dir, checkpoint, cfg, to_arrays(model), run_id, threshold, recalibration, how
    )


def monitor_config(cfg: RunConfig, watched: Watched) -> RunConfig:
    """The training run's settings with this invocation's own sections and the operating
    point; the design is ``monitor``."""
    own = cfg.to_flat()
    flat = {k: v for k, v in watched.cfg.to_flat().items() if not k.startswith(OWN_SECTIONS)}
    flat.update({k: v for k, v in own.items() if k.startswith(OWN_SECTIONS) or k in OWN_KEYS})
    flat.update(
        {
            "eval.design": EvalDesign.MONITOR.value,
            "eval.thresholds": repr(watched.threshold),
            "eval.recalibration": ",".join(repr(v) for v in watched.recalibration),
            "eval.local-only": False,
            "eval.every-round": False,
            "hooks.finetune-epochs": 0,
            "data.acquired-before": "",  # the later cases are what is watched
        }
    )
    return RunConfig.from_flat(flat)


def settings_of(cfg: RunConfig, windows: list[str], as_of: date) -> MonitorSettings:
    m = cfg.monitor
    return MonitorSettings(
        windows=tuple(windows),
        as_of=as_of.isoformat(),
        reference_windows=m.reference_windows,
        false_alarm_rate=m.false_alarm_rate,
        cusum_k=m.cusum_k,
        level=cfg.eval.level,
        min_cases=cfg.eval.min_cases,
    )


def _ask(fed: Federation, arrays: ArrayRecord, window: str, as_of: date) -> list[Message]:
    start, end = window_bounds(window)
    extra = {
        ConfigKey.ROUND.value: 0,
        ConfigKey.EVAL_SPLIT.value: Split.TEST.value,
        ConfigKey.SHARE.value: Share.SHARED.value,
        ConfigKey.WINDOW.value: window,
        ConfigKey.WINDOW_START.value: start.isoformat(),
        ConfigKey.WINDOW_END.value: end.isoformat(),
        ConfigKey.AS_OF.value: as_of.isoformat(),
    }
    messages = []
    for site in fed.sites:
        config = fed.message_config(GLOBAL_MODEL, arrays, **extra)
        content = RecordDict({RecordKey.ARRAYS: arrays, RecordKey.CONFIG: config})
        messages.append(
            Message(content, dst_node_id=site.node_id, message_type=MessageType.EVALUATE)
        )
    return fed.send(messages, f"monitor {window}")


def record_reply(
    fed: Federation, store: MonitorStore, reply: Message, window: str
) -> tuple[str, str]:
    """Store one site's reply for ``window``: (site, what happened), raising ReplyError or
    MonitorError for a reply that cannot be stored."""
    site = fed.site_of(reply)
    if reply.has_error():
        raise ReplyError(f"the site could not score the window: {brief(reply.error.reason)}")
    joined = {s.name: s for s in fed.sites}[site]
    record = window_record(reply, joined.declared_cases, fed.cfg)
    info = reply.content.config_records.get(RecordKey.SITE, ConfigRecord())
    acquisition = json_object(info.get(SiteKey.ACQUISITION, "{}"), "acquisition summary")
    if acquisition.get("n_cases", record["n"]) != record["n"]:
        raise ReplyError(
            f"the acquisition summary counts {acquisition.get('n_cases')!r} cases, the "
            f"window summary n = {record['n']}"
        )
    summary = {k: v for k, v in record.items() if k not in LABEL_KEYS}
    summary["acquisition"] = acquisition
    m = fed.cfg.monitor
    status = store.record_window(site, window, summary, replace=m.replace, reason=m.reason)
    actual = {k: record[k] for k in LABEL_KEYS if k in record}
    current = store.windows()[(site, window)]
    if actual.get("n-labelled", 0) or current.actual is not None:
        revision = store.record_labels(site, window, actual)
        if revision != current.revisions:
            status += f", labels revision {revision}"
    return site, status


def run_monitor(grid: Grid, cfg: RunConfig) -> Path:
    """The design (module docstring); the invocation's run folder."""
    started = time.monotonic()
    watched = load_watched(Path(cfg.monitor.model_run), cfg.monitor.checkpoint)
    mcfg = monitor_config(cfg, watched)
    windows = expand_windows(mcfg.monitor.windows)
    # labels known as of the last complete month's last day unless said otherwise (a site
    # counts labels as of a month's end only, unless its policy allows any day)
    today = datetime.now(UTC).date()
    as_of = parse_date(mcfg.monitor.as_of) if mcfg.monitor.as_of else today.replace(day=1) - ONE_DAY
    folder = Path(mcfg.monitor.folder or watched.run_dir / "monitor")
    recorder = RunRecorder(Path(mcfg.output.run_dir))
    fed = connect(grid, mcfg, recorder)
    try:
        store = MonitorStore.create(folder, watched.run_dir, watched.checkpoint, fed.trust.signer())
    except MonitorError as e:
        raise MonitorRunError(str(e)) from e
    try:  # the new windows and those already on the chain: one history, no overlap
        every = check_disjoint({w for _, w in store.windows()} | set(windows))
    except ValueError as e:
        raise MonitorRunError(f"{folder}: {e}") from e
    recorded: dict[str, dict[str, str]] = {}
    failed: dict[str, dict[str, str]] = {}
    for window in windows:
        replies = _ask(fed, watched.arrays, window, as_of)
        answered = set()
        for reply in replies:
            site = fed.site_of(reply)
            answered.add(site)
            try:
                _, status = record_reply(fed, store, reply, window)
                recorded.setdefault(window, {})[site] = status
            except (ReplyError, MonitorError, KeyError, ValueError, TypeError) as e:
                failed.setdefault(window, {})[site] = str(e)
                log.warning("monitor %s at %s: %s", window, site, e)
        for joined in fed.sites:
            if joined.name not in answered:
                failed.setdefault(window, {})[joined.name] = "no reply"
        fed.audit.append(
            "monitor-window",
            {
                "window": window,
                "recorded": recorded.get(window, {}),
                "failed": failed.get(window, {}),
            },
        )
        log.info("window %s: %s", window, recorded.get(window, {}))
    model = {
        "model_sha256": store.model["model_sha256"],
        "checkpoint": watched.checkpoint,
        "training_run_id": watched.run_id,
        "training_head_sha256": store.model["training_head_sha256"],
        "task": watched.cfg.task.value,
        "threshold": watched.threshold,
        "threshold_how": watched.how,
        "recalibration": list(watched.recalibration),
    }
    created = datetime.now(UTC).isoformat(timespec="seconds")
    doc = analyse(store.windows(), settings_of(mcfg, every, as_of), model, created)
    write_atomic(folder / MONITOR_JSON, json.dumps(doc, indent=1, sort_keys=True))
    write_atomic(folder / MONITOR_HTML, render_html(doc))
    # an alarm is reported even where another site failed (the failures are listed too): a
    # site that is down must not hide another's alarm from the scheduler
    status = exit_status(doc, windows)  # this invocation's windows
    if failed and status == "none":
        status = "failed"
    outcome = {
        "folder": str(folder),
        "windows": windows,
        "as_of": as_of.isoformat(),
        "recorded": recorded,
        "failed": failed,
        "status": status,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_atomic(recorder.run_dir / RUN_OUTCOME, json.dumps(outcome, indent=1, sort_keys=True))
    # the invocation ended: its trail seals what it wrote (the monitoring folder's own chain
    # holds the windows, and its head is signed at every append)
    fed.audit.seal({RUN_OUTCOME: file_sha256(recorder.run_dir / RUN_OUTCOME)})
    log.info("monitoring: %s; monitor.json and monitor.html in %s", status, folder)
    return recorder.run_dir
