"""Across hosts, as an attacker would try it: the coordinating center, the hospitals, an
impostor and an outsider, each in its own network namespace.

The center's namespace holds a bridge; every other namespace is joined to it by a
veth pair, so everyone reaches the center over a (virtual) network, at an address
that is not loopback. The center runs ``hepafed server start``: the SuperLink on
its own loopback, the Fleet gateway (nginx) on the bridge address. The operator
works on the center host (its loopback), as over SSH.

One test, one federation, everything checked on it:

- from the outside, ``flwr supernode register`` and ``flwr run`` fail (the gateway
  refuses every non-Fleet path) and the SuperLink's own port is unreachable;
- from the operator's side they work;
- an app bundle no site approved is refused at every site before any of its code
  runs (its ClientApp would leave a file behind on import), and the sites log it;
- a node registered for another partner that claims ``site-a`` is refused at the
  site query and is absent from the report;
- the genuine run completes with the three hospitals (``check_completed_run``);
- ``hepafed monitor --deployed`` watches a model over two months at the three hospitals
  (``check_monitoring``), the impostor refused again.

Needs root and ``ip netns``; skipped otherwise (then ``test_deployment.py`` runs the
same federation on loopback).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.app_approval import REFUSALS_LOG
from server.audit import entries
from tests.conftest import make_site
from tests.deploy import (
    DATED_CASES,
    HEPAFED,
    RUN_CONFIG,
    Processes,
    approve_app,
    check_completed_run,
    check_monitoring,
    dated_site,
    hepafed,
    monitor_args,
    netns_available,
    requires_nginx,
    set_site_policy,
    snapshot_app,
    wait_until,
    watched_model,
)

SUBNET = "10.231.77"
CENTER_IP = f"{SUBNET}.1"
FLEET_PORT = 9092
CONTROL_PORT = 9093
SITES = ("site-a", "site-b", "site-c")
HOSTS = (*SITES, "impostor", "outside")

pytestmark = [
    pytest.mark.skipif(not netns_available(), reason="needs root and `ip netns`"),
    requires_nginx(),
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Network:
    """The namespaces: the center, and one per other host."""

    center: str
    hosts: dict[str, str]

    def exec(self, host: str, *argv: str) -> list[str]:
        """``argv`` run on ``host`` ("center" or a name of HOSTS)."""
        namespace = self.center if host == "center" else self.hosts[host]
        return ["ip", "netns", "exec", namespace, *argv]

    def run(self, host: str, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec(host, *argv), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip


@pytest.fixture
def network() -> Iterator[Network]:
    """A center namespace with a bridge and one veth-connected namespace per other host."""
    tag = uuid.uuid4().hex[:6]
    center = f"hf-center-{tag}"
    hosts = {name: f"hf-{i}-{tag}" for i, name in enumerate(HOSTS)}
    created: list[str] = []
    try:
        for ns in (center, *hosts.values()):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", center, "link", "add", "br0", "type", "bridge")
        _ip("-n", center, "addr", "add", f"{CENTER_IP}/24", "dev", "br0")
        _ip("-n", center, "link", "set", "br0", "up")
        for i, ns in enumerate(hosts.values()):
            host_end, far_end = f"vc{i}{tag}", f"vs{i}{tag}"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", far_end)
            _ip("link", "set", host_end, "netns", center)
            _ip("link", "set", far_end, "netns", ns)
            _ip("-n", center, "link", "set", host_end, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{10 + i}/24", "dev", far_end)
            _ip("-n", ns, "link", "set", far_end, "up")
        yield Network(center, hosts)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _evil_app(root: Path, marker: Path, result: Path) -> Path:
    """A Flower app whose ClientApp leaves ``marker`` behind the moment it is imported; its
    ServerApp asks every node once and writes what came back to ``result``."""
    app = root / "evil-app"
    (app / "evil").mkdir(parents=True)
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "evil"\nversion = "1.0.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "outsider"\n\n[tool.flwr.app.components]\n'
        'serverapp = "evil.server:app"\nclientapp = "evil.client:app"\n\n'
        "[tool.flwr.app.config]\n"
    )
    (app / "evil" / "__init__.py").write_text("")
    (app / "evil" / "client.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('the bundle ran here')\n"
        "from flwr.clientapp import ClientApp\napp = ClientApp()\n"
    )
    (app / "evil" / "server.py").write_text(
        "import json, time\nfrom pathlib import Path\n"
        "from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict\n"
        "from flwr.serverapp import Grid, ServerApp\napp = ServerApp()\n\n"
        "@app.main()\ndef main(grid: Grid, context: Context) -> None:\n"
        "    ids = []\n"
        "    for _ in range(60):\n"
        "        ids = list(grid.get_node_ids())\n"
        f"        if len(ids) >= {len(SITES) + 1}:\n"
        "            break\n"
        "        time.sleep(1)\n"
        "    msgs = [Message(RecordDict({'c': ConfigRecord({'x': 1})}), dst_node_id=n,\n"
        "                    message_type=MessageType.QUERY) for n in ids]\n"
        "    replies = list(grid.send_and_receive(msgs, timeout=120))\n"
        "    out = [r.error.reason if r.has_error() else 'answered' for r in replies]\n"
        f"    Path({str(result)!r}).write_text(json.dumps(out))\n"
    )
    return app


def _submit(network: Network, app: Path, ca: Path, superlink: str, host: str) -> str:
    """Submit ``app`` with Flower's own ``flwr run`` from ``host``; its output."""
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from server.deploy import ControlConnection, RunRequest, submit_run\n"
        f"o = submit_run(ControlConnection({superlink!r}, Path({str(ca)!r})), "
        f"RunRequest(Path({str(app)!r})))\nprint('STATUS', o.run_id, o.status)\n"
    )
    out = network.run(host, sys.executable, "-c", script, timeout=300)
    return out.stdout + out.stderr


def test_the_center_the_hospitals_an_impostor_and_an_outsider(
    tmp_path: Path, network: Network
) -> None:
    procs = Processes(tmp_path / "logs")
    try:
        center = tmp_path / "center"
        certs, keyring = center / "certs", center / "keyring"
        offline = tmp_path / "offline-ca"
        out = hepafed("certs", "init", "--out", str(certs), "--host", CENTER_IP,
                      "--ca-dir", str(offline), "--keyring", str(keyring))  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert not (certs / "ca.key").exists()  # the CA key is not on the SuperLink host
        ca = certs / "ca.pem"
        procs.start("superlink", network.exec(
            "center", HEPAFED, "server", "start", "--certs", str(certs), "--state",
            str(center / "state"), "--host", CENTER_IP, "--port", str(FLEET_PORT),
            "--control-port", str(CONTROL_PORT)), cwd=center)  # fmt: skip
        assert procs.wait_for_log("superlink", "Application startup complete", 90)
        fleet, control = f"{CENTER_IP}:{FLEET_PORT}", f"127.0.0.1:{CONTROL_PORT}"

        # hospitals: keys, data, a policy that lets 8-case summaries leave; the impostor is a
        # partner ("site-d") registered by the operator whose node calls itself site-a
        keys = {name: tmp_path / "keys" / name for name in (*SITES, "impostor")}
        for name, folder in keys.items():
            label = "site-d" if name == "impostor" else name
            assert hepafed("site", "init", label, "--out", str(folder)).returncode == 0
            set_site_policy(folder, {"min-cases": 8, "min-per-class": 3})
        # the outsider holds the public ca.pem and a key pair of its own
        outsider = tmp_path / "outsider"
        assert hepafed("site", "init", "outsider", "--out", str(outsider)).returncode == 0

        # from the outside: nothing but the Fleet API
        outsider_key = outsider / "site_key.pub"
        refused = network.run("outside", HEPAFED, "server", "register-site", str(outsider_key),
                              "--superlink", fleet, "--ca", str(ca))  # fmt: skip
        assert refused.returncode != 0 and "registering" in refused.stderr, refused.stderr
        assert "registered" not in refused.stdout
        connect = f"import socket; socket.create_connection(({CENTER_IP!r}, {CONTROL_PORT}), 5)"
        probe = network.run("outside", sys.executable, "-c", connect)
        assert probe.returncode != 0 and "refused" in probe.stderr.lower(), probe.stderr
        marker, result = tmp_path / "pwned", tmp_path / "evil-replies.json"
        evil = _evil_app(tmp_path, marker, result)
        outside_run = _submit(network, evil, ca, fleet, "outside")
        assert "STATUS None" in outside_run, outside_run  # never accepted as a run

        # the operator, on the center host: register the three hospitals and site-d
        pubkeys = [str(keys[n] / "site_key.pub") for n in (*SITES, "impostor")]
        register = ["--superlink", control, "--ca", str(ca), "--keyring", str(keyring)]
        out = network.run("center", HEPAFED, "server", "register-site", *pubkeys, *register)
        assert out.returncode == 0, out.stdout + out.stderr

        app = snapshot_app(tmp_path / "app")
        approve_app(app, *keys.values())
        for name in (*SITES, "impostor"):
            site = dated_site(
                make_site(tmp_path / "data", name, n_cases=DATED_CASES, seed=len(name))
            )
            extra = ["--site-name", "site-a"] if name == "impostor" else []
            # the "hosts" share this machine's cores: one torch thread per site
            procs.start(name, network.exec(
                name, HEPAFED, "site", "start", "--site-dir", str(site), "--keys",
                str(keys[name]), "--superlink", fleet, "--ca", str(ca), "--server-key",
                str(keyring / "server.pub"), "--flwr-home", str(keys[name] / "flwr-home"),
                "--threads", "1", *extra))  # fmt: skip

        def online() -> bool:
            listed = network.run("center", HEPAFED, "server", "list-sites",
                                 "--superlink", control, "--ca", str(ca), timeout=60)  # fmt: skip
            status = [line.split()[1] for line in listed.stdout.splitlines() if line.strip()]
            return status.count("online") == len(SITES) + 1

        assert wait_until(online, 120, interval=2), "\n".join(procs.log(n) for n in keys)

        # an app no site approved, submitted by whoever holds the Control API: refused at
        # every site before its code ran
        evil_run = _submit(network, evil, ca, control, "center")
        assert "STATUS" in evil_run, evil_run
        replies = json.loads(result.read_text())
        assert len(replies) == len(SITES) + 1
        assert all("AppNotApproved" in r and "refused at site" in r for r in replies), replies
        assert not [r for r in replies if str(tmp_path) in r]  # no site path leaves a site
        assert not marker.exists(), "the unapproved bundle's code ran at a site"
        for name in keys:
            logged = (keys[name] / REFUSALS_LOG).read_text()
            assert "is not approved" in logged and "refused at site" in logged
            installed = keys[name] / "flwr-home" / "apps"
            assert not installed.exists() or not any(installed.rglob("client.py"))

        # the federation's own run, from the operator's side: the impostor is refused
        run_dir = tmp_path / "run"
        run_config = f"{RUN_CONFIG} federation.expected-sites=4 output.run-dir='{run_dir}'"
        out = network.run("center", HEPAFED, "run", "--superlink", control, "--ca", str(ca),
                          "--run-config", run_config, "--app", str(app), "--keyring",
                          str(keyring), timeout=900)  # fmt: skip
        log = out.stdout + out.stderr
        assert out.returncode == 0, log + procs.log("superlink")[-4000:]
        # the impostor's refusal is in the audit trail, under its node, with the reason
        config_entry = next(e for e in entries(run_dir) if e["kind"] == "config")
        refused = config_entry["data"]["refused_sites"]
        assert len(refused) == 1, refused
        ((who, why),) = refused.items()
        assert who.startswith("site-a (node ") and "not signed by site-a's registered key" in why
        check_completed_run(run_dir, keyring, SITES)
        config = json.loads((run_dir / "config.json").read_text())
        assert sorted(s["name"] for s in config["sites"]) == list(SITES)
        genuine = {str(s["node_id"]) for s in config["sites"]}
        report = json.loads((run_dir / "report.json").read_text())
        assert sorted(s["name"] for s in report["sites_joined"]) == list(SITES)
        assert not genuine & {procs.log("impostor").split("SuperNode ID: ")[-1].split()[0]}

        # monitoring over the same network: two months, the impostor refused again
        watched = watched_model(tmp_path / "data", tmp_path / "watched")
        monitor_run = tmp_path / "monitor-run"
        args = monitor_args(control, ca, keyring, app, watched, monitor_run, len(SITES) + 1)
        out = network.run("center", HEPAFED, *args, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr + procs.log("superlink")[-4000:]
        check_monitoring(out.stdout, watched, monitor_run, SITES)
    finally:
        procs.stop_all()
