"""`hepafed simulate --compare`: several methods on the same phantom, splits and seeds.

For each seed (``seed``, ``seed + 1``, ...) one Flower simulation runs every
method on the same hospitals (``server.method_runs``: methods that train alike
share one federation); the sites' summaries of all seeds become one
comparison (``server.report.comparison``), written as ``comparison.json`` and
``comparison.md`` in the output folder, with each seed's records in
``seed-SEED/`` (e.g. ``seed-2026/``). Per-round monitoring is off
(``eval.every-round = false``) unless the run config turns it on: only the final
models are compared.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from common.config import RunConfig
from server.designs import Evaluation
from server.method_runs import describe_method, method_config, serve_comparison
from server.records import read_config, read_evaluations
from server.report.comparison import build_comparison, comparison_markdown
from server.tracking import (
    ended,
    ending_in,
    log_comparison,
    parent_params,
    require_backend,
    start_parent,
)
from simulations.federated import run_federated
from simulations.simulate import (
    QUICK_OVERRIDES,
    any_scenario,
    phantom_path,
    scenario_config,
    write_phantom,
)

log = logging.getLogger("hepafed.progress")

DEFAULT_METHODS = ("fedavg", "fedprox", "fedbn", "silobn", "nyul", "bn-adapt", "tent", "finetune")


def compare(
    methods: Sequence[str],
    seeds: int = 3,
    scenario: str | Path = "liver-5",
    data_dir: Path = Path("data"),
    out_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    quick: bool = False,
    verbose: bool = False,
    command: str = "",
) -> dict[str, Any]:
    """Run the comparison; the comparison document (also written to ``out_dir``).

    ``command`` is the command line recorded in the document (how to rerun it)."""
    if seeds < 1:
        raise ValueError(f"--seeds = {seeds}: give at least 1 (3 or more for a spread)")
    names = list(dict.fromkeys(m.strip() for m in methods if m.strip()))
    if not names:
        raise ValueError("--compare names no method; e.g. --compare fedavg,fedbn,bn-adapt")
    require_backend(RunConfig().replace(dict(overrides or {})))
    spec = any_scenario(scenario)
    out_dir = out_dir or Path("runs") / f"compare-{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    settings = {
        "eval.every-round": False,
        **(QUICK_OVERRIDES if quick else {}),
        **(overrides or {}),
    }
    base = scenario_config(spec, phantom_path(spec, data_dir), data_dir, out_dir, settings)
    for name in names:  # a typo fails before any phantom is generated or model trained
        try:
            method_config(base, name)
        except ValueError as e:
            raise ValueError(f"--compare method {name!r}: {e}") from e
    write_phantom(spec, data_dir)
    if base.eval.design != "holdout":
        raise ValueError(
            f"eval.design = {base.eval.design.value!r}: --compare evaluates the holdout design"
        )
    per_seed: dict[int, list[Evaluation]] = {}
    hooks: dict[str, list[str]] = {}
    runs: dict[int, Path] = {}
    # tracking.backend: one parent run here, each seed's run its child
    with ended(start_parent(base, out_dir)) as parent:
        parent.log_config(parent_params(base.to_flat()), {"hepafed.methods": ",".join(names)})
        for i in range(seeds):
            seed = base.seed + i
            run_dir = runs[seed] = (out_dir / f"seed-{seed}").resolve()
            cfg = base.replace({"seed": seed, "output.run-dir": str(run_dir)})
            configs = {name: method_config(cfg, name) for name in names}
            hooks = hooks or {n: describe_method(c, cfg) for n, c in configs.items()}
            log.info("seed %d (%d of %d): %s", seed, i + 1, seeds, ", ".join(names))
            with ending_in(cfg, run_dir):
                body = partial(serve_comparison, methods=configs)
                run_federated(cfg, verbose=verbose, body=body)
            per_seed[seed] = [Evaluation.from_dict(d) for d in read_evaluations(run_dir)]
        doc = write_comparison(out_dir, per_seed, hooks, base.to_flat(), spec.name, command)
        log_comparison(parent, out_dir, doc, runs)
    return doc


def write_comparison(
    out_dir: Path,
    per_seed: Mapping[int, Sequence[Evaluation]],
    hooks: Mapping[str, Sequence[str]],
    config: Mapping[str, Any],
    scenario: str,
    command: str,
) -> dict[str, Any]:
    """Build the comparison and write comparison.json and comparison.md to ``out_dir``."""
    doc = build_comparison(per_seed, hooks, config)
    doc["scenario"] = scenario
    doc["command"] = command
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(doc, indent=2) + "\n")
    title = f"Domain-adaptation methods on {scenario}"
    (out_dir / "comparison.md").write_text(comparison_markdown(doc, title, command))
    doc["out_dir"] = str(out_dir)
    return doc


def rebuild_comparison(out_dir: Path) -> dict[str, Any]:
    """Recompute a comparison from its seeds' ``evaluations.json`` (``hepafed report``)."""
    previous = json.loads((out_dir / "comparison.json").read_text(encoding="utf-8"))
    per_seed = {
        int(seed): [Evaluation.from_dict(d) for d in read_evaluations(out_dir / f"seed-{seed}")]
        for seed in previous["seeds"]
    }
    config = read_config(out_dir / f"seed-{previous['seeds'][0]}")["config"]
    hooks = {name: m["hooks"] for name, m in previous["methods"].items()}
    return write_comparison(
        out_dir, per_seed, hooks, config, previous["scenario"], previous["command"]
    )
