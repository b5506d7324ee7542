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
from server.deploy import SuperLinkOptions, superlink_command, superlink_environment
from tests.deploy import ROOT

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
SUPERLINK = SuperLinkOptions(
    state_dir=Path("/state"), certs_dir=Path("/certs"), host="0.0.0.0", port=9093
)


def _hospital(name: str) -> SuperNodeOptions:
    return SuperNodeOptions(
        superlink=f"superlink:{SUPERLINK.port}",
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
    assert service["ports"] == [f"{SUPERLINK.port}:{SUPERLINK.port}"]


@pytest.mark.parametrize("name", HOSPITALS)
def test_hospital_command_is_supernode_command(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["command"] == supernode_command(_hospital(name))
    assert "--insecure" not in service["command"]
    assert "--allow-runtime-dependency-installation" not in service["command"]
    data = [m for m in _mounts(service) if m[1] == "/data"]
    assert len(data) == 1 and data[0][2], "the hospital's data must be mounted read-only"
    assert (f"{name}-keys", "/keys", True) in _mounts(service)


def test_every_private_key_is_mounted_only_where_needed(compose: dict[str, Any]) -> None:
    services = compose["services"]
    private_volumes = {
        "ca-key": {"certs"},  # ca.key
        "server-tls": {"certs", "superlink"},  # server.key
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
