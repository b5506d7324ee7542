"""The simulation commands of ``hepafed``: simulate (and --compare), study, ablate, report,
bench, phantom (the root parser is ``common.cli``)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from common.cli import EXIT_OK, parse_overrides
from common.config import ConfigError
from common.keys import EvalDesign, MetricKey
from simulations.phantom_cli import add_phantom_command


class _ProgressHandler(logging.Handler):
    """Prints progress lines with the elapsed wall time."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        elapsed = time.monotonic() - self.start
        print(f"[{elapsed:6.1f}s] {record.getMessage()}", file=sys.stderr, flush=True)


def _show_progress() -> None:
    logger = logging.getLogger("hepafed.progress")
    logger.setLevel(logging.INFO)
    logger.addHandler(_ProgressHandler())
    logger.propagate = False


def _fmt_auc(metrics: dict[str, float]) -> str:
    if MetricKey.AUC not in metrics:
        return "n/a"
    text = f"{metrics[MetricKey.AUC]:.3f}"
    if MetricKey.AUC_VAR in metrics:
        from common.stats import AUCResult

        lo, hi = AUCResult(metrics[MetricKey.AUC], metrics[MetricKey.AUC_VAR], 0, 0).ci()
        text += f" [{lo:.3f}, {hi:.3f}]"
    elif "models" in metrics:
        text += f" (mean of {int(metrics['models'])})"
    return text


def cmd_compare(args: argparse.Namespace) -> int:
    from simulations.compare import compare

    _show_progress()
    from simulations.compare import DEFAULT_METHODS

    methods = DEFAULT_METHODS if args.compare == "default" else args.compare.split(",")
    doc = compare(
        methods=methods,
        seeds=3 if args.seeds is None else args.seeds,
        scenario=args.scenario,
        data_dir=Path(args.data_dir),
        out_dir=Path(args.out) if args.out else None,
        overrides=parse_overrides(args.run_config),
        quick=args.quick,
        verbose=args.verbose,
        command="hepafed " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    out = Path(doc["out_dir"])
    text = (out / "comparison.md").read_text(encoding="utf-8")
    print()
    print(text.split("\n## ")[0].rstrip())
    print(f"\ncomparison: {out / 'comparison.md'} and comparison.json")
    return EXIT_OK


def _simulation(args: argparse.Namespace) -> dict[str, Any]:
    """What ``hepafed simulate`` hands every simulation, whether one run or several seeds."""
    return {
        "scenario": args.scenario,
        "data_dir": Path(args.data_dir),
        "overrides": parse_overrides(args.run_config),
        "quick": args.quick,
        "verbose": args.verbose,
        "design": args.design,
    }


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    if args.ray_address:  # every simulation of this command (seeds, compare) runs there
        from simulations.federated import RAY_ADDRESS_ENV

        os.environ[RAY_ADDRESS_ENV] = args.ray_address
    if args.compare:
        if args.design not in (None, EvalDesign.HOLDOUT.value):
            raise ConfigError("--compare evaluates the holdout design; drop --design")
        return cmd_compare(args)
    if args.seeds is not None and args.seeds != 1:
        return cmd_seeds(args)
    _show_progress()
    summary = simulate(run_dir=Path(args.out) if args.out else None, **_simulation(args))
    from server.report.terminal import format_summary

    print()
    print(format_summary(summary.report))
    if not summary.rows:
        return _print_footer(summary)
    header = ("site", "role", "n test", "federated AUC [95% CI]", "local-only AUC", "pooled AUC")
    rows = [
        (
            r.site,
            r.role,
            str(r.n_test),
            _fmt_auc(r.federated),
            _fmt_auc(r.local_only),
            _fmt_auc(r.pooled),
        )
        for r in summary.rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if summary.pooled_internal:
        print(
            "\npooled model on all training sites' test cases: "
            f"AUC {_fmt_auc(summary.pooled_internal)}"
        )
    return _print_footer(summary)


def cmd_seeds(args: argparse.Namespace) -> int:
    """``hepafed simulate --seeds N``: N training seeds, one report with training noise."""
    from server.report.terminal import format_summary
    from simulations.seeds import simulate_seeds

    _show_progress()
    out = Path(args.out) if args.out else None
    result = simulate_seeds(args.seeds, out_dir=out, **_simulation(args))
    print()
    print(format_summary(result.report))
    reused = [s for s in result.seeds if s not in result.ran]
    if reused:
        print(f"\nseeds {', '.join(map(str, reused))}: reused from their folders")
    print(f"\nseeds {', '.join(map(str, result.seeds))}: one run each in {result.out_dir}/seed-*")
    print(f"run folder: {result.out_dir} (report.html, report.json: all seeds combined)")
    return EXIT_OK


def _print_footer(summary: Any) -> int:
    s = summary.seconds
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in s.items() if k != "total")
    print(f"\nscenario {summary.scenario}: total {s['total']:.0f}s ({parts})")
    print(f"run folder: {summary.run_dir} (report.html, report.json)")
    return EXIT_OK


def cmd_ablate(args: argparse.Namespace) -> int:
    import json

    from simulations.ablation import ablate, ablation_markdown

    work = Path(args.work_dir or f"runs/ablate-{args.site}")
    rows = ablate(
        args.scenario,
        args.site,
        Path(args.checkpoint),
        work,
        reference=args.reference,
        hooks=[h for h in args.hooks.split(",") if h],
    )
    work.mkdir(parents=True, exist_ok=True)
    (work / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(ablation_markdown(rows), end="")
    print(f"\nablation: {work / 'ablation.json'}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from server.report.files import load_report, render
    from server.report.terminal import format_summary

    folder = Path(args.run_dir)
    if (folder / "comparison.json").is_file():  # a --compare folder
        from simulations.compare import rebuild_comparison

        doc = rebuild_comparison(folder)
        print(f"comparison of {len(doc['methods'])} methods: {folder / 'comparison.md'}")
        return EXIT_OK
    from server.report.training_noise import seed_dirs, write_combined_report

    seeds = seed_dirs(folder) if folder.is_dir() else []
    if len(seeds) >= 2:  # a --seeds folder: combine its seeds' reports again
        report = write_combined_report(folder, seeds)
        print(format_summary(report))
        print(f"\nreport combining seeds {', '.join(str(s) for s, _ in seeds)}: "
              f"{folder / 'report.html'}")  # fmt: skip
        return EXIT_OK
    report = load_report(args.run_dir)
    html = render(args.run_dir)
    print(format_summary(report))
    print(f"\nreport: {html}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from simulations.bench import SECTIONS, run_bench

    sections = [s.strip() for s in args.sections.split(",")] if args.sections else list(SECTIONS)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    run_bench(
        out,
        quick=args.quick,
        repeats=args.repeats,
        sections=sections,
        data_dir=Path(args.data_dir),
        overrides=parse_overrides(args.run_config),
        progress=lambda line: print(line, flush=True),
        seeds=args.seeds,
    )
    print((out / "bench.md").read_text(encoding="utf-8").split("\n## ")[1].rstrip())
    print(f"\nfigures: {out / 'bench.md'} and bench.json")
    return EXIT_OK


def cmd_study(args: argparse.Namespace) -> int:
    """Run a study grid (resumable), or with --report write its markdown report."""
    from dataclasses import replace

    from simulations.study import load_study, run_study, select

    def items(text: str) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()]

    try:
        seeds = [int(s) for s in items(args.seeds)]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    study = select(
        load_study(args.study, check=not args.report),
        items(args.variants),
        seeds,
        items(args.scenarios),
    )
    if args.results:  # its report goes next to it
        results = Path(args.results)
        report = str(results.with_name(f"{study.name}-{{scenario}}.md"))
        study = replace(study, results=results, report=report)
    if not args.report:
        _show_progress()
        written = run_study(
            study,
            data_dir=Path(args.data_dir),
            runs_dir=Path(args.runs_dir) if args.runs_dir else None,
            quick=args.quick,
            command="hepafed " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            max_cells=args.max_cells,
            max_failures=args.max_failures,
        )
        failed = [r["key"] for r in written if r["status"] != "ok"]
        print(f"study {study.name}: {len(written)} cell(s) run, {len(failed)} failed "
              f"-> {study.results}")  # fmt: skip
        for key in failed:
            print(f"  failed: {key}", file=sys.stderr)
    from simulations.study_report import write_reports

    for path in write_reports(study):
        print(f"report: {path}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the simulation commands to the root's subparsers (``common.cli``)."""
    p = sub.add_parser("simulate", help="simulate a multi-hospital federation with baselines")
    p.add_argument("--scenario", default="liver-5", help="bundled name or TOML path")
    p.add_argument("--quick", action="store_true", help="3 rounds of 1 epoch")
    p.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    p.add_argument("--data-dir", default="data", help="phantom and cache folder")
    p.add_argument("--out", help="run folder (default runs/simulate-<scenario>-<time>)")
    p.add_argument("--verbose", action="store_true", help="show Flower's own logs")
    p.add_argument(
        "--design",
        choices=[d.value for d in EvalDesign],
        default=None,
        help="evaluation design (default: eval.design, holdout)",
    )
    p.add_argument(
        "--compare",
        nargs="?",
        const="default",
        metavar="METHODS",
        help="comma-separated methods to compare on the same splits and seeds, e.g. "
        "fedavg,fedprox,fedbn,silobn,nyul,bn-adapt,tent,finetune (the default when "
        "no list is given); a method is "
        "'+'-joined hook names, strategy names and 'finetune' (docs/hooks.md)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="training seeds (seed, seed+1, ...) on the same phantom and splits: one report "
        "with each figure's between-seed spread and an interval that includes training "
        "noise (5 or more for reliable intervals); with --compare, seeds per method "
        "(default 3)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="run the simulated sites on the existing Ray cluster whose head is there "
        "(default: the RAY_ADDRESS environment variable, else a Ray of this machine's own; "
        "'local' forces that); every node needs hepafed and the data at the same path: "
        "docs/cluster.md",
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "ablate",
        help="which acquisition factor of a phantom hospital degrades a trained model",
    )
    p.add_argument("--scenario", default="liver-5", help="bundled name or TOML path")
    p.add_argument("--site", required=True, help="the hospital to ablate (e.g. the external one)")
    p.add_argument("--checkpoint", required=True, help="a run's checkpoint*.pt to score")
    p.add_argument("--reference", default="", help="hospital whose values are restored")
    p.add_argument("--hooks", default="", help="hooks.use for scoring, e.g. bn-adapt")
    p.add_argument("--work-dir", help="where variants are written (default runs/ablate-SITE)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser(
        "report",
        help="re-render a run's report.html from its report.json; a --seeds folder's "
        "combined report, or a --compare folder's comparison, from its seeds",
    )
    p.add_argument("run_dir", help="run folder holding report.json (or the file itself)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "bench", help="measure round overhead, aggregation, throughput and scaling (docs/results)"
    )
    p.add_argument("--quick", action="store_true", help="tiny configuration (the smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="runs per timing (default 3; quick 1)")
    p.add_argument("--sections", default="", help="comma-separated subset of the sections")
    p.add_argument("--out", default="docs/results", help="folder for bench.json and bench.md")
    p.add_argument("--data-dir", default="data", help="phantom and cache folder")
    p.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="training seeds of the simulate section (default: as many as OUT's "
        "bench-simulate-runs.jsonl holds, at least 5; only runs it lacks are run)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "study",
        help="a resumable grid of training recipes x seeds x scenarios (simulations/studies)",
    )
    p.add_argument("study", nargs="?", default="stability", help="bundled name or TOML path")
    p.add_argument("--report", action="store_true", help="only write the markdown report(s)")
    p.add_argument("--variants", default="", help="comma-separated subset of the variants")
    p.add_argument("--seeds", default="", help="comma-separated training seeds (default: file)")
    p.add_argument("--scenarios", default="", help="comma-separated scenarios (default: file)")
    p.add_argument("--quick", action="store_true", help="simulate --quick cells (smoke test)")
    p.add_argument(
        "--results",
        default="",
        help="results JSONL (default: the study file's; the report is then written next to it)",
    )
    p.add_argument("--max-cells", type=int, default=0, help="stop after this many cells")
    p.add_argument(
        "--max-failures", type=int, default=3, help="stop after this many failed cells in a row"
    )
    p.add_argument("--data-dir", default="data", help="phantom and cache folder")
    p.add_argument("--runs-dir", default="", help="run folders (default runs/study-NAME)")
    p.set_defaults(func=cmd_study)
    add_phantom_command(sub)
