"""The environment of the Flower processes hepafed starts (SuperLink, SuperNode, flwr)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path


def with_flower_on_path(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this interpreter's scripts folder first on ``PATH``.

    ``hepafed`` may be run as ``.venv/bin/hepafed`` without activating the
    environment; Flower then still finds its own executables
    (``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``), which it
    starts by name.
    """
    bin_dir = str(Path(sys.executable).parent)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    if bin_dir not in parts:
        parts.insert(0, bin_dir)
    return {**env, "PATH": os.pathsep.join(parts)}
