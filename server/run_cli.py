"""The operator's ``hepafed run``: submit this project's app to a SuperLink, follow it,
and say where the report is (``--resume`` continues a run from its last round)."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from common.app_bundle import bundle_sha256
from common.cli import EXIT_OK, EXIT_PROBLEMS, parse_overrides, toml_value
from common.signing import UNSIGNED_WARNING
from server.cli import add_connection_args, connection
from server.deploy import RunRequest, submit_run

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_app_dir() -> Path:
    """The Flower app folder: this project's root (holding pyproject.toml) or the cwd."""
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()


def run_dir_of(app_dir: Path, run_config: list[str]) -> str:
    """``output.run-dir`` of a run: the last override, else the app's default."""
    overrides: dict[str, Any] = parse_overrides(run_config) if run_config else {}
    if "output.run-dir" in overrides:
        return str(overrides["output.run-dir"])
    pyproject = tomllib.loads((app_dir / "pyproject.toml").read_text())
    app_cfg = pyproject.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    return str(app_cfg.get("output", {}).get("run-dir", "runs/flwr"))


def cmd_run(args: argparse.Namespace) -> int:
    """Submit this project's app to a SuperLink, follow its log, report where results are."""
    control = connection(args)
    app_dir = Path(args.app).resolve() if args.app else default_app_dir()
    run_config = run_overrides(args)
    run_dir = run_dir_of(app_dir, run_config)
    if args.seeds is not None and args.seeds != 1:
        return _run_seeds(args.seeds, control, app_dir, run_config, run_dir)
    print(f"app bundle sha256 {bundle_sha256(str(app_dir))}: every site must have approved it "
          "(`hepafed site approve-app`), or it refuses the run's tasks", flush=True)  # fmt: skip
    outcome = submit_run(control, RunRequest(app_dir, tuple(run_config)))
    print()
    if outcome.run_id is None:
        print(f"run not submitted: {outcome.status}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"run {outcome.run_id}: {outcome.status}")
    where = (
        run_dir
        if Path(run_dir).is_absolute()
        else (f"{run_dir} (relative to the folder `hepafed server start` was run in)")
    )
    print(f"run folder at the coordinating center: {where}")
    print("  report.json, report.html, rounds.jsonl, evaluations.json, checkpoint.pt")
    return EXIT_OK if outcome.completed else EXIT_PROBLEMS


def _run_seeds(count: int, control: Any, app_dir: Path, run_config: list[str], run_dir: str) -> int:
    """``hepafed run --seeds N``: the same run with N training seeds, one after another,
    each in RUN_DIR/seed-SEED; then one report combining them (``hepafed report``)."""
    from common.config import RunConfig
    from server.records import read_config
    from server.report.training_noise import seed_dirs, seed_list, write_combined_report
    from server.tracking import TrackingRun, ended, parent_params, start_parent

    given = parse_overrides(run_config) if run_config else {}
    base = RunConfig().replace(given)
    seeds = seed_list(base.seed, count)
    out = Path(run_dir)
    # at the coordinating center (an absolute RUN_DIR this machine holds, as the combined
    # report needs): one tracking parent there, each seed's ServerApp run its child
    here = out.is_absolute() and (out.exists() or out.parent.is_dir())
    with ended(start_parent(base, out) if here else TrackingRun()) as parent:
        for i, seed in enumerate(seeds):
            folder = f"{run_dir}/seed-{seed}"
            print(f"seed {seed} ({i + 1} of {count}): run folder {folder}", flush=True)
            pinned = f"seed={seed} output.run-dir={toml_value(folder)}"
            outcome = submit_run(control, RunRequest(app_dir, (*run_config, pinned)))
            if not outcome.completed:
                done = ", ".join(map(str, seeds[:i])) or "none"
                print(f"seed {seed}: run {outcome.run_id} {outcome.status}; seeds done: {done}",
                      file=sys.stderr)  # fmt: skip
                return EXIT_PROBLEMS
            print(f"seed {seed}: run {outcome.run_id} {outcome.status}")
        runs = [(seed, d) for seed, d in seed_dirs(out) if seed in seeds]
        if here and len(runs) == count:
            write_combined_report(out, runs)
            if base.tracking.backend != "none":  # the seeds' shared config, the figures
                seeds_tag = {"hepafed.seeds": ",".join(map(str, seeds))}
                parent.log_config(parent_params(read_config(runs[0][1])["config"]), seeds_tag)
                parent.log_report(out)
            print(f"report combining seeds {', '.join(map(str, seeds))}: {out}/report.html")
        else:
            print(f"run folders {run_dir}/seed-* at the coordinating center; there, "
                  f"`hepafed report {run_dir}` writes the report combining the seeds")  # fmt: skip
    return EXIT_OK


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The run-config overrides ``hepafed run`` submits: ``--resume`` takes the run's own
    config from RUN_DIR/config.json; ``--keyring`` sets ``trust.keys-dir``. A deployment
    without a keyring must say ``trust.sign-updates=false`` (and is warned)."""
    overrides: list[str] = list(args.run_config)
    if args.resume and getattr(args, "seeds", None) not in (None, 1):
        raise ValueError(
            "--resume continues one run: resume each seed's folder on its own "
            "(--resume RUN_DIR/seed-SEED), then `hepafed report RUN_DIR` combines them"
        )
    if args.resume:
        config = Path(args.resume) / "config.json"
        try:
            recorded = json.loads(config.read_text())["config"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"--resume {args.resume}: cannot read {config} ({e})") from e
        recorded.update({"output.run-dir": str(Path(args.resume).resolve()),
                         "output.resume": True})  # fmt: skip
        overrides = [" ".join(f"{k}={toml_value(v)}" for k, v in sorted(recorded.items()))]
    if args.keyring:
        overrides.append(f"trust.keys-dir={toml_value(str(Path(args.keyring).resolve()))}")
    given = parse_overrides(overrides) if overrides else {}
    if given.get("trust.sign-updates") is False:
        print(f"warning: {UNSIGNED_WARNING}", file=sys.stderr)
    elif not given.get("trust.keys-dir"):
        raise ValueError(
            "a deployed run needs the federation's keyring to sign models and check site "
            "signatures: give --keyring DIR (from `hepafed certs init --keyring`), or "
            "--run-config 'trust.sign-updates=false' to run unsigned (not for patient data)"
        )
    return overrides


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``run`` to the root's subparsers (``common.cli``)."""
    p = sub.add_parser("run", help="submit a federated run to a SuperLink and follow it")
    add_connection_args(p)
    p.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    p.add_argument("--app", help="the Flower app folder (default: this project)")
    p.add_argument("--keyring", help="the federation's keyring (server signing key, site keys)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR (its own run config) from its last completed round",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="run N times with training seeds seed, seed+1, ... (RUN_DIR/seed-SEED) and "
        "write one report with each figure's training noise (5 or more seeds)",
    )
    p.set_defaults(func=cmd_run)
