"""A real Orthanc PACS on loopback for the DICOMweb tests, and nginx for TLS in front of it.

Debian's ``orthanc`` and ``orthanc-dicomweb`` (``.ci/run`` installs them and sets
``HEPAFED_REQUIRE_ORTHANC=1``; elsewhere the tests that need them are skipped). Orthanc
runs with a temporary configuration: HTTP on a free loopback port, no DICOM port, remote
access refused, basic authentication with a random password, the DICOMweb plugin at
``/dicom-web``, storage in a temporary folder. Debian's Orthanc 1.10 crashes on its own
HTTPS, so TLS is tested through nginx in front of it (``tls_proxy``), as a hospital would
often run it.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import free_port

REQUIRE = "HEPAFED_REQUIRE_ORTHANC"
SEARCH_PATH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)
USER = "hepafed"
START_TIMEOUT_S = 30.0


def _missing(reason: str) -> None:
    if os.environ.get(REQUIRE):
        pytest.fail(f"{reason}, and {REQUIRE} is set")
    pytest.skip(reason)


def orthanc_or_skip() -> tuple[str, str]:
    """Orthanc's executable and its DICOMweb plugin, with dicomweb-client importable; the
    test is skipped (failed under ``HEPAFED_REQUIRE_ORTHANC``) when one is missing."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SEARCH_PATH])
    binary = shutil.which("Orthanc", path=path)
    plugins = [p for pattern in PLUGINS for p in sorted(glob.glob(pattern))]
    if binary is None or not plugins:
        _missing("Orthanc with its DICOMweb plugin is not installed "
                 "(apt-get install orthanc orthanc-dicomweb)")  # fmt: skip
    try:
        import dicomweb_client  # noqa: F401
    except ImportError:
        _missing("dicomweb-client is not installed (pip install -e '.[dicomweb]')")
    assert binary is not None
    return binary, plugins[0]


def nginx_or_skip() -> str:
    """nginx's executable (skipped, or failed under ``HEPAFED_REQUIRE_NGINX``, without it)."""
    from server.gateway import GatewayError, find_nginx

    try:
        return find_nginx()
    except GatewayError:
        if os.environ.get("HEPAFED_REQUIRE_NGINX"):
            raise
        pytest.skip("nginx is not installed (apt-get install nginx)")


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: where it listens and how to log in."""

    port: int
    password: str
    log: Path
    user: str = USER

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, files: Iterable[Path]) -> int:
        """Store DICOM files through Orthanc's REST API (``POST /instances``); how many."""
        import requests

        n = 0
        with requests.Session() as session:
            session.auth = (self.user, self.password)
            for path in files:
                response = session.post(f"{self.url}/instances", data=path.read_bytes(),
                                        timeout=30)  # fmt: skip
                response.raise_for_status()
                n += 1
        return n


def _config(root: Path, port: int, password: str, plugin: str) -> dict[str, object]:
    storage = root / "storage"
    return {
        "Name": "hepafed-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: password},
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "HttpThreadsCount": 4,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "StorageCompression": False,
    }


def _wait_until_up(server: Orthanc, process: subprocess.Popen[bytes]) -> None:
    import requests

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({process.returncode}): {server.log.read_text()}")
        try:
            answer = requests.get(f"{server.url}/system", auth=(server.user, server.password),
                                  timeout=2)  # fmt: skip
            if answer.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer in {START_TIMEOUT_S:g} s: {server.log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@contextmanager
def running_orthanc(root: Path) -> Iterator[Orthanc]:
    """Orthanc on a free loopback port with its storage under ``root``, stopped at the end."""
    binary, plugin = orthanc_or_skip()
    root.mkdir(parents=True, exist_ok=True)
    port, password = free_port(), secrets.token_urlsafe(16)
    config = root / "orthanc.json"
    config.write_text(json.dumps(_config(root, port, password, plugin), indent=2))
    config.chmod(0o600)
    server = Orthanc(port, password, root / "orthanc.log")
    with server.log.open("wb") as log:
        process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        _wait_until_up(server, process)
        yield server
    finally:
        _stop(process)


@contextmanager
def tls_proxy(root: Path, upstream_port: int, certs: Path) -> Iterator[int]:
    """nginx on a free loopback port: TLS (``certs``' server.pem/key) in front of
    ``127.0.0.1:upstream_port``; yields its port."""
    nginx = nginx_or_skip()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    temp = "\n".join(f"  {k}_temp_path {root / ('tmp-' + k)};"
                     for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    (root / "nginx.conf").write_text(f"""worker_processes 1;
daemon off;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temp}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {certs / "server.pem"};
    ssl_certificate_key {certs / "server.key"};
    location / {{
      proxy_pass http://127.0.0.1:{upstream_port};
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_set_header Host $host;
    }}
  }}
}}
""")
    process = subprocess.Popen(
        [nginx, "-e", str(root / "error.log"), "-p", str(root), "-c", str(root / "nginx.conf")],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (root / "nginx.pid").exists() and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(root / 'error.log').read_text()}")
            time.sleep(0.05)
        time.sleep(0.2)
        yield port
    finally:
        _stop(process)
