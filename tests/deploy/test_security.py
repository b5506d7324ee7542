"""Secure by default: TLS only, registered site keys only, the right CA only.

One SuperLink (TLS + site authentication) serves the module; each test starts
real SuperNodes against it and checks who gets in.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.crypto import INSECURE_WARNING, create_certificates
from server.deploy import (
    ControlConnection,
    ControlError,
    list_nodes,
    register_site,
)
from tests.conftest import make_site
from tests.deploy import HEPAFED, Processes, free_port, hepafed, requires_nginx, wait_until

needs_gateway = requires_nginx()


@dataclass(frozen=True)
class Federation:
    """A running SuperLink and the files around it."""

    root: Path
    port: int  # the Fleet gateway's, what sites reach
    control_port: int  # the SuperLink's own, on loopback: the operator's
    ca: Path
    wrong_ca: Path
    site_dir: Path
    registered: Path
    unregistered: Path
    procs: Processes

    @property
    def superlink(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def control(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    def start_node(self, name: str, keys: Path, ca: Path) -> None:
        self.procs.start(
            name,
            [
                HEPAFED, "site", "start", "--site-dir", str(self.site_dir), "--keys", str(keys),
                "--superlink", self.superlink, "--ca", str(ca),
                "--runtime-port", str(free_port()), "--flwr-home", str(self.root / name),
            ],
        )  # fmt: skip


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """A SuperLink with TLS and site auth, one registered and one unregistered site key."""
    root = tmp_path_factory.mktemp("federation")
    procs = Processes(root / "logs")
    try:
        out = hepafed("certs", "init", "--out", str(root / "certs"), "--host", "127.0.0.1")
        assert out.returncode == 0, out.stderr
        create_certificates(root / "other-ca", ["127.0.0.1"])
        for name in ("registered", "unregistered"):
            out = hepafed("site", "init", name, "--out", str(root / name))
            assert out.returncode == 0, out.stderr
        port, control_port = free_port(), free_port()
        procs.start(
            "superlink",
            [
                HEPAFED, "server", "start", "--certs", str(root / "certs"),
                "--state", str(root / "state"), "--host", "127.0.0.1", "--port", str(port),
                "--control-port", str(control_port),
            ],
        )  # fmt: skip
        assert procs.wait_for_log("superlink", "Application startup complete", 90)
        ca = root / "certs" / "ca.pem"
        register_site(
            ControlConnection(f"127.0.0.1:{control_port}", ca),
            root / "registered" / "site_key.pub",
        )
        yield Federation(
            root=root,
            port=port,
            control_port=control_port,
            ca=ca,
            wrong_ca=root / "other-ca" / "ca.pem",
            site_dir=make_site(root / "sites", "site-x", n_cases=6),
            registered=root / "registered",
            unregistered=root / "unregistered",
            procs=procs,
        )
    finally:
        procs.stop_all()


def _exit_code(fed: Federation, name: str, timeout: float = 90) -> int | None:
    proc = fed.procs.procs[name]
    wait_until(lambda: proc.poll() is not None, timeout, interval=0.5)
    return proc.poll()


@needs_gateway
def test_registered_site_with_the_right_ca_joins(federation: Federation) -> None:
    federation.start_node("good", federation.registered, federation.ca)
    connection = ControlConnection(federation.control, federation.ca)
    assert wait_until(lambda: any(n["status"] == "online" for n in list_nodes(connection)), 90), (
        federation.procs.log("good")
    )
    federation.procs.stop("good")


@needs_gateway
def test_unregistered_site_key_is_refused(federation: Federation) -> None:
    federation.start_node("intruder", federation.unregistered, federation.ca)
    code = _exit_code(federation, "intruder")
    log = federation.procs.log("intruder")
    assert code not in (None, 0), log
    assert "Failed to activate SuperNode" in log
    federation.procs.stop("intruder")


@needs_gateway
def test_node_with_the_wrong_ca_refuses_the_server(federation: Federation) -> None:
    federation.start_node("misled", federation.registered, federation.wrong_ca)
    code = _exit_code(federation, "misled")
    log = federation.procs.log("misled")
    assert code not in (None, 0), log
    assert "CERTIFICATE_VERIFY_FAILED" in log
    federation.procs.stop("misled")


@needs_gateway
@pytest.mark.parametrize("which", ["port", "control_port"])
def test_gateway_and_superlink_speak_tls_only(federation: Federation, which: str) -> None:
    port = getattr(federation, which)
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, socket.timeout)):
        plain.request("GET", "/health")
        status = plain.getresponse().status
        assert status == 400  # nginx answers plain HTTP on a TLS port with 400
        raise ConnectionError("plain HTTP refused")
    context = ssl.create_default_context(cafile=str(federation.ca))
    secure = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    secure.request("GET", "/health")
    assert secure.getresponse().status < 500
    untrusted = ssl.create_default_context(cafile=str(federation.wrong_ca))
    bad = http.client.HTTPSConnection("127.0.0.1", port, context=untrusted)
    with pytest.raises(ssl.SSLCertVerificationError):
        bad.request("GET", "/health")


@needs_gateway
def test_registering_against_the_wrong_ca_fails(federation: Federation) -> None:
    out = hepafed(
        "server", "register-site", str(federation.unregistered / "site_key.pub"),
        "--superlink", federation.control, "--ca", str(federation.wrong_ca),
    )  # fmt: skip
    assert out.returncode != 0
    assert "registering" in out.stderr


@needs_gateway
def test_the_fleet_address_refuses_the_control_api(federation: Federation) -> None:
    """A site (or anyone holding ca.pem) cannot register a node or submit a run where the
    sites connect; the operator can, on the server host."""
    key = str(federation.unregistered / "site_key.pub")
    out = hepafed("server", "register-site", key, "--superlink", federation.superlink,
                  "--ca", str(federation.ca))  # fmt: skip
    assert out.returncode != 0 and "registering" in out.stderr, out.stdout + out.stderr
    nodes = list_nodes(ControlConnection(federation.control, federation.ca))
    assert len(nodes) == 1  # only the key the operator registered
    with pytest.raises(ControlError):
        list_nodes(ControlConnection(federation.superlink, federation.ca))


@needs_gateway
def test_insecure_server_prints_a_loud_warning(tmp_path: Path) -> None:
    procs = Processes(tmp_path / "logs")
    try:
        procs.start(
            "insecure",
            [
                HEPAFED, "server", "start", "--insecure", "--state", str(tmp_path / "state"),
                "--host", "127.0.0.1", "--port", str(free_port()),
                "--control-port", str(free_port()),
            ],
        )  # fmt: skip
        assert procs.wait_for_log("insecure", "hepafed-superlink --insecure", 60)
        log = procs.log("insecure")
        assert INSECURE_WARNING.strip() in log
        assert "--enable-supernode-auth" not in log.split("hepafed-superlink", 1)[1].split("\n")[0]
    finally:
        procs.stop_all()


def test_insecure_site_and_run_print_the_warning(tmp_path: Path) -> None:
    site = make_site(tmp_path / "sites", "site-x", n_cases=4)
    assert hepafed("site", "init", "site-x", "--out", str(tmp_path / "keys")).returncode == 0
    procs = Processes(tmp_path / "logs")
    try:
        procs.start(
            "site",
            [
                HEPAFED, "site", "start", "--insecure", "--site-dir", str(site),
                "--keys", str(tmp_path / "keys"),
                "--superlink", "127.0.0.1:1", "--runtime-port", str(free_port()),
            ],
        )  # fmt: skip
        procs.start("run", [HEPAFED, "run", "--insecure", "--superlink", "127.0.0.1:1"])
        for name in ("site", "run"):
            assert procs.wait_for_log(name, "WARNING: --insecure", 60), procs.log(name)
        assert (
            "client.supernode --idle-poll 1 --busy-poll 0.2 --superlink 127.0.0.1:1 "
            "--insecure" in procs.log("site")
        )
    finally:
        procs.stop_all()
