"""``hepafed monitor``: watch a finished run's model at every site, window by window.

In simulation (the default) the sites are the phantom hospitals of ``--scenario`` (or of
the training run's ``data.site-root``), each a simulated SuperNode running the hospital's
ClientApp; with ``--deployed`` the same ServerApp design runs on a deployed federation
(``hepafed run``'s path) and this command waits for it. Either way the server's ``monitor``
design (``server.monitoring.design``) writes ``monitor.json`` and ``monitor.html`` into the
model's monitoring folder.

Exit status, for a scheduler (cron, a systemd timer, the compose file) to act on:

- 0: every window ran and no alarm or notice fell in them;
- 1: the monitoring failed to run (a site's reply missing or refused, a bad training run,
  a window that changed without ``--replace``) and raised nothing: nothing about the
  model's health is said (an alarm or notice raised where another site failed still
  gives 3 or 4, with the failures listed);
- 2: the command line is wrong;
- 3: a performance alarm fell in one of the windows run now;
- 4: only drift notices (the images changed; no performance alarm).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.cli import EXIT_OK, EXIT_PROBLEMS, parse_overrides
from common.config import ConfigError

EXIT_ALARM, EXIT_DRIFT = 3, 4
STATUS_EXIT = {"none": EXIT_OK, "performance": EXIT_ALARM, "drift": EXIT_DRIFT}


def monitor_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config keys of a monitoring invocation from the command line."""
    run = Path(args.run).resolve()
    out: dict[str, Any] = {
        "eval.design": "monitor",
        "monitor.model-run": str(run),
        "monitor.windows": args.windows,
        "monitor.folder": str(Path(args.folder).resolve()) if args.folder else "",
        "monitor.as-of": args.as_of or "",
        "monitor.replace": bool(args.replace),
        "monitor.reason": args.reason or "",
    }
    for item in args.run_config:
        out.update(parse_overrides([item]))
    return out


def _default_out(folder: Path) -> Path:
    from datetime import UTC, datetime

    return folder / "invocations" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}"


def monitor_simulated(
    settings: dict[str, Any], site_root: str, cache: str, out: Path, verbose: bool = False
) -> Path:
    """The monitoring design (run-config ``settings``, ``monitor_overrides``) in Flower's
    simulation engine over the sites under ``site_root``; the invocation's run folder."""
    from common.config import RunConfig
    from server.app import serve
    from simulations.federated import run_federated

    cfg = RunConfig().replace(
        {
            **settings,
            "data.site-root": site_root,
            "data.cache-dir": cache,
            "output.run-dir": str(out),
        }
    )
    errors: list[BaseException] = []

    def body(grid: Any, run_cfg: RunConfig) -> None:
        try:
            serve(grid, run_cfg)
        except Exception as e:  # raised again below, outside Flower's simulation
            errors.append(e)

    run_federated(cfg, verbose=verbose, body=body)
    if errors:
        raise errors[0]
    return out


def run_simulated(args: argparse.Namespace) -> Path:
    """``hepafed monitor`` in simulation: the scenario's phantom (or the run's site root)."""
    from common.run_files import read_config
    from simulations.simulate import prepare_phantom

    settings = monitor_overrides(args)
    training = read_config(args.run)["config"]
    if args.scenario:
        _, phantom_dir = prepare_phantom(args.scenario, Path(args.data_dir))
        site_root = str(phantom_dir.resolve())
        cache = str((Path(args.data_dir) / "cache" / phantom_dir.name).resolve())
    else:
        site_root, cache = training["data.site-root"], training.get("data.cache-dir", "")
    folder = Path(settings["monitor.folder"] or Path(args.run) / "monitor")
    out = Path(args.out).resolve() if args.out else _default_out(folder.resolve())
    return monitor_simulated(settings, site_root, cache, out, args.verbose)


def run_deployed(args: argparse.Namespace) -> Path:
    """The monitoring design submitted to a SuperLink (``hepafed run``'s path: the app
    folder every site approved, the federation's keyring to sign with)."""
    from server.cli import connection
    from server.deploy import RunRequest, submit_run
    from server.run_cli import default_app_dir, run_overrides

    settings = monitor_overrides(args)
    if not args.out:
        raise ConfigError(
            "--deployed needs --out: the invocation's run folder at the coordinating "
            "center (an absolute path the ServerApp writes and this command reads)"
        )
    settings["output.run-dir"] = str(Path(args.out).resolve())
    given = [" ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())]
    request = argparse.Namespace(run_config=given, resume=None, seeds=None, keyring=args.keyring)
    app = Path(args.app).resolve() if args.app else default_app_dir()
    outcome = submit_run(connection(args), RunRequest(app, tuple(run_overrides(request))))
    if not outcome.completed:
        raise RuntimeError(f"the monitoring run did not complete: {outcome.status}")
    return Path(args.out)


def cmd_monitor(args: argparse.Namespace) -> int:
    """Run the monitoring, print the summary and return the exit status (module docstring)."""
    try:
        out = run_deployed(args) if args.deployed else run_simulated(args)
        outcome = json.loads((out / "monitor-run.json").read_text(encoding="utf-8"))
    except (ConfigError, OSError, ValueError, RuntimeError, KeyError) as e:
        print(f"monitor: failed to run: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    from server.monitoring.terminal import summary_text

    doc = json.loads((Path(outcome["folder"]) / "monitor.json").read_text(encoding="utf-8"))
    print(summary_text(doc))
    for window, sites in sorted(outcome["failed"].items()):
        for site, why in sorted(sites.items()):
            print(f"monitor: {window} at {site} failed: {why}", file=sys.stderr)
    print(f"monitor.json and monitor.html in {outcome['folder']}; this run's record in {out}")
    if outcome["failed"] and outcome["status"] != "failed":
        print("monitor: an alarm or notice above, and sites that failed (listed above)",
              file=sys.stderr)  # fmt: skip
    return EXIT_PROBLEMS if outcome["status"] == "failed" else STATUS_EXIT[outcome["status"]]


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``hepafed monitor`` to the root's subparsers (``common.cli``)."""
    from server.cli import add_connection_args

    p = sub.add_parser(
        "monitor",
        help="watch a trained model at every site over time: drift, label-free estimates, alarms",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="the finished training run's folder")
    p.add_argument(
        "--windows", required=True, help="months FIRST..LAST (e.g. 2024-07..2025-12) or a list"
    )
    p.add_argument(
        "--as-of",
        help="labels known by this day, a month's last day YYYY-MM-DD (default: the end of "
        "last month)",
    )
    p.add_argument("--folder", help="the model's monitoring folder (default RUN/monitor)")
    p.add_argument("--out", help="this invocation's run folder (default FOLDER/invocations/TIME)")
    p.add_argument("--scenario", help="simulation: the phantom (default: the run's site root)")
    p.add_argument("--data-dir", default="data", help="simulation: phantom and cache folder")
    p.add_argument("--replace", action="store_true", help="supersede windows that changed")
    p.add_argument("--reason", help="why windows are replaced (kept on the chain)")
    p.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    p.add_argument("--verbose", action="store_true", help="show Flower's own logs")
    p.add_argument(
        "--deployed",
        action="store_true",
        help="run on the deployed federation (--superlink, --ca) instead of simulating",
    )
    p.add_argument("--app", help="deployed: the Flower app folder (default: this project)")
    p.add_argument("--keyring", help="deployed: the federation's keyring (signs the model)")
    add_connection_args(p)
    p.set_defaults(func=cmd_monitor)
