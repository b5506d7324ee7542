"""A real deployment on loopback: SuperLink + 3 SuperNodes with TLS and site authentication.

Everything goes through the ``hepafed`` command line a hospital IT team and the
coordinating center would use: ``certs init``, ``site init``, ``server
register-site``, ``server start``, ``site start``, ``run`` and ``monitor``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.deploy import ControlConnection, list_nodes
from tests.deploy import (
    DATED_CASES,
    HEPAFED,
    RUN_CONFIG,
    Processes,
    approve_app,
    check_completed_run,
    check_monitoring,
    dated_site,
    free_port,
    hepafed,
    monitor_args,
    netns_available,
    requires_nginx,
    set_site_policy,
    snapshot_app,
    wait_until,
    watched_model,
)

SITES = ("site-a", "site-b", "site-c")
pytestmark = requires_nginx()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Every process a test starts; all of them are stopped even when the test fails."""
    procs = Processes(tmp_path / "logs")
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.mark.slow
@pytest.mark.skipif(
    netns_available(),
    reason="test_netns.py runs this federation (and more) across network namespaces",
)
def test_two_round_deployment_with_tls_and_site_auth(
    tmp_path: Path, processes: Processes, site_factory: Callable[..., Path]
) -> None:
    started = time.monotonic()
    center = tmp_path / "center"
    certs = center / "certs"
    keyring = center / "keyring"
    out = hepafed(
        "certs", "init", "--out", str(certs), "--host", "127.0.0.1", "--host", "localhost",
        "--keyring", str(keyring),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ca = certs / "ca.pem"
    assert (certs / "server.key").stat().st_mode & 0o777 == 0o600

    data = {
        name: dated_site(site_factory(name, n_cases=DATED_CASES, seed=i))
        for i, name in enumerate(SITES)
    }
    keys: dict[str, Path] = {}
    for name in SITES:
        keys[name] = tmp_path / "hospitals" / name
        out = hepafed("site", "init", name, "--out", str(keys[name]))
        assert out.returncode == 0, out.stderr
        set_site_policy(keys[name], {"min-cases": 8, "min-per-class": 3})
        assert (keys[name] / "site_key").stat().st_mode & 0o777 == 0o600

    port, control_port = free_port(), free_port()
    fleet, superlink = f"127.0.0.1:{port}", f"127.0.0.1:{control_port}"
    processes.start(
        "superlink",
        [
            HEPAFED, "server", "start", "--certs", str(certs), "--state", str(center / "state"),
            "--host", "127.0.0.1", "--port", str(port), "--control-port", str(control_port),
        ],
        cwd=center,
    )  # fmt: skip
    assert processes.wait_for_log("superlink", "Application startup complete", 90), processes.log(
        "superlink"
    )

    pubkeys = [str(keys[n] / "site_key.pub") for n in SITES]
    out = hepafed(
        "server", "register-site", *pubkeys, "--superlink", superlink, "--ca", str(ca),
        "--keyring", str(keyring),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    for name in SITES:
        assert f"{name}: registered" in out.stdout

    app = snapshot_app(tmp_path / "app")
    approve_app(app, *keys.values())
    for name in SITES:
        processes.start(
            name,
            [
                HEPAFED, "site", "start", "--site-dir", str(data[name]), "--keys", str(keys[name]),
                "--superlink", fleet, "--ca", str(ca), "--runtime-port", str(free_port()),
                "--flwr-home", str(keys[name] / "flwr-home"),
                "--server-key", str(keyring / "server.pub"),
                "--threads", "1",  # three sites share this machine's cores
            ],
        )  # fmt: skip
    connection = ControlConnection(superlink, ca)
    assert wait_until(
        lambda: sum(n["status"] == "online" for n in list_nodes(connection)) == len(SITES), 120
    ), "\n".join(processes.log(n)[-2000:] for n in SITES)

    run_dir = tmp_path / "run"
    run_config = f"{RUN_CONFIG} federation.expected-sites=3 output.run-dir='{run_dir}'"
    out = hepafed(
        "run", "--superlink", superlink, "--ca", str(ca), "--run-config", run_config,
        "--app", str(app), "--keyring", str(keyring), timeout=900,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert out.returncode == 0, log + processes.log("superlink")[-4000:]
    assert "finished:completed" in log
    assert f"run folder at the coordinating center: {run_dir}" in log

    check_completed_run(run_dir, keyring, SITES)

    # monitoring on the same federation: two months of a model without local layers
    watched = watched_model(data["site-a"].parent, tmp_path / "watched")
    monitor_run = tmp_path / "monitor-run"
    args = monitor_args(superlink, ca, keyring, app, watched, monitor_run, len(SITES))
    out = hepafed(*args, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr + processes.log("superlink")[-4000:]
    check_monitoring(out.stdout, watched, monitor_run, SITES)

    elapsed = time.monotonic() - started
    print(f"\nloopback deployment (3 sites, 2 rounds, TLS + site auth): {elapsed:.1f} s wall time")
