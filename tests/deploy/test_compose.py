"""compose.yaml runs the same command lines as ``hepafed`` and mounts secrets narrowly.

No Docker engine runs here: the file is parsed and compared with the one source
of truth (``superlink_command``, ``supernode_command`` and their environments).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.node import SuperNodeOptions, supernode_command
from common.cli import build_parser
from server.deploy import SuperLinkOptions, superlink_command, superlink_environment
from tests.deploy import ROOT

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
SUPERLINK = SuperLinkOptions(
    state_dir=Path("/state"), certs_dir=Path("/certs"), host="0.0.0.0", port=9093
)


def _hospital(name: str) -> SuperNodeOptions:
    return SuperNodeOptions(
        superlink="gateway:9092",
        site_dir=Path("/data"),
        site_name=name,
        private_key=Path("/keys/site_key"),
        ca=Path("/ca/ca.pem"),
        server_key=Path("/ca/server.pub"),
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's short-syntax volumes."""
    out = []
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        read_only = parts[-1] == "ro"
        if read_only or parts[-1] == "rw":
            parts = parts[:-1]
        source, target = ":".join(parts[:-1]), parts[-1]
        out.append((source, target, read_only))
    return out


def test_superlink_command_is_superlink_command(compose: dict[str, Any]) -> None:
    service = compose["services"]["superlink"]
    assert service["command"] == superlink_command(SUPERLINK)
    env = {k: str(v) for k, v in service["environment"].items()}
    assert env.items() >= superlink_environment(SUPERLINK).items()
    assert "--enable-supernode-auth" in service["command"]
    assert "--disable-runtime-dependency-installation" in service["command"]
    assert "--allow-runtime-dependency-installation" not in service["command"]
    assert ("superlink-state", "/state", False) in _mounts(service)
    # the SuperLink's one port serves the unauthenticated Control API: never published
    assert "ports" not in service and service["networks"] == ["control"]


def test_only_the_gateway_is_published_and_the_control_network_is_internal(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"gateway"} and services["gateway"]["ports"] == ["9092:9092"]
    assert compose["networks"]["control"]["internal"] is True
    on_control = {n for n, s in services.items() if "control" in s.get("networks", [])}
    assert on_control == {"superlink", "gateway", "register", "operator"}
    for name in HOSPITALS:
        assert services[name]["networks"] == ["fleet"]
    args = build_parser().parse_args(services["gateway"]["command"][1:])
    assert (args.upstream, args.port, args.insecure) == ("superlink:9093", 9092, False)
    assert ("server-tls", "/certs", True) in _mounts(services["gateway"])
    certs = services["certs"]["command"]
    hosts = {certs[i + 1] for i, a in enumerate(certs) if a == "--host"}
    assert {"gateway", "superlink", args.upstream_tls_name} <= hosts


@pytest.mark.parametrize("name", HOSPITALS)
def test_hospital_command_is_site_start(compose: dict[str, Any], name: str) -> None:
    """`hepafed site start` with these arguments builds supernode_command(_hospital(name))
    (its key pair is KEYS/site_key) plus the site executor reading KEYS/approved-apps.toml."""
    service = compose["services"][name]
    assert service["command"][:3] == ["hepafed", "site", "start"]
    args = build_parser().parse_args(service["command"][1:])
    expected = _hospital(name)
    assert (args.superlink, args.site_dir, args.site_name, args.ca, args.server_key) == (
        expected.superlink, str(expected.site_dir), name, str(expected.ca),
        str(expected.server_key))  # fmt: skip
    assert Path(args.keys) / "site_key" == expected.private_key
    assert args.runtime_port == expected.runtime_port and not args.insecure
    assert "--insecure" not in service["command"]
    # what the hospital's command runs, built from those options
    command = supernode_command(expected)
    assert command[command.index("--superlink") + 1] == "gateway:9092"
    assert command[command.index("--isolation") + 1] == "process"


def test_every_private_key_is_mounted_only_where_needed(compose: dict[str, Any]) -> None:
    services = compose["services"]
    private_volumes = {
        "ca-key": {"certs"},  # ca.key
        "server-tls": {"certs", "superlink", "gateway"},  # server.key (TLS in front and behind)
        "signing-key": {"certs", "superlink"},  # the server's update-signing key
        **{f"{h}-keys": {f"{h}-keys", h} for h in HOSPITALS},  # each site_key
    }
    for volume, allowed in private_volumes.items():
        users = {name for name, s in services.items() if any(m[0] == volume for m in _mounts(s))}
        assert users == allowed, f"{volume} is mounted by {sorted(users)}"
    assert set(private_volumes) <= set(compose["volumes"])


def test_images_are_pinned_and_built_from_a_pinned_base(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert re.fullmatch(r"[\w.\-/]+:\d+\.\d+\.\d+", image), f"{name}: unpinned {image!r}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1))
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "scripts/setup.sh" in dockerfile


def test_nothing_installs_at_run_time(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert str(env.get("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION")) == "1", name
        assert "--allow-runtime-dependency-installation" not in service.get("command", [])


@pytest.mark.parametrize("name", HOSPITALS)
def test_a_hospital_writes_only_its_policy_folders(compose: dict[str, Any], name: str) -> None:
    """Keys read-only; the policy's state-dir and cache-dir (``hepafed site init --out /keys``
    puts them at /keys/state and /keys/cache) on writable volumes of the hospital's own."""
    mounts = _mounts(compose["services"][name])
    writable = {target: source for source, target, ro in mounts if not ro}
    assert writable == {"/keys/state": f"{name}-state", "/keys/cache": f"{name}-cache"}
    users = {
        other
        for other, service in compose["services"].items()
        for source, _, _ in _mounts(service)
        if source in (f"{name}-state", f"{name}-cache")
    }
    assert users == {name}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "/keys/state /keys/cache" in dockerfile and "chmod 0700 /keys/state /keys/cache" in (
        dockerfile
    )
