"""A run folder's files that both sides read: its resolved config and its checkpoints.

The server writes them (``server.records.RunRecorder``); a hospital reads them too, to
explain the run's model on its own cases (``hepafed site explain``, ``client.explain_cli``),
without loading anything of ``server``. The names are defined here once.

    RUN_DIR/config.json           resolved flat run config and the sites that joined
    RUN_DIR/checkpoint.pt         global model state, config and round
    RUN_DIR/checkpoint-MODEL.pt   the same for the design's other models (e.g. a LOSO fold)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from common.keys import GLOBAL_MODEL

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_name(model: str) -> str:
    """checkpoint.pt for the global model, checkpoint-MODEL.pt (file-safe) for others."""
    if model == GLOBAL_MODEL:
        return CHECKPOINT_FILE
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)
    return f"checkpoint-{safe}.pt"


def read_config(run_dir: Path | str) -> dict[str, Any]:
    """RUN_DIR/config.json: ``{"config": flat run config, "sites": [...]}``."""
    return dict(json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8")))


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """A checkpoint written by ``server.records.RunRecorder.checkpoint``: tensors and plain
    values only (``weights_only``: a file from elsewhere cannot run code when it loads)."""
    import torch  # not at import: a command's --help loads no torch

    return dict(torch.load(Path(path), map_location="cpu", weights_only=True))
