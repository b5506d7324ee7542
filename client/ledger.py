"""A site's local-DP ledger: every noised update it has released, across runs.

Local DP is a promise about the hospital's data, not about one run, so the ledger
lives in the site's own ``policy.state-dir`` (``dp-ledger.json``, mode 0600), where
a new run of the server cannot reset it. Each release is a Gaussian mechanism
with ``mu_i = 2 / sigma_i`` (``client.privacy``); releases with different noise
compose exactly to ``mu = sqrt(sum mu_i^2)`` (Dong, Roth & Su 2022, Cor. 3.3).
A node without a state folder (a test's bare Context) keeps it in ``Context.state``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from flwr.app import ConfigRecord, Context

from client.policy import private_folder
from common.files import write_atomic
from common.privacy import gaussian_epsilon

STATE_KEY = "hepafed.privacy"  # Context.state ConfigRecord of a node without a state folder
RELEASES = "releases"
MU_SQUARED = "mu-squared"
FORMAT = 1


class LedgerError(RuntimeError):
    """The site's DP ledger file cannot be read or written: the site releases nothing."""


@dataclass(frozen=True)
class Ledger:
    """How many noised updates a site released, and the sum of their ``mu^2``."""

    releases: int = 0
    mu_squared: float = 0.0

    def after(self, mu: float) -> Ledger:
        """The ledger once one more release of GDP ``mu`` is recorded."""
        return Ledger(self.releases + 1, self.mu_squared + mu * mu)

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` of every release recorded (exact GDP composition)."""
        if not math.isfinite(self.mu_squared):
            return math.inf
        return gaussian_epsilon(math.sqrt(self.mu_squared), delta)


def load_ledger(ctx: Context, path: Path | None) -> Ledger:
    """The site's ledger: from ``path`` (a missing file is an empty ledger) or Context.state."""
    if path is None:
        record = ctx.state.get(STATE_KEY)
        if not isinstance(record, ConfigRecord):
            return Ledger()
        return Ledger(
            int(cast(int, record.get(RELEASES, 0))), float(cast(float, record.get(MU_SQUARED, 0)))
        )
    if not path.exists():
        return Ledger()
    try:
        data = json.loads(path.read_text())
        return Ledger(int(data[RELEASES]), float(data[MU_SQUARED]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LedgerError(
            f"the site's DP ledger {path} cannot be read ({type(e).__name__}: {e}); the site "
            "releases no update until it is restored (never delete it to reset the budget)"
        ) from e


def save_ledger(ctx: Context, path: Path | None, ledger: Ledger) -> None:
    """Record ``ledger`` (atomically, 0600, in a 0700 folder when it is a file)."""
    if path is None:
        ctx.state[STATE_KEY] = ConfigRecord(
            {RELEASES: ledger.releases, MU_SQUARED: ledger.mu_squared}
        )
        return
    text = json.dumps(
        {"format": FORMAT, RELEASES: ledger.releases, MU_SQUARED: ledger.mu_squared}, indent=1
    )
    try:
        private_folder(path.parent)
        write_atomic(path, text, mode=0o600)
    except OSError as e:
        raise LedgerError(f"cannot write the site's DP ledger {path}: {e}") from e
