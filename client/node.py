"""A hospital's node: the Flower SuperNode command line and its site folder.

The SuperNode connects out to the SuperLink's Fleet API (through the
coordinating center's gateway) over TLS (it trusts only the federation's
``ca.pem``), proves its identity with the site's private key (registered at
the coordinating center beforehand), and leaves its tasks to the site
executor (``client.executor``, ``executor_command``), which runs a ClientApp
only from an app bundle the site approved, with the node config
``site-dir``/``site-name``. The ClientApp only reads the site folder;
``check_site_folder`` reads it too, and never writes.

``supernode_command`` is the one place the command line is built: ``hepafed
site start``, the tests and ``compose.yaml`` use it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.app_approval import APPROVALS_FILE
from client.policy import SitePolicy
from client.policy_file import node_config_args, policy_toml
from client.supernode import BUSY_POLL_S, IDLE_POLL_S
from common.crypto import SITE_PRIVATE_KEY, SITE_PUBLIC_KEY, create_site_keys
from common.keys import NodeKey, site_name_problem
from common.manifest import MANIFEST_NAME
from common.processes import with_flower_on_path

DEFAULT_RUNTIME_PORT = 9094
NODE_CONFIG_FILE = "node-config.toml"
MANIFEST_TEMPLATE = "manifest-template.csv"


@dataclass(frozen=True)
class SuperNodeOptions:
    """How a hospital's SuperNode runs; ``supernode_command`` builds its command line."""

    superlink: str
    site_dir: Path
    site_name: str
    private_key: Path | None = None
    ca: Path | None = None
    insecure: bool = False
    runtime_port: int = DEFAULT_RUNTIME_PORT
    server_key: Path | None = None  # the federation's server.pub: checks signed models
    allowed_hooks: str = ""  # 'module:Class' hooks this site agrees to import (comma-separated)
    policy: SitePolicy | None = None  # the site's [policy] (node-config.toml), enforced there
    auth_secret_file: Path | None = None  # only the site executor may take the node's tasks
    cold_tasks: bool = False  # a fresh interpreter per task, not a fork of the warm zygote
    idle_poll_s: float = IDLE_POLL_S  # seconds between asking for messages when none came
    busy_poll_s: float = BUSY_POLL_S  # ... for a while after the site sent a reply
    threads: int | None = None  # torch threads per task (None: torch's default, all cores)

    def __post_init__(self) -> None:
        if not self.insecure and (self.ca is None or self.private_key is None):
            raise ValueError(
                "a site node needs --ca (the federation's ca.pem) and its key pair "
                "(--keys, from `hepafed site init`); pass --insecure only for a local test"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads}: give at least 1 (or leave it out)")
        paths = (self.site_dir, self.site_name, self.private_key or "", self.server_key or "",
                 self.allowed_hooks)  # fmt: skip
        if any("'" in str(p) for p in paths):
            raise ValueError("site folder, site name and key paths must not contain a quote")

    def node_config(self) -> str:
        """The ``--node-config`` value the ClientApp reads: ``site-dir``, ``site-name``, and
        the keys that sign updates and check models (``client.trust``)."""
        out = f"{NodeKey.SITE_DIR}='{self.site_dir}' {NodeKey.SITE_NAME}='{self.site_name}'"
        if self.private_key is not None:
            out += f" {NodeKey.SIGNING_KEY}='{self.private_key}'"
        if self.server_key is not None:
            out += f" {NodeKey.SERVER_KEY}='{self.server_key}'"
        if self.allowed_hooks:
            out += f" {NodeKey.ALLOWED_HOOKS}='{self.allowed_hooks}'"
        if self.policy is not None:
            out += " " + node_config_args(self.policy)
        return out


def supernode_command(options: SuperNodeOptions) -> list[str]:
    """The SuperNode's command line for ``options`` (the one source of truth): Flower's
    ``flower-supernode`` with its arguments, through ``client.supernode``, which shortens
    the idle poll to ``idle_poll_s`` (``busy_poll_s`` for a while after a reply)."""
    cmd = [sys.executable, "-m", "client.supernode", "--idle-poll", f"{options.idle_poll_s:g}",
           "--busy-poll", f"{options.busy_poll_s:g}", "--superlink", options.superlink]  # fmt: skip
    if options.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(options.ca)]
    if options.private_key is not None:
        cmd += ["--auth-supernode-private-key", str(options.private_key)]
    cmd += [
        "--node-config",
        options.node_config(),
        "--isolation",
        "process",
        "--host",
        "127.0.0.1",
        "--port",
        str(options.runtime_port),
    ]
    if options.auth_secret_file is not None:
        cmd += ["--superexec-auth-secret-file", str(options.auth_secret_file)]
    return cmd


def executor_command(options: SuperNodeOptions, keys_dir: Path, parent_pid: int | None = None
                     ) -> list[str]:  # fmt: skip
    """The site executor's command line (``client.executor``): it runs a ClientApp task only
    for an app bundle listed in ``keys_dir``'s ``approved-apps.toml``."""
    cmd = [sys.executable, "-m", "client.executor", "serve",
           "--runtime-api-address", f"127.0.0.1:{options.runtime_port}",
           "--approvals", str(keys_dir / APPROVALS_FILE), "--keys", str(keys_dir),
           "--site", options.site_name]  # fmt: skip
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    if options.auth_secret_file is not None:
        cmd += ["--auth-secret-file", str(options.auth_secret_file)]
    if options.cold_tasks:
        cmd.append("--cold")
    if options.threads is not None:
        cmd += ["--threads", str(options.threads)]
    return cmd


def write_auth_secret(folder: Path) -> Path:
    """A fresh random secret (0600, in a 0700 folder) shared by the SuperNode and the site
    executor: without it no other local process can take the node's tasks."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / "superexec.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path


def supernode_environment(flwr_home: Path | None = None) -> dict[str, str]:
    """Environment variables for the SuperNode: no installs, no telemetry, no update check."""
    env = {
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def start_supernode(
    options: SuperNodeOptions, flwr_home: Path | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start the SuperNode as a child process in its own process group."""
    if flwr_home is not None:
        flwr_home.mkdir(parents=True, exist_ok=True)
    env = with_flower_on_path(
        {**os.environ, **supernode_environment(flwr_home), **popen.pop("env", {})}
    )
    return subprocess.Popen(supernode_command(options), env=env, start_new_session=True, **popen)


# --- The site folder ----------------------------------------------------------------


@dataclass(frozen=True)
class SiteFolder:
    """What ``init_site_folder`` wrote."""

    root: Path
    private_key: Path
    public_key: Path
    node_config: Path
    manifest_template: Path


def _node_config_template(name: str, out: Path) -> str:
    return (
        "# hepafed site node config: read by `hepafed site start --keys THIS_FOLDER`.\n"
        "# site-name is how this hospital appears in every round and in the report;\n"
        "# site-dir is the folder holding manifest.csv and the images (opened read-only).\n"
        f'site-name = "{name}"\n'
        'site-dir = ""  # e.g. "/srv/hepafed/data"; or give --site-dir to `hepafed site start`\n'
        "# hooks given by import path ('package.module:Class') that this site agrees to import;\n"
        '# built-in hooks need no entry. Comma-separated, e.g. "mylab.hooks:Harmonise".\n'
        'allowed-hooks = ""\n'
        "\n" + policy_toml(SitePolicy(state_dir=str(out / "state"), cache_dir=str(out / "cache")))
    )


def _manifest_template() -> str:
    header = [
        "case_id",
        "image_arterial",
        "image_portal",
        "image_delayed",
        "mask",
        "label",
        "split",
        "vendor",
        "kernel",
        "slice_thickness_mm",
    ]
    example = [
        "case-0001",
        "images/case-0001_arterial.nii.gz",
        "images/case-0001_portal.nii.gz",
        "dicom/case-0001/delayed",
        "masks/case-0001.nii.gz",
        "1",
        "train",
        "SIEMENS",
        "B30f",
        "2.5",
    ]
    return ",".join(header) + "\n" + ",".join(example) + "\n"


def init_site_folder(name: str, out: Path, exist_ok: bool = False) -> SiteFolder:
    """Create a site folder: key pair, node config template and manifest template.

    With ``exist_ok`` an existing complete folder is kept as it is (keys are
    never replaced); otherwise existing files are an error.
    """
    problem = site_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    folder = SiteFolder(
        out,
        out / SITE_PRIVATE_KEY,
        out / SITE_PUBLIC_KEY,
        out / NODE_CONFIG_FILE,
        out / MANIFEST_TEMPLATE,
    )
    if exist_ok and folder.private_key.is_file() and folder.public_key.is_file():
        return folder
    create_site_keys(out, comment=name)
    if not folder.node_config.exists():
        folder.node_config.write_text(_node_config_template(name, out.resolve()))
    if not folder.manifest_template.exists():
        folder.manifest_template.write_text(_manifest_template())
    return folder


def read_node_config(keys_dir: Path) -> dict[str, str]:
    """``site-name``/``site-dir`` from a site folder's ``node-config.toml`` (empty if none)."""
    path = keys_dir / NODE_CONFIG_FILE
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    return {k: str(v) for k, v in data.items() if isinstance(v, str) and v}


def check_site_folder(site_dir: Path) -> list[str]:
    """Read-only checks of the data folder a node serves; the problems found.

    The folder must exist and be readable, with a readable ``manifest.csv``.
    Nothing is created or modified. (The full case-by-case validation is
    ``hepafed site check``.)
    """
    problems: list[str] = []
    if not site_dir.is_dir():
        return [f"site folder {site_dir} does not exist or is not a folder"]
    if not os.access(site_dir, os.R_OK | os.X_OK):
        problems.append(f"site folder {site_dir} is not readable")
    manifest = site_dir / MANIFEST_NAME
    if not manifest.is_file():
        problems.append(f"{manifest} does not exist: write the manifest (see {MANIFEST_TEMPLATE})")
    elif not os.access(manifest, os.R_OK):
        problems.append(f"{manifest} is not readable")
    return problems


def site_folder_is_writable(site_dir: Path) -> bool:
    """Whether this process could write into the data folder (a read-only mount is safer)."""
    return os.access(site_dir, os.W_OK)
