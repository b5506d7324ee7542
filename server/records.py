"""The run folder: resolved config, per-round per-site metrics, checkpoints.

Layout::

    RUN_DIR/config.json     resolved flat run config and the sites that joined
    RUN_DIR/rounds.jsonl    one JSON object per round and phase, metrics by site name
    RUN_DIR/checkpoint.pt   global model state, config and round, written atomically
    RUN_DIR/checkpoint-MODEL.pt   the same for the design's other models (e.g. a LOSO fold)
    RUN_DIR/evaluations.json      every final evaluation: model, site, role, summary
    RUN_DIR/tracking.json   the MLflow or TensorBoard run it is mirrored into (tracking.*)

A checkpoint is replaced only once the new one is completely on disk, so an
interrupted write never leaves a corrupt file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from common.config import RunConfig
from common.files import atomic_file, write_atomic
from common.keys import GLOBAL_MODEL
from common.run_files import CHECKPOINT_FILE as CHECKPOINT_FILE  # re-exported: one definition
from common.run_files import CONFIG_FILE, checkpoint_name
from common.run_files import load_checkpoint as load_checkpoint
from common.run_files import read_config as read_config
from server import tracking

ROUNDS_FILE = "rounds.jsonl"
EVALUATIONS_FILE = "evaluations.json"


class RunRecorder:
    """Appends what happens in a run to its folder."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracking = tracking.TrackingRun()  # none until ``start`` or a resume

    def start(self, cfg: RunConfig, sites: Sequence[Mapping[str, Any]], run_id: str = "") -> None:
        """Record the resolved config, run id and site list; start a fresh rounds log, and a
        tracking run under ``tracking.backend``."""
        doc = {"config": cfg.to_flat(), "sites": list(sites), "run_id": run_id}
        write_atomic(self.run_dir / CONFIG_FILE, json.dumps(doc, indent=2).encode())
        (self.run_dir / ROUNDS_FILE).write_text("")
        self.tracking = tracking.start_run(cfg, self.run_dir, run_id)

    def keep_rounds(self, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Resume: rewrite rounds.jsonl (atomically) with only the records ``keep`` accepts,
        and continue the run's tracking run; the number dropped."""
        self.tracking = tracking.continue_run(self.run_dir)
        path = self.run_dir / ROUNDS_FILE
        entries = read_rounds(self.run_dir) if path.exists() else []
        kept = [e for e in entries if keep(e)]
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in kept)
        write_atomic(path, text.encode())
        return len(entries) - len(kept)

    def log_round(self, entry: Mapping[str, Any]) -> None:
        """Append one round/phase record as a JSON line (flushed immediately); mirror its
        summaries into the tracking run."""
        with (self.run_dir / ROUNDS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.tracking.log_round(entry)

    @contextmanager
    def tracked(self) -> Iterator[None]:
        """End the tracking run when the block ends: with the report's figures and files
        when it succeeded, marked failed when it raised."""
        try:
            yield
        except BaseException:
            self.tracking.end(failed=True)
            raise
        self.tracking.log_report(self.run_dir)
        self.tracking.end()

    def write_evaluations(self, evaluations: list[Mapping[str, Any]]) -> Path:
        """Replace RUN_DIR/evaluations.json with ``evaluations`` (atomically)."""
        path = self.run_dir / EVALUATIONS_FILE
        write_atomic(path, json.dumps(list(evaluations), indent=1).encode())
        return path

    def checkpoint(
        self,
        state: Mapping[str, torch.Tensor],
        cfg: RunConfig,
        server_round: int,
        model: str = GLOBAL_MODEL,
        shared_statistics: str = "",
        resume: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write model state, config and round together, atomically; with the hooks'
        pooled statistics (JSON) the model was trained with, so it can be scored alone,
        and what a resumed run needs (``server.resume``: optimiser and RNG state)."""
        payload = {
            "model": dict(state),
            "config": cfg.to_flat(),
            "round": server_round,
            "model_id": model,
            "shared_statistics": shared_statistics,
            "resume": dict(resume or {}),
        }
        path = self.run_dir / checkpoint_name(model)
        with atomic_file(path) as fh:
            torch.save(payload, fh)
        return path


def read_evaluations(run_dir: Path | str) -> list[dict[str, Any]]:
    """The final evaluations of a run (``RunRecorder.write_evaluations``)."""
    return list(json.loads((Path(run_dir) / EVALUATIONS_FILE).read_text(encoding="utf-8")))


def read_rounds(run_dir: Path | str) -> list[dict[str, Any]]:
    """All records of ``rounds.jsonl`` in order."""
    lines = (Path(run_dir) / ROUNDS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
