"""A message's config record, read once by every part of the site.

The server sends one flat config record per message: the run config (``train.lr``,
``privacy.mode`` ...), the keys it adds per message (``common.keys.ConfigKey``: the
round, the model id, signatures ...) and, from a stock Flower DP server, its
``clipping_norm``. ``split_config`` separates them and parses the run config into the
typed ``RunConfig``; the site's mods (policy, trust, privacy) and its ClientApp read
that, never the raw strings.

One key is read raw on purpose: ``hooks.use`` (``named_hooks``). Parsing the run config
resolves each hook name, and a name such as ``package.module:Class`` imports that
module; a deployed site checks the names against its policy before anything parses
them (``client.policy.policy_mod``, the first mod that reads the message's content).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from common.config import ConfigError, RunConfig, valid_keys
from common.keys import ConfigKey

HOOKS_KEY = "hooks.use"
SERVER_KEYS = frozenset(k.value for k in ConfigKey)
FLOWER_KEYS = frozenset({KEY_CLIPPING_NORM})  # privacy_mod checks and removes it


def named_hooks(config: Mapping[str, Any]) -> list[str]:
    """The hooks ``hooks.use`` names, as the server wrote them (see the module docstring)."""
    return [h.strip() for h in str(config.get(HOOKS_KEY, "") or "").split(",") if h.strip()]


def split_config(config: Mapping[str, Any]) -> tuple[RunConfig, int, dict[str, Any]]:
    """The typed run config, the round number and the server's per-message keys.

    A key that is none of these is a ConfigError naming it (a server of another
    version, or a typo in the run config): the site does not guess."""
    run: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    known = valid_keys()
    for key, value in config.items():
        if key in known:
            run[key] = value
        elif key in SERVER_KEYS:
            extras[key] = value
        elif key not in FLOWER_KEYS:
            raise ConfigError(
                f"the server sent the config key {key!r}, which this site does not know: "
                "is the server running another hepafed version?"
            )
    server_round = int(str(extras.pop(ConfigKey.ROUND.value, 0)))
    return RunConfig.from_flat(run), server_round, extras


def run_config(config: Mapping[str, Any]) -> RunConfig:
    """The typed run config of a message's config record (``split_config``)."""
    return split_config(config)[0]
