"""Across hosts: SuperLink and SuperNodes each in its own network namespace.

The coordinating center's namespace holds a bridge; every hospital namespace
is joined to it by a veth pair, so nodes reach the SuperLink only over a
(virtual) network, at an address that is not loopback, with TLS and site
authentication on. Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_site
from tests.deploy import HEPAFED, Processes, hepafed, wait_until

SUBNET = "10.231.77"
CENTER_IP = f"{SUBNET}.1"
PORT = 9093
SITES = ("hospital-a", "hospital-b")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and `ip netns`"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Network:
    """The namespaces: one for the center, one per site."""

    center: str
    sites: dict[str, str]

    def exec(self, namespace: str, *argv: str) -> list[str]:
        """``argv`` run inside ``namespace``."""
        return ["ip", "netns", "exec", namespace, *argv]


@pytest.fixture
def network() -> Iterator[Network]:
    """A center namespace with a bridge and one veth-connected namespace per site."""
    tag = uuid.uuid4().hex[:6]
    center = f"hf-center-{tag}"
    sites = {name: f"hf-{name[-1]}-{tag}" for name in SITES}
    created: list[str] = []
    try:
        for ns in (center, *sites.values()):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", center, "link", "add", "br0", "type", "bridge")
        _ip("-n", center, "addr", "add", f"{CENTER_IP}/24", "dev", "br0")
        _ip("-n", center, "link", "set", "br0", "up")
        for i, ns in enumerate(sites.values()):
            host_end, site_end = f"vc{i}{tag}", f"vs{i}{tag}"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", site_end)
            _ip("link", "set", host_end, "netns", center)
            _ip("link", "set", site_end, "netns", ns)
            _ip("-n", center, "link", "set", host_end, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{10 + i}/24", "dev", site_end)
            _ip("-n", ns, "link", "set", site_end, "up")
        yield Network(center, sites)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_sites_in_their_own_namespaces_join_over_tls(tmp_path: Path, network: Network) -> None:
    procs = Processes(tmp_path / "logs")
    try:
        certs = tmp_path / "certs"
        out = hepafed("certs", "init", "--out", str(certs), "--host", CENTER_IP)
        assert out.returncode == 0, out.stderr
        ca = certs / "ca.pem"
        superlink = f"{CENTER_IP}:{PORT}"
        procs.start(
            "superlink",
            network.exec(
                network.center, HEPAFED, "server", "start", "--certs", str(certs),
                "--state", str(tmp_path / "state"), "--host", CENTER_IP, "--port", str(PORT),
            ),
        )  # fmt: skip
        assert procs.wait_for_log("superlink", "Application startup complete", 90)
        for name in SITES:
            keys = tmp_path / name
            assert hepafed("site", "init", name, "--out", str(keys)).returncode == 0
            register = subprocess.run(
                network.exec(
                    network.center, HEPAFED, "server", "register-site",
                    str(keys / "site_key.pub"), "--superlink", superlink, "--ca", str(ca),
                ),
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert register.returncode == 0, register.stdout + register.stderr
            site = make_site(tmp_path / "data", name, n_cases=6)
            procs.start(
                name,
                network.exec(
                    network.sites[name], HEPAFED, "site", "start", "--site-dir", str(site),
                    "--keys", str(keys), "--superlink", superlink, "--ca", str(ca),
                    "--flwr-home", str(keys / "flwr-home"),
                ),
            )  # fmt: skip

        def online() -> bool:
            listed = subprocess.run(
                network.exec(
                    network.center, HEPAFED, "server", "list-sites",
                    "--superlink", superlink, "--ca", str(ca),
                ),
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            status = [line.split()[1] for line in listed.stdout.splitlines() if line.strip()]
            return status.count("online") == len(SITES)

        assert wait_until(online, 120, interval=2), "\n".join(procs.log(n) for n in SITES)
    finally:
        procs.stop_all()
