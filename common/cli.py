"""The `hepafed` command line: a small root that loads a command group only when it is chosen.

Each group lives with the role that uses it and is imported only for its own commands:

- ``client.cli``: a hospital's ``site`` commands (check, init, start, approve-app, ...);
  nothing of ``server`` is imported there;
- ``server.certs_cli``, ``server.cli``, ``server.run_cli``, ``server.audit_cli``: the
  coordinating center's and the operator's ``certs``, ``server``, ``run`` and ``audit``;
- ``simulations.cli``: ``simulate``, ``study``, ``bench``, ``ablate``, ``report``, ``phantom``.

``hepafed --help`` lists the commands from the table below without importing any group,
so neither it nor a site's commands pay for torch (``tests/simulations/test_cli_imports.py``).
A group module offers ``add_commands(sub)``, which adds its commands to the root's
subparsers and sets each one's ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from typing import Any

import common  # noqa: F401  (sets Flower's no-telemetry, no-install environment)
from common.config import ConfigError

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

# command -> (the module that adds it, its one-line help for `hepafed --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulations.cli", "simulate a multi-hospital federation with baselines"),
    "study": ("simulations.cli", "a resumable grid of training recipes x seeds x scenarios"),
    "ablate": (
        "simulations.cli",
        "which acquisition factor of a phantom hospital degrades a trained model",
    ),
    "report": (
        "simulations.cli",
        "re-render a run's report; combine a --seeds folder's seeds, or a --compare folder's",
    ),
    "bench": ("simulations.cli", "measure round overhead, aggregation, throughput and scaling"),
    "phantom": ("simulations.cli", "write a multi-center phantom in the site data contract"),
    "site": (
        "client.cli",
        "a hospital's commands: check, init, start, approve-app, revoke-app, list-apps",
    ),
    "certs": ("server.certs_cli", "TLS certificates for a deployment"),
    "server": (
        "server.cli",
        "the coordinating center: start, gateway, register-site, list-sites",
    ),
    "run": ("server.run_cli", "submit a federated run to a SuperLink and follow it"),
    "audit": ("server.audit_cli", "check a run's tamper-evident audit trail"),
    "monitor": (
        "simulations.monitor_cli",
        "watch a trained model at every site over time: drift, label-free estimates, alarms",
    ),
}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs (TOML values, like ``flwr run --run-config``) to a dict."""
    out: dict[str, Any] = {}
    for item in items:
        pairs = _PAIR.findall(item)
        leftover = _PAIR.sub("", item).strip()
        if leftover or not pairs:
            raise ConfigError(
                f"--run-config {item!r}: expected key=value pairs, e.g. train.lr=0.01"
            )
        for key, value in pairs:
            try:
                out[key] = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                out[key] = value  # a bare word is a string
    return out


_PAIR = re.compile(r"""([\w.\-]+)=('[^']*'|"[^"]*"|\S+)""")


def toml_value(value: Any) -> str:
    """A run-config value as Flower's --run-config parses it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The root parser with the groups of ``commands`` loaded (``None``: every group); the
    other commands are listed by name and help only."""
    parser = argparse.ArgumentParser(
        prog="hepafed", description="Federated multi-center learning for liver imaging."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = {COMMANDS[c][0] for c in (COMMANDS if commands is None else commands)
              if c in COMMANDS}  # fmt: skip
    loaded: set[str] = set()
    for name, (module, text) in COMMANDS.items():
        if module in wanted and module not in loaded:
            importlib.import_module(module).add_commands(sub)
            loaded.add(module)
        if name not in sub.choices:  # listed only: its group is not loaded
            sub.add_parser(name, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_in if not a.startswith("-")), None)
    args = build_parser([chosen] if chosen in COMMANDS else []).parse_args(args_in)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"hepafed: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
