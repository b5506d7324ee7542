"""`hepafed study`: a resumable grid of training recipes x training seeds x scenarios.

A study file (TOML, ``simulations/studies/``) names variants (each a set of
run-config overrides), training seeds and scenarios. Every cell runs the same
driver as `hepafed simulate` (federation, local-only and pooled baselines) on the
scenario's phantom, whose seed is fixed: only the training ``seed`` varies.

Each finished cell appends one JSON line to the results file (append, flush,
fsync): the figures of issue 14's target table. A cell already recorded with the
same overrides is skipped, so a study can be stopped at any time and resumed in
a later session; a cell that crashed is recorded as failed, with its error, and
run again next time. ``study_report`` turns the file into the markdown report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import tomllib
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.config import ConfigError, RunConfig
from common.files import try_lock
from simulations.phantom import TRAINING_DATA_VERSION

log = logging.getLogger("hepafed.progress")

STUDIES_DIR = Path(__file__).parent / "studies"
OK, FAILED = "ok", "failed"
# cells recorded before the key named the phantom ran on generator 2.0 (no val split)
UNNAMED_PHANTOM = "2.0"


def phantom_of(record: Mapping[str, Any]) -> str:
    """The phantom generator version a results record ran on."""
    return str(record.get("phantom", UNNAMED_PHANTOM))


class StudyError(ValueError):
    """A study file is missing, malformed or names an invalid override."""


@dataclass(frozen=True)
class Variant:
    """A named training recipe: run-config overrides on top of the defaults."""

    name: str
    description: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Study:
    """A grid of variants x seeds x scenarios and where its results go."""

    name: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    scenarios: tuple[str, ...]
    results: Path
    report: str  # markdown path; "{scenario}" is replaced by each scenario's name
    description: str = ""


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a variant at one training seed on one scenario."""

    variant: Variant
    seed: int
    scenario: str
    quick: bool = False  # `hepafed simulate --quick` settings (a smoke test, not a result)
    phantom: str = TRAINING_DATA_VERSION  # the phantom data the cell trains and scores on

    @property
    def key(self) -> str:
        """What identifies the cell in the results file: names, seed, quick, the phantom's
        training-data version (new images or splits: every cell runs again) and the
        overrides' fingerprint, so a variant whose overrides change is run again."""
        text = json.dumps(self.variant.overrides, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        quick = "-quick" if self.quick else ""
        name = f"{self.variant.name}/seed-{self.seed}{quick}/{digest}"
        return f"{self.scenario}/phantom-{self.phantom}/{name}"


def load_study(path: str | Path, check: bool = True) -> Study:
    """Read a study file (a bundled name like ``stability`` or a TOML path); ``check``
    validates each variant's overrides as a run config (which imports torch, so the
    report, which only reads results, leaves it off)."""
    file = Path(path)
    if not file.suffix:
        file = STUDIES_DIR / f"{path}.toml"
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        bundled = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.toml")))
        raise StudyError(f"study {str(path)!r}: no file {file} (bundled: {bundled})") from None
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"study file {file}: {e}") from e
    unknown = set(doc) - {"name", "description", "seeds", "scenarios", "results", "report",
                          "variants"}  # fmt: skip
    if unknown:
        raise StudyError(f"study file {file}: unknown key(s) {sorted(unknown)}")
    variants = []
    for name, body in dict(doc.get("variants", {})).items():
        if not isinstance(body, dict) or set(body) - {"description", "overrides"}:
            raise StudyError(f"study file {file}: variant {name!r} takes description, overrides")
        overrides = dict(body.get("overrides", {}))
        try:
            if check:
                RunConfig().replace(overrides)
        except ConfigError as e:
            raise StudyError(f"study file {file}: variant {name!r}: {e}") from e
        variants.append(Variant(name, str(body.get("description", "")), overrides))
    seeds = tuple(doc.get("seeds", ()))
    if not variants or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StudyError(f"study file {file}: give at least one variant and integer seeds")
    return Study(
        name=str(doc.get("name", file.stem)),
        variants=tuple(variants),
        seeds=seeds,
        scenarios=tuple(doc.get("scenarios", ("liver-5",))),
        results=Path(doc.get("results", f"docs/results/{file.stem}-study.jsonl")),
        report=str(doc.get("report", f"docs/results/{file.stem}-{{scenario}}.md")),
        description=str(doc.get("description", "")),
    )


def select(
    study: Study,
    variants: Sequence[str] = (),
    seeds: Sequence[int] = (),
    scenarios: Sequence[str] = (),
) -> Study:
    """The study restricted to some of its variants, or run on other seeds or scenarios."""
    known = {v.name: v for v in study.variants}
    missing = [v for v in variants if v not in known]
    if missing:
        raise StudyError(f"--variants: {missing} not in study {study.name!r} ({sorted(known)})")
    return Study(
        study.name,
        tuple(known[v] for v in variants) if variants else study.variants,
        tuple(seeds) or study.seeds,
        tuple(scenarios) or study.scenarios,
        study.results,
        study.report,
        study.description,
    )


def cells(study: Study, quick: bool = False) -> Iterator[Cell]:
    """The grid, seed by seed, so an interrupted study has compared variants on the same
    seeds: scenario -> seed -> variant."""
    for scenario in study.scenarios:
        for seed in study.seeds:
            for variant in study.variants:
                yield Cell(variant, seed, scenario, quick)


# ---- the results file -------------------------------------------------------------------------


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a results file, in order (a line cut short by a crash is
    ignored: its cell counts as not done)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "key" in record:
            out.append(record)
    return out


def done_keys(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """Keys of cells whose latest record is a success."""
    latest = {str(r["key"]): r.get("status") for r in records}
    return {key for key, status in latest.items() if status == OK}


def append_result(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line durably (append, flush, fsync), after a newline if the file
    ends in a line a crash cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    with path.open("a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


class StudyBusy(FileExistsError):
    """Another process holds a study's results file (``results_lock``)."""


@contextmanager
def results_lock(path: Path, command: str = "hepafed study") -> Iterator[None]:
    """Hold ``path``'s lock (a ``.lock`` file beside it) while this process adds to it, or
    fail at once with ``StudyBusy`` if another process holds it: two runs of one grid would
    run the same cells for hours, and each would delete the run folder of a cell the other
    is running. The lock goes with the process (``flock``): a killed run leaves none."""
    held = try_lock(path.with_name(path.name + ".lock"))
    if held is None:
        raise StudyBusy(
            f"{path}: another `{command}` is running this study; wait for it, or stop it "
            "(its finished runs are kept) and run again"
        )
    with held:
        yield


# ---- running --------------------------------------------------------------------------------

Runner = Callable[[Cell, Path, Path], dict[str, Any]]  # (cell, data dir, run dir) -> figures


def run_study(
    study: Study,
    data_dir: Path = Path("data"),
    runs_dir: Path | None = None,
    quick: bool = False,
    runner: Runner | None = None,
    command: str = "",
    max_cells: int = 0,
    max_failures: int = 3,
) -> list[dict[str, Any]]:
    """Run every cell not yet in ``study.results``; the records written this time.

    ``max_cells`` > 0 stops after that many cells (a session's share of the grid).
    A cell that raises is recorded as failed and the study goes on with the next,
    unless ``max_failures`` cells in a row failed (0: never stop): then the code or
    the machine is broken, and the rest of the grid waits for the next run.
    ``StudyBusy`` if another process is running a study into the same results file.
    """
    run = runner or run_cell
    runs = runs_dir or Path("runs") / f"study-{study.name}"
    with results_lock(study.results):
        done = done_keys(read_results(study.results))
        grid = list(cells(study, quick))
        todo = [c for c in grid if c.key not in done]
        log.info("study %s: %d of %d cells done, %d to run", study.name, len(grid) - len(todo),
                 len(grid), len(todo))  # fmt: skip
        written: list[dict[str, Any]] = []
        in_a_row = 0
        for i, cell in enumerate(todo[:max_cells] if max_cells > 0 else todo, start=1):
            run_dir = runs / cell.scenario / cell.variant.name / f"seed-{cell.seed}"
            if cell.quick:
                run_dir = run_dir.with_name(run_dir.name + "-quick")
            if run_dir.exists():  # left by a cell that crashed or was stopped: start it afresh
                shutil.rmtree(run_dir)
            log.info("cell %d/%d: %s", i, len(todo), cell.key)
            record: dict[str, Any] = {
                "key": cell.key,
                "study": study.name,
                "variant": cell.variant.name,
                "seed": cell.seed,
                "scenario": cell.scenario,
                "quick": cell.quick,
                "phantom": cell.phantom,
                "overrides": cell.variant.overrides,
                "run_dir": str(run_dir),
                "command": command,
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "host_cpus": os.cpu_count(),
                "source": str(Path(__file__).resolve().parents[1]),  # the code tree that ran it
            }
            start = time.monotonic()
            try:
                figures = run(cell, data_dir, run_dir)
                record.update(status=OK, **figures)
            except Exception as e:  # one cell's crash is recorded; the grid goes on
                log.warning("cell %s failed: %r", cell.key, e)
                record.update(
                    status=FAILED, error=repr(e), traceback=traceback.format_exc()[-4000:]
                )
            record["wall_s"] = time.monotonic() - start
            append_result(study.results, record)
            written.append(record)
            in_a_row = in_a_row + 1 if record["status"] == FAILED else 0
            if max_failures and in_a_row >= max_failures:
                log.warning("study %s: %d cells in a row failed; stopping (run again to retry)",
                            study.name, in_a_row)  # fmt: skip
                break
        return written


def run_cell(cell: Cell, data_dir: Path, run_dir: Path) -> dict[str, Any]:
    """One `hepafed simulate` run of the cell and the figures the study reports."""
    from simulations.simulate import simulate

    summary = simulate(
        scenario=cell.scenario,
        data_dir=data_dir,
        run_dir=run_dir,
        overrides={**cell.variant.overrides, "seed": cell.seed},
        quick=cell.quick,
    )
    from simulations.study_figures import cell_figures

    return cell_figures(summary)
