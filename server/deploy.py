"""The coordinating center's side of a deployment: SuperLink, site registration, runs.

Flower 1.41's SuperLink serves its Control, Fleet and Runtime (ServerAppIo)
APIs on ONE HTTPS port (``--host``/``--port``); with ``--isolation subprocess``
it starts ``flower-superexec`` itself, which runs the ServerApp as a
``flwr-serverapp`` subprocess, so no separate ServerApp service is needed.
Every argument list is built by one function here (``superlink_command``,
``register_command``, ``run_command``...) so that ``hepafed``, the tests and
``compose.yaml`` run exactly the same thing.

Secure by default: TLS with the federation's CA and server certificate, and
SuperNode authentication (only registered site keys may join). ``insecure``
turns both off (Flower refuses site authentication without TLS). The SuperLink
binds to loopback by default: its Control API has no authentication, so sites
reach only the Fleet API, through the gateway (``server.gateway``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.crypto import CA_CERT, SERVER_CERT, SERVER_KEY, certificate_hosts
from common.processes import with_flower_on_path

LOOPBACK_NAMES = ("localhost", "127.0.0.1")  # always in the server certificate
DEFAULT_PORT = 9093
DEFAULT_HOST = "127.0.0.1"
DATABASE_FILE = "superlink.db"
LEGACY_LISTENERS = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")
"""Environment switches that make Flower open extra gRPC listeners on all interfaces."""
FLWR_HOME_DIR = "flwr-home"
CONNECTION = "hepafed"
"""Name of the SuperLink connection in the temporary Flower CLI config."""


@dataclass(frozen=True)
class SuperLinkOptions:
    """How the SuperLink runs; ``superlink_command`` turns it into its command line."""

    state_dir: Path
    certs_dir: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    insecure: bool = False

    def __post_init__(self) -> None:
        if not self.insecure and self.certs_dir is None:
            raise ValueError(
                "the SuperLink needs --certs (from `hepafed certs init`); "
                "pass --insecure only for a local test"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not in 1..65535")

    @property
    def database(self) -> Path:
        """The SQLite file holding runs, registered sites and their state."""
        return self.state_dir / DATABASE_FILE

    @property
    def flwr_home(self) -> Path:
        """Flower's home for the SuperLink (installed app bundles), inside the state."""
        return self.state_dir / FLWR_HOME_DIR


def superlink_command(options: SuperLinkOptions) -> list[str]:
    """The SuperLink's command line for ``options`` (the one source of truth): Flower's
    ``flower-superlink`` with its arguments, through ``hepafed-superlink``
    (``server.superlink``), which keeps message objects in memory, not in the SQLite
    file that holds the SuperLink's state."""
    cmd = ["hepafed-superlink"]
    if options.insecure:
        cmd.append("--insecure")
    else:
        assert options.certs_dir is not None  # checked in __post_init__
        cmd += [
            "--ssl-ca-certfile",
            str(options.certs_dir / CA_CERT),
            "--ssl-certfile",
            str(options.certs_dir / SERVER_CERT),
            "--ssl-keyfile",
            str(options.certs_dir / SERVER_KEY),
            "--enable-supernode-auth",
        ]
    cmd += [
        "--database",
        str(options.database),
        "--disable-runtime-dependency-installation",
        "--isolation",
        "subprocess",
        "--host",
        options.host,
        "--port",
        str(options.port),
    ]
    return cmd


def superlink_environment(options: SuperLinkOptions) -> dict[str, str]:
    """Environment variables the SuperLink runs with (on top of the caller's).

    Nothing is installed or fetched at run time: Flower's runtime dependency
    installation, telemetry and update check are off.
    """
    return {
        "FLWR_HOME": str(options.flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def runtime_host(options: SuperLinkOptions) -> str:
    """The host the SuperLink's own SuperExec connects to (Flower maps 0.0.0.0 to 127.0.0.1)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(options.host, options.host)


def check_superlink_files(options: SuperLinkOptions) -> None:
    """Check the TLS files before Flower starts; raise naming what is wrong.

    The server certificate must also name the host the SuperLink's SuperExec
    uses to reach the Runtime API over TLS (127.0.0.1 when binding 0.0.0.0),
    or the ServerApp never starts.
    """
    if options.certs_dir is None or options.insecure:
        return
    missing = [
        str(options.certs_dir / f)
        for f in (CA_CERT, SERVER_CERT, SERVER_KEY)
        if not (options.certs_dir / f).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(missing)}: create them with `hepafed certs init`"
        )
    names = certificate_hosts(options.certs_dir / SERVER_CERT)
    if runtime_host(options) not in names:
        raise ValueError(
            f"{options.certs_dir / SERVER_CERT} names {', '.join(names)} but not "
            f"{runtime_host(options)}, which the SuperLink's own ServerApp runner connects to "
            f"for --host {options.host}; recreate the certificates with `hepafed certs init` "
            f"(it adds localhost and 127.0.0.1) or start with --host set to one of those names"
        )


def start_superlink(options: SuperLinkOptions, **popen: Any) -> subprocess.Popen[bytes]:
    """Start the SuperLink as a child process in its own process group."""
    check_superlink_files(options)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    options.flwr_home.mkdir(parents=True, exist_ok=True)
    env = with_flower_on_path(
        {**os.environ, **superlink_environment(options), **popen.pop("env", {})}
    )
    for name in LEGACY_LISTENERS:  # Flower's gRPC Control/Fleet APIs would bypass the gateway
        env.pop(name, None)
    command = superlink_command(options)
    command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]
    return subprocess.Popen(command, env=env, start_new_session=True, **popen)


# --- The Flower CLI (Control API) ---------------------------------------------------


@dataclass(frozen=True)
class ControlConnection:
    """How the ``flwr`` CLI reaches a SuperLink's Control API."""

    address: str
    ca: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if not self.insecure and self.ca is None:
            raise ValueError("give --ca (the federation's ca.pem) or --insecure")
        if not re.fullmatch(r"\[?[\w.:\-]+\]?:\d+", self.address):
            raise ValueError(f"--superlink {self.address!r}: expected HOST:PORT")

    def config_toml(self) -> str:
        """The Flower CLI configuration (``$FLWR_HOME/config.toml``) for this connection."""
        lines = [
            "[superlink]",
            f'default = "{CONNECTION}"',
            "",
            f"[superlink.{CONNECTION}]",
            f"address = {json.dumps(self.address)}",
        ]
        if self.insecure:
            lines.append("insecure = true")
        else:
            assert self.ca is not None
            lines.append(f"root-certificates = {json.dumps(str(self.ca.resolve()))}")
        return "\n".join(lines) + "\n"


@contextmanager
def flower_cli_home(connection: ControlConnection) -> Iterator[dict[str, str]]:
    """A throw-away ``FLWR_HOME`` holding only this connection; yields the environment.

    The operator's own ``~/.flwr`` is never read or changed.
    """
    with tempfile.TemporaryDirectory(prefix="hepafed-flwr-") as home:
        (Path(home) / "config.toml").write_text(connection.config_toml())
        yield with_flower_on_path(
            {
                **os.environ,
                "FLWR_HOME": home,
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
            }
        )


def register_command(public_key: Path, name: str = "") -> list[str]:
    """``flwr supernode register`` for one site's OpenSSH public key."""
    cmd = ["flwr", "supernode", "register", str(public_key), CONNECTION, "--format", "json"]
    if name:
        cmd += ["--name", name]
    return cmd


def _json_reply(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        return {}
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class ControlError(RuntimeError):
    """The SuperLink's Control API refused or could not be reached."""


def register_site(connection: ControlConnection, public_key: Path, name: str = "") -> int:
    """Register a site's public key with the SuperLink; its SuperNode id.

    Raises ``ControlError`` with Flower's message when the SuperLink refuses
    (unreachable, TLS failure, key already registered...).
    """
    if not public_key.is_file():
        raise FileNotFoundError(f"public key {public_key} does not exist")
    with flower_cli_home(connection) as env:
        proc = subprocess.run(
            register_command(public_key, name), env=env, capture_output=True, text=True
        )
    reply = _json_reply(proc.stdout)
    if proc.returncode != 0 or not reply.get("success"):
        message = reply.get("error-message") or (proc.stdout + proc.stderr).strip()
        raise ControlError(f"registering {public_key} failed: {message}")
    return int(reply["node-id"])


def list_nodes(connection: ControlConnection) -> list[dict[str, Any]]:
    """The SuperNodes the SuperLink knows (``flwr supernode ls``)."""
    with flower_cli_home(connection) as env:
        proc = subprocess.run(
            ["flwr", "supernode", "ls", CONNECTION, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
        )
    reply = _json_reply(proc.stdout)
    if proc.returncode != 0 or not reply.get("success"):
        raise ControlError(f"listing SuperNodes failed: {(proc.stdout + proc.stderr).strip()}")
    return list(reply.get("nodes", []))


@dataclass(frozen=True)
class RunRequest:
    """A federated run to submit: the Flower app folder and run-config overrides."""

    app_dir: Path
    run_config: Sequence[str] = field(default_factory=tuple)


def run_command(request: RunRequest) -> list[str]:
    """``flwr run`` submitting ``request`` to the SuperLink and streaming its log."""
    cmd = ["flwr", "run", str(request.app_dir), CONNECTION, "--stream"]
    for item in request.run_config:
        cmd += ["--run-config", item]
    return cmd


def run_status_command(run_id: int) -> list[str]:
    """``flwr ls`` for one run, as JSON."""
    return ["flwr", "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"]


@dataclass(frozen=True)
class RunOutcome:
    """How a submitted run ended."""

    run_id: int | None
    status: str
    details: Mapping[str, Any]

    @property
    def completed(self) -> bool:
        """Whether Flower reports the run as finished and completed."""
        return self.status == "finished:completed"


_RUN_ID = re.compile(r"Successfully started run (\d+)")


def submit_run(
    connection: ControlConnection,
    request: RunRequest,
    echo: Any = None,
) -> RunOutcome:
    """Submit a run with ``flwr run``, follow its log until it ends, report its status.

    Each log line is passed to ``echo`` (default: printed to stdout).
    """
    if not (request.app_dir / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{request.app_dir} holds no pyproject.toml (the Flower app)")
    write = echo if echo is not None else (lambda line: print(line, end="", flush=True))
    run_id: int | None = None
    with flower_cli_home(connection) as env:
        proc = subprocess.Popen(
            run_command(request),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            write(line)
            found = _RUN_ID.search(line)
            if found and run_id is None:
                run_id = int(found.group(1))
        code = proc.wait()
        if run_id is None:
            return RunOutcome(None, f"flwr run exited with {code}", {})
        status = subprocess.run(run_status_command(run_id), env=env, capture_output=True, text=True)
    reply = _json_reply(status.stdout)
    runs = reply.get("runs") or [{}]
    details = dict(runs[0])
    return RunOutcome(run_id, str(details.get("status", "unknown")), details)
