"""The Fleet gateway: the only door from the hospitals into the coordinating center.

Flower 1.41's SuperLink serves its Control API (register nodes, submit and stop
runs), its Fleet API (what SuperNodes use) and its Runtime API on ONE port, and
the Control API has no authentication in the open-source build: whoever reaches
that port can register a node and run code on the server and at every site.
So the SuperLink binds to loopback (or an internal network) only, and a real
reverse proxy, nginx, terminates TLS on the public address and forwards
``POST /v1/fleet/...`` (and the ``/health`` probe) to it; every other path is
refused with 403 before it reaches Flower. Operators reach the Control API on
the server host itself (they come in over SSH), never through the gateway.

``gateway_config`` renders the nginx configuration (the one source of truth for
``hepafed server start``, ``hepafed server gateway`` and compose.yaml's gateway
service); ``start_gateway`` runs nginx with it in the foreground.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.crypto import CA_CERT, SERVER_CERT, SERVER_KEY

DEFAULT_FLEET_PORT = 9092
DEFAULT_MAX_BODY_MB = 2048
FLEET_PREFIX = "/v1/fleet/"
GATEWAY_DIR = "gateway"
CONFIG_FILE = "nginx.conf"
NGINX_SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")
NODE_AUTH_HEADERS = ("flwr-public-key", "flwr-signature", "flwr-timestamp")
"""What every Fleet request of an authenticated SuperNode carries (Flower's node auth)."""
UPSTREAM_TLS_NAME = "localhost"
"""The name the gateway checks in the SuperLink's certificate (`hepafed certs init` adds it)."""


class GatewayError(RuntimeError):
    """The gateway cannot start (nginx missing, bad options, files missing)."""


@dataclass(frozen=True)
class GatewayOptions:
    """Where the gateway listens, where the SuperLink is, and the TLS files it uses."""

    runtime_dir: Path
    upstream: str
    certs_dir: Path | None = None
    host: str = "0.0.0.0"
    port: int = DEFAULT_FLEET_PORT
    insecure: bool = False
    max_body_mb: int = DEFAULT_MAX_BODY_MB
    upstream_tls_name: str = UPSTREAM_TLS_NAME
    max_connections_per_address: int = 16

    def __post_init__(self) -> None:
        if not self.insecure and self.certs_dir is None:
            raise GatewayError(
                "the Fleet gateway needs --certs (from `hepafed certs init`); "
                "pass --insecure only for a local test"
            )
        if not 0 < self.port < 65536:
            raise GatewayError(f"gateway port {self.port} is not in 1..65535")
        if self.max_body_mb < 1:
            raise GatewayError(f"--max-message-mb {self.max_body_mb}: must be at least 1")
        if self.max_connections_per_address < 1:
            raise GatewayError("max_connections_per_address must be at least 1")
        for value, what in ((self.upstream, "upstream"), (self.host, "host"),
                            (self.upstream_tls_name, "upstream TLS name")):  # fmt: skip
            if any(c in value for c in ";{}'\"\n\t $#"):
                raise GatewayError(f"gateway {what} {value!r} holds a character nginx would parse")

    @property
    def config_path(self) -> Path:
        return self.runtime_dir / CONFIG_FILE


def _listen(host: str, port: int) -> str:
    if host in WILDCARD_HOSTS:
        return str(port)
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def gateway_config(options: GatewayOptions) -> str:
    """The nginx configuration for ``options``: TLS in front, Fleet paths only behind."""
    run = options.runtime_dir
    scheme = "http" if options.insecure else "https"
    lines = [
        "# hepafed Fleet gateway (server/gateway.py): generated, do not edit.",
        "worker_processes 1;",
        "daemon off;",
        f"pid {run / 'nginx.pid'};",
        f"error_log {run / 'error.log'} warn;",
        "events { worker_connections 1024; }",
        "http {",
        f"  access_log {run / 'access.log'};",
        # every temporary path inside the runtime folder: nothing is written elsewhere
        *(
            f"  {kind}_temp_path {run / ('tmp-' + kind)};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
        "  server_tokens off;",
        f"  client_max_body_size {options.max_body_mb}m;",
        "  limit_conn_zone $binary_remote_addr zone=per_address:10m;",
        "  client_body_buffer_size 1m;",
        "  server {",
        f"    listen {_listen(options.host, options.port)}{'' if options.insecure else ' ssl'};",
        f"    limit_conn per_address {options.max_connections_per_address};",
    ]
    if not options.insecure:
        assert options.certs_dir is not None
        lines += [
            f"    ssl_certificate {options.certs_dir / SERVER_CERT};",
            f"    ssl_certificate_key {options.certs_dir / SERVER_KEY};",
            "    ssl_protocols TLSv1.2 TLSv1.3;",
        ]
    upstream_block = [
        f"      proxy_pass {scheme}://{options.upstream};",
        "      proxy_http_version 1.1;",
        "      proxy_request_buffering off;",
        "      proxy_buffering off;",
        "      proxy_read_timeout 600s;",
        "      proxy_send_timeout 600s;",
        "      proxy_set_header Host $host;",
        "      proxy_set_header X-Forwarded-For $remote_addr;",
    ]
    if not options.insecure:
        assert options.certs_dir is not None
        upstream_block += [
            "      proxy_ssl_verify on;",
            f"      proxy_ssl_trusted_certificate {options.certs_dir / CA_CERT};",
            f"      proxy_ssl_name {options.upstream_tls_name};",
            "      proxy_ssl_server_name on;",
        ]
    # with site authentication every Fleet request carries the node's key and signature:
    # one without them is refused here, before its body is read (the SuperLink reads a
    # whole body before it checks who sent it)
    signed_only = [] if options.insecure else [
        f'      if ($http_{h.replace("-", "_")} = "") {{ return 401; }}' for h in NODE_AUTH_HEADERS
    ]  # fmt: skip
    lines += [
        f"    location {FLEET_PREFIX} {{",
        "      limit_except POST { deny all; }",
        *signed_only,
        *upstream_block,
        "    }",
        "    location = /health {",
        "      limit_except GET { deny all; }",
        *upstream_block,
        "    }",
        "    location / {",
        "      default_type text/plain;",
        "      return 403 'refused: only the Fleet API is served here; the coordinating "
        "center operates the federation from its own host\\n';",
        "    }",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def find_nginx() -> str:
    """The nginx executable; a GatewayError saying how to install it when there is none."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *NGINX_SEARCH_PATH])
    found = shutil.which("nginx", path=path)
    if found is None:
        raise GatewayError(
            "nginx not found: the coordinating center's Fleet gateway needs it "
            "(Debian/Ubuntu: `apt-get install nginx`; the hepafed image has it)"
        )
    return found


def gateway_command(options: GatewayOptions, nginx: str = "nginx") -> list[str]:
    """The nginx command line running the gateway in the foreground."""
    return [nginx, "-e", str(options.runtime_dir / "error.log"), "-p", str(options.runtime_dir),
            "-c", str(options.config_path)]  # fmt: skip


def write_gateway_config(options: GatewayOptions) -> Path:
    """Write the configuration into the runtime folder (0700) and check its TLS files."""
    if not options.insecure:
        assert options.certs_dir is not None
        missing = [str(options.certs_dir / f) for f in (CA_CERT, SERVER_CERT, SERVER_KEY)
                   if not (options.certs_dir / f).is_file()]  # fmt: skip
        if missing:
            raise GatewayError(
                f"missing {', '.join(missing)}: create them with `hepafed certs init`"
            )
    options.runtime_dir.mkdir(parents=True, exist_ok=True)
    options.runtime_dir.chmod(0o700)
    options.config_path.write_text(gateway_config(options))
    return options.config_path


def check_gateway_config(options: GatewayOptions) -> None:
    """``nginx -t`` on the written configuration; a GatewayError with nginx's message."""
    nginx = find_nginx()
    proc = subprocess.run(
        [*gateway_command(options, nginx), "-t", "-q"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise GatewayError(f"the gateway configuration is refused by nginx: {proc.stderr.strip()}")


def start_gateway(options: GatewayOptions, **popen: Any) -> subprocess.Popen[bytes]:
    """Write the configuration and start nginx in the foreground as a child process."""
    write_gateway_config(options)
    check_gateway_config(options)
    return subprocess.Popen(gateway_command(options, find_nginx()), start_new_session=True, **popen)
