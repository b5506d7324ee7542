"""The tracking backends behind ``server.tracking``: an MLflow run and a TensorBoard event
folder, each created from the run config or continued from its tracking.json record.

mlflow and tensorboard are optional extras, imported here only when a run uses them.
MLflow's telemetry is off (``MLFLOW_DISABLE_TELEMETRY``, set in ``common``); its default
store is SQLite under the run folder (the file store is legacy) with the artifacts beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import RunConfig
from common.keys import TrackingBackend

if TYPE_CHECKING:
    from server.tracking import Writer

log = logging.getLogger(__name__)

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
TENSORBOARD_DIR = "tensorboard"
_BATCH = 100  # MLflow accepts at most 100 params (1000 metrics) per log_batch


def create(
    cfg: RunConfig, folder: Path, parent: Mapping[str, Any] | None
) -> tuple[Writer, dict[str, Any]]:
    """A new tracking run named after ``folder`` (absolute), the child of ``parent``'s
    record when given (then in its store); the writer and its record."""
    if cfg.tracking.backend is TrackingBackend.TENSORBOARD:
        logdir = Path(parent["logdir"]) / folder.name if parent else folder / TENSORBOARD_DIR
        return TensorBoardWriter(logdir), {"backend": "tensorboard", "logdir": str(logdir)}
    if parent is not None:
        uri, experiment_id = parent["uri"], parent["experiment_id"]
    else:
        uri = cfg.tracking.uri or f"sqlite:///{folder / MLFLOW_DB}"
        experiment_id = _experiment(uri, cfg.tracking.experiment)
    client = _client(uri)
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    tags = {MLFLOW_PARENT_RUN_ID: parent["run_id"]} if parent else {}
    run = client.create_run(experiment_id, run_name=folder.name, tags=tags)
    record = {"backend": "mlflow", "uri": uri, "experiment_id": experiment_id}
    return MlflowWriter(client, run.info.run_id), {**record, "run_id": run.info.run_id}


def reopen(record: Mapping[str, Any]) -> Writer:
    """The writer of the tracking run a tracking.json ``record`` names."""
    if record["backend"] == TrackingBackend.TENSORBOARD.value:
        return TensorBoardWriter(Path(record["logdir"]))
    return MlflowWriter(_client(record["uri"]), record["run_id"])


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, created if new: for a SQLite
    store with its artifacts in mlartifacts/ beside the database (not the working folder)."""
    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        location = (database.parent / MLFLOW_ARTIFACTS).as_uri()
    return str(client.create_experiment(name, artifact_location=location))


class MlflowWriter:
    """One MLflow run, written through ``MlflowClient`` (no global active run)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def params(self, values: Mapping[str, str]) -> None:
        """Log parameters not yet logged (MLflow keeps a parameter's first value)."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in values.items() if k in have and have[k] != v)
        if changed:
            log.warning("tracking: run %s keeps its logged %s", self.run_id, ", ".join(changed))
        new = [Param(k, v) for k, v in values.items() if k not in have]
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + _BATCH])

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in values.items()]
        for i in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + _BATCH])

    def tags(self, values: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in values.items()])

    def files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def end(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class TensorBoardWriter:
    """Scalars (and the config, tags and report files as text) in one event folder,
    flushed after every call so a run can be watched live."""

    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        self.writer = SummaryWriter(log_dir=str(logdir))

    def _text(self, tag: str, rows: Mapping[str, str]) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
        self.writer.add_text(tag, "| key | value |\n|---|---|\n" + table)
        self.writer.flush()

    def params(self, values: Mapping[str, str]) -> None:
        self._text("config", values)

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def tags(self, values: Mapping[str, str]) -> None:
        self._text("tags", values)

    def files(self, paths: list[Path]) -> None:
        self._text("files", {p.name: str(p) for p in paths})

    def end(self, failed: bool) -> None:
        if failed:
            self._text("status", {"status": "failed"})
        self.writer.close()
