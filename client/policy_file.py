"""A site's policy on disk and on the SuperNode's command line.

``hepafed site init`` writes the ``[policy]`` table of ``node-config.toml``
(``policy_toml``); ``read_policy`` reads it back, and ``node_config_args`` turns it
into the ``policy.*`` entries of ``flower-supernode --node-config``, which Flower
hands to the ClientApp (``client.policy.SitePolicy.from_node_config``).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from client.policy import PREFIX, PolicyError, SitePolicy

EXPLAINED = {
    "require-signed-models": "refuse any model without the server's valid signature",
    "min-privacy-mode": "floor of privacy.mode: none < central < central-client-clip < local",
    "min-noise-multiplier": "floor of privacy.noise-multiplier under any DP mode",
    "max-delta": "ceiling of privacy.delta under any DP mode",
    "max-epsilon": "this site's local-DP budget over all runs (ledger in state-dir); 0: none",
    "min-cases": "floor of eval.min-cases: fewer test cases report counts only",
    "min-per-class": "floor of eval.min-per-class",
    "min-cell": "k: no bin, cell or category of fewer cases leaves the site",
    "max-thresholds": "ceiling of the number of eval.thresholds (and test cases / min-cell)",
    "max-calibration-bins": "ceiling of eval.calibration-bins",
    "max-roc-points": "ceiling of eval.roc-points",
    "max-histogram-bins": "ceiling of eval.histogram-bins",
    "max-embedding-dims": "ceiling of eval.embedding-dims",
    "max-roi-size": "ceiling of data.roi-size (pixels)",
    "max-recalibration": "a recalibration's slope within [1/m, m], |intercept| <= m; 0: never",
    "saliency": "send eval.saliency's Grad-CAM shares in the lesion and the liver around it "
    "(means, >= min-cell cases)",
    "monitor-any-window": "answer monitoring windows other than single calendar months",
    "max-memory-mb": "ceiling of the estimated size of the site's preprocessed cases",
    "state-dir": "this site's state kept across runs (the DP ledger), created 0700",
    "cache-dir": 'where this site caches preprocessed crops (0700/0600); "": nowhere',
    "data-root": 'images outside the site folder may be read only under this folder; "": none',
    "dicomweb-secrets": 'owner-only (0600) file: URL, CA, credentials of the PACS; "": none',
    "allowed-hooks": "'module:Class' hooks this site imports (comma-separated)",
}


def policy_toml(policy: SitePolicy) -> str:
    """The ``[policy]`` table of a site's ``node-config.toml``, one commented line per key."""
    lines = [
        "# The site's policy: enforced by its ClientApp whatever the server's run config asks",
        "# (see docs/trust.md). Flower passes the table as 'policy.*' node-config keys.",
        "[policy]",
    ]
    for key, value in policy.to_node_config().items():
        name = key[len(PREFIX) :]
        if name == "allowed-hooks":
            continue  # the top-level allowed-hooks of the template
        text = json.dumps(value) if isinstance(value, str) else str(value).lower()
        if isinstance(value, float):
            text = repr(value)
        lines.append(f"{name} = {text}  # {EXPLAINED[name]}")
    return "\n".join(lines) + "\n"


def read_policy(node_config_file: Path) -> SitePolicy:
    """The policy of a site's ``node-config.toml``: its ``[policy]`` table and top-level
    ``allowed-hooks`` (defaults for what it leaves out; a missing file: the defaults)."""
    if not node_config_file.is_file():
        return SitePolicy()
    try:
        data = tomllib.loads(node_config_file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"{node_config_file}: cannot read the site's policy: {e}") from e
    table = data.get("policy", {})
    if not isinstance(table, dict):
        raise PolicyError(f"{node_config_file}: 'policy' must be a table ([policy])")
    flat = {PREFIX + k: v for k, v in table.items()}
    if "allowed-hooks" in data:
        flat.setdefault(PREFIX + "allowed-hooks", data["allowed-hooks"])
    try:
        return SitePolicy.from_node_config(flat)
    except PolicyError as e:
        raise PolicyError(f"{node_config_file}: {e}") from e


def node_config_args(policy: SitePolicy) -> str:
    """The policy as ``flower-supernode --node-config`` entries (``policy.key=value ...``)."""
    parts = []
    for key, value in policy.to_node_config().items():
        if isinstance(value, str):
            if "'" in value:
                raise PolicyError(f"node-config {key} = {value!r}: must not contain a quote")
            text = f"'{value}'"
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)
