"""Experiment tracking: a run's summaries mirrored into MLflow or TensorBoard.

``tracking.backend`` picks the backend (none by default). Nothing is logged that the run
folder does not already hold, and nothing per case: per round and site the training loss
and the evaluation headline of ``rounds.jsonl``; the resolved config as parameters (less
what is secret); report.json's headline figures as metrics, its model hashes as tags and
the report files as artifacts. ``RunRecorder`` starts the tracking run with the run
record and logs every round record into it; the ServerApp logs the report and ends it.

RUN_DIR/tracking.json names the tracking run, so a later step continues it
(``continue_run``: simulate's report with the pooled baseline, a resumed run). A
``--seeds`` or ``--compare`` folder has its own (``start_parent``): a run started in a
folder inside it is that run's child, in the same store.

The backends (``server.tracking_backends``) are optional extras, imported only when used.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from common.config import ConfigError, RunConfig
from common.files import write_atomic
from common.keys import TrackingBackend
from server.tracking_figures import comparison_figures, report_figures, round_metrics

log = logging.getLogger("hepafed.progress")

TRACKING_FILE = "tracking.json"
PARENT = "parent"  # tracking.json's role of a --seeds / --compare folder
CHILD_OR_SINGLE = "run"
# backend -> (module that must be importable, extra that installs it)
EXTRAS = {
    TrackingBackend.MLFLOW: ("mlflow", "mlflow"),
    TrackingBackend.TENSORBOARD: ("tensorboard", "tensorboard"),
}
# never parameters: a key folder's path, and a URI (a token may hide in its query)
SECRET_KEYS = frozenset({"trust.keys-dir", "tracking.uri"})
REPORT_FILES = ("report.json", "report.html")
COMPARISON_FILES = ("comparison.json", "comparison.md")


class TrackingUnavailable(ConfigError):
    """``tracking.backend`` names a backend whose package is not installed."""


def require_backend(cfg: RunConfig) -> None:
    """Fail before any work when ``tracking.backend``'s package is missing (the server's
    check: sites never track, so ``RunConfig`` itself does not ask)."""
    backend = cfg.tracking.backend
    if backend is TrackingBackend.NONE:
        return
    module, extra = EXTRAS[backend]
    if importlib.util.find_spec(module) is None:
        raise TrackingUnavailable(
            f"tracking.backend = {backend.value!r} needs the {module!r} package, which is not "
            f"installed: pip install -e '.[{extra}]' (or set tracking.backend = 'none')"
        )


class Writer(Protocol):
    """One tracking run in a backend's store (``server.tracking_backends``)."""

    def params(self, values: Mapping[str, str]) -> None: ...
    def metrics(self, values: Mapping[str, float], step: int) -> None: ...
    def tags(self, values: Mapping[str, str]) -> None: ...
    def files(self, paths: list[Path]) -> None: ...
    def end(self, failed: bool) -> None: ...


class TrackingRun:
    """What a run folder's records and report become in a tracking run; without a writer
    (``tracking.backend = 'none'``) every call does nothing. The run folder is the record:
    a backend that fails mid-run (a tracking server gone) is dropped with a warning, and
    the federation goes on."""

    def __init__(self, writer: Writer | None = None) -> None:
        self.writer = writer

    def _write(self, call: Callable[[Writer], None]) -> None:
        if self.writer is None:
            return
        try:
            call(self.writer)
        except Exception as e:  # the backend's own errors: MLflow, HTTP, disk
            log.warning(
                "tracking stopped (%s: %s); the run folder has everything", type(e).__name__, e
            )
            self.writer = None

    def log_round(self, entry: Mapping[str, Any]) -> None:
        """One ``rounds.jsonl`` record: its per-site training loss or evaluation headline."""
        if self.writer is not None:
            step, values = round_metrics(entry)
            if values:
                self._write(lambda w: w.metrics(values, step))

    def log_config(self, flat: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        """The resolved flat run config as parameters, less ``SECRET_KEYS``."""
        self._write(lambda w: w.params(public_params(flat)))
        if tags:
            self._write(lambda w: w.tags(tags))

    def log_report(self, folder: Path) -> None:
        """``folder``'s report.json figures and model hashes, and its report files."""
        path = folder / REPORT_FILES[0]
        if self.writer is None or not path.is_file():
            return
        step, values, tags = report_figures(json.loads(path.read_text(encoding="utf-8")))
        files = [folder / name for name in REPORT_FILES if (folder / name).is_file()]
        self._write(lambda w: w.metrics(values, step))
        self._write(lambda w: w.tags(tags))
        self._write(lambda w: w.files(files))

    def log_figures(self, values: Mapping[str, float], files: list[Path]) -> None:
        """Final figures (step 0) and files, e.g. a comparison's."""
        present = [p for p in files if p.is_file()]
        self._write(lambda w: w.metrics(values, 0))
        self._write(lambda w: w.files(present))

    def end(self, failed: bool = False) -> None:
        """Mark the tracking run finished (or failed); later calls do nothing."""
        self._write(lambda w: w.end(failed))
        self.writer = None


@contextmanager
def ended(run: TrackingRun) -> Iterator[TrackingRun]:
    """``run``, ended when the block ends: failed if it raised."""
    try:
        yield run
    except BaseException:
        run.end(failed=True)
        raise
    run.end()


def start_run(cfg: RunConfig, run_dir: Path, run_id: str = "") -> TrackingRun:
    """A new tracking run for the run folder (a child of its parent folder's, if any),
    with the config as parameters; recorded in RUN_DIR/tracking.json."""
    if cfg.tracking.backend is TrackingBackend.NONE:
        return TrackingRun()
    parent = read_record(run_dir.parent)
    if parent is not None and (
        parent.get("role") != PARENT or parent.get("backend") != cfg.tracking.backend.value
    ):
        parent = None
    run = _create(cfg, run_dir, CHILD_OR_SINGLE, parent)
    run.log_config(cfg.to_flat(), {"hepafed.run-id": run_id} if run_id else None)
    return run


def start_parent(cfg: RunConfig, out_dir: Path) -> TrackingRun:
    """The tracking run of a --seeds or --compare folder (continued if it has one): each
    seed's run in it becomes its child (``start_run``)."""
    if cfg.tracking.backend is TrackingBackend.NONE:
        return TrackingRun()
    require_backend(cfg)
    record = read_record(out_dir)
    if record and record.get("role") == PARENT and record["backend"] == cfg.tracking.backend:
        return continue_run(out_dir)
    return _create(cfg, out_dir, PARENT, None)


def continue_run(folder: Path) -> TrackingRun:
    """The tracking run ``folder``'s tracking.json names (none without one)."""
    from server import tracking_backends

    record = read_record(folder)
    return TrackingRun(tracking_backends.reopen(record)) if record else TrackingRun()


def read_record(folder: Path) -> dict[str, Any] | None:
    """``folder``'s tracking.json: backend, store and run (None when it has none)."""
    path = folder / TRACKING_FILE
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def _create(
    cfg: RunConfig, folder: Path, role: str, parent: Mapping[str, Any] | None
) -> TrackingRun:
    from server import tracking_backends

    require_backend(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    writer, record = tracking_backends.create(cfg, folder.resolve(), parent)
    write_atomic(folder / TRACKING_FILE, json.dumps({**record, "role": role}, indent=1))
    return TrackingRun(writer)


def public_params(flat: Mapping[str, Any]) -> dict[str, str]:
    """The flat config as parameter strings, less ``SECRET_KEYS``."""
    return {key: str(value) for key, value in flat.items() if key not in SECRET_KEYS}


def parent_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A --seeds / --compare run's parameters: its seeds' shared config (``seed`` and
    ``output.run-dir`` are each child's own)."""
    return {k: v for k, v in flat.items() if k not in ("seed", "output.run-dir")}


def relog_report(cfg: RunConfig, run_dir: Path) -> None:
    """A report rewritten after its run ended (simulate adds the pooled baseline): its
    figures and files into the run's tracking run again, the latest value of each."""
    if cfg.tracking.backend is not TrackingBackend.NONE:
        with ended(continue_run(run_dir)) as run:
            run.log_report(run_dir)


@contextmanager
def ending_in(cfg: RunConfig, folder: Path) -> Iterator[None]:
    """End the tracking run the block starts in ``folder`` (a --compare seed, whose
    ServerApp body leaves it open): failed if the block raised."""
    if cfg.tracking.backend is TrackingBackend.NONE:
        yield
        return
    try:
        yield
    except BaseException:
        continue_run(folder).end(failed=True)
        raise
    continue_run(folder).end()


def log_comparison(
    parent: TrackingRun, out_dir: Path, doc: Mapping[str, Any], children: Mapping[int, Path]
) -> None:
    """A --compare run's figures: over the seeds into ``parent`` (with comparison.json and
    .md), each seed's into its child run (``children``: seed -> run folder)."""
    if parent.writer is None:
        return
    parent.log_figures(comparison_figures(doc), [out_dir / name for name in COMPARISON_FILES])
    for seed, folder in children.items():
        with ended(continue_run(folder)) as child:
            child.log_figures(comparison_figures(doc, seed), [])
