"""The deployed-round benchmark's arithmetic and text (the measurement itself runs in
`hepafed bench --sections deploy`, on a real loopback deployment, not in CI)."""

from __future__ import annotations

import statistics
from pathlib import Path

from common.config import RunConfig
from simulations.bench_deploy import (
    _supernode_pulls,
    _task_phases,
    _task_seconds,
    deploy_markdown,
    deploy_target,
    flat_overrides,
)
from simulations.bench_measure import spread


def test_a_deployed_run_is_submitted_with_what_differs_from_the_app_defaults() -> None:
    cfg = RunConfig().replace(
        {"data.site-root": "/sims", "output.run-dir": "/r", "train.local-epochs": 3, "seed": 7}
    )
    flat = flat_overrides(cfg)
    # a SuperNode has its own folder; the run folder is set per run
    assert flat == {"train.local-epochs": 3, "seed": 7}


def test_task_times_are_read_from_the_executors_log_lines() -> None:
    logs = [
        "x task done in 4.25 s, exit code 0\ny task done in 9.00 s, exit code 1\n",
        "z task done in 3.5 s, exit code 0",
    ]
    assert _task_seconds(logs) == [4.25, 3.5]  # a failed task is not a per-message cost


def test_a_tasks_phases_are_the_medians_over_the_executors_log_lines() -> None:
    logs = [
        "a task phases: start 0.050 s, pull 0.100 s, load 0.300 s, app 2.000 s, push 0.020 s\n"
        "a task done in 2.6 s, exit code 0\n"
        "b task phases: start 0.070 s, pull 0.200 s, load 0.500 s, app 4.000 s, push 0.040 s",
        "c task phases: start 0.060 s, pull 0.900 s, load 0.400 s, app 1.000 s, push 0.030 s",
    ]
    assert _task_phases(logs) == {"start": 0.06, "pull": 0.2, "load": 0.4, "app": 2.0,
                                  "push": 0.03}  # fmt: skip
    assert _task_phases(["no task ran"]) == {}
    refused = "d task phases: start 0.100 s, pull 0.100 s, install 0.010 s, push 0.020 s"
    assert _task_phases([*logs, refused])["app"] == 2.0  # not pulled towards 0 by it


def test_the_supernodes_pulls_from_the_superlink_are_read_from_their_log_lines() -> None:
    """The lines ``client.supernode.log_object_pulls`` writes (the test of that function
    pins their form): medians over the messages."""
    logs = [
        "INFO :      Pulled 7 objects from the SuperLink in 0.450 s (7 requests, 1257374 "
        "bytes)\nINFO :      Pulled 7 objects from the SuperLink in 1.100 s (9 requests, "
        "1257374 bytes)\n",
        "Pulled 5 objects from the SuperLink in 0.300 s (5 requests, 2000 bytes)",
    ]
    got = _supernode_pulls(logs)
    assert got["messages"] == 3 and got["objects"] == 7 and got["requests"] == 7
    assert (got["seconds"]["median"], got["seconds"]["min"], got["seconds"]["max"]) == (
        0.45, 0.3, 1.1)  # fmt: skip
    assert _supernode_pulls(["no pull logged"]) == {}
    text = "\n".join(deploy_markdown({**_result([1.1]), "supernode_pulls": got}))
    assert ("from the SuperLink (`client.supernode`, 3 messages; a task's `message` phase "
            "waits for it): 0.45 (0.30-1.10) s for 7 objects in 7 requests") in text  # fmt: skip


def _result(ratios: list[float]) -> dict[str, object]:
    rounds = spread([2.0, 2.2, 2.4])
    return {
        "sites": 3, "rounds_per_run": 3, "runs": len(ratios), "setup_s": 41.0,
        "deployed_round_s": rounds, "simulated_round_s": spread([2.0, 2.1]),
        "deployed_run_s": spread([30.0]), "simulated_run_s": spread([25.0]),
        "task_s": spread([4.0, 5.0]), "tasks": 2, "pair_ratios": ratios,
        "ratio_spread": spread(ratios), "ratio": statistics.median(ratios),
        "deployed_phases_s": {"prepare": 0.1, "exchange": 2.0},
        "simulated_phases_s": {"prepare": 0.1, "exchange": 1.8, "finish": 0.05},
    }  # fmt: skip


def test_the_target_is_the_median_pair_ratio_against_1_2() -> None:
    met = deploy_target(_result([1.1, 1.3, 1.15, 1.0, 1.19]))
    assert met["met"] is True and met["value"].startswith("1.150 x (1.000-1.300, 5 pairs)")
    assert deploy_target(_result([1.25, 1.3, 1.1]))["met"] is False


def test_the_section_text_has_every_figure_and_consistent_tables() -> None:
    text = "\n".join(deploy_markdown(_result([1.1, 1.2])))
    assert "ratio: 1.150 (1.100-1.200)" in text
    assert "took 41 s, once" in text and "gone, 2 tasks): 4.50 (4.00-5.00) s" in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len({row.count("|") for row in rows}) == 1
    assert "| finish |  | 0.050 |" in text  # a phase one side lacks is left empty
    assert "where a task's time goes" not in text  # no executor phases: no line
    text = "\n".join(
        deploy_markdown({**_result([1.1]), "task_phases_s": {"pull": 0.1, "app": 2.5}})
    )
    assert "`client.task_phases.TaskPhases`): pull 0.100, app 2.500" in text


def test_stock_flowers_deployed_round_is_shown_beside_hepafeds() -> None:
    r = _result([1.1, 1.2])
    r.update({
        "stock_round_s": spread([1.5, 1.6]), "stock_run_s": spread([20.0]),
        "stock_pair_ratios": [1.4, 1.5], "stock_ratio_spread": spread([1.4, 1.5]),
        "stock_ratio": 1.45, "stock_phases_s": {"exchange": 1.4},
        "threads_per_site": 1,
    })  # fmt: skip
    text = "\n".join(deploy_markdown(r))
    assert "- stock Flower deployed round: 1.55 (1.50-1.60) s; hepafed deployed against it: " \
        "1.450 (1.400-1.500)" in text  # fmt: skip
    assert "each site's tasks use 1 torch thread(s)" in text
    assert "| exchange | 2.000 | 1.800 | 1.400 |" in text
    r["task_phases_s"] = {"pull": 0.2}
    lines = "\n".join(deploy_markdown(r)).splitlines()
    # the stock line sits with the round figures, before the runs; the phases after the tasks
    starts = ("- ratio", "- stock", "- whole run", "- one task", "- where a task")
    order = [next(i for i, x in enumerate(lines) if x.startswith(p)) for p in starts]
    assert order == sorted(order)


def test_the_stock_app_is_this_project_with_flowers_plain_apps_as_its_components(
    tmp_path: Path,
) -> None:
    import tomllib

    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from simulations import stock_deploy

    app = stock_deploy.stock_app(tmp_path / "app")
    components = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "components"
    ]
    assert components == {
        "serverapp": "simulations.stock_deploy:server_app",
        "clientapp": "simulations.stock_deploy:client_app",
    }
    assert isinstance(stock_deploy.server_app, ServerApp)
    assert isinstance(stock_deploy.client_app, ClientApp)
    assert (app / "client" / "app.py").is_file()  # the same data pipeline travels with it
