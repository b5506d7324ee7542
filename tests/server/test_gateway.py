"""The Fleet gateway: nginx in front of the SuperLink forwards the Fleet API and nothing else.

The configuration is checked as text, then a real nginx (Debian's; CI installs it,
elsewhere the test is skipped unless HEPAFED_REQUIRE_NGINX is set) runs it in
front of a small TLS upstream that records every request it receives, and an
attacker's requests are tried against it: other APIs, other methods, encoded
and dot-segment paths that try to climb out of /v1/fleet/.
"""

from __future__ import annotations

import http.client
import os
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from common.crypto import SERVER_CERT, SERVER_KEY, create_certificates
from server.gateway import (
    NODE_AUTH_HEADERS,
    GatewayError,
    GatewayOptions,
    find_nginx,
    gateway_config,
    start_gateway,
)
from tests.deploy import free_port


def _options(tmp_path: Path, **kw: object) -> GatewayOptions:
    values: dict[str, object] = {"runtime_dir": tmp_path / "gw", "upstream": "127.0.0.1:9093",
                                 "certs_dir": tmp_path / "certs"}  # fmt: skip
    values.update(kw)
    return GatewayOptions(**values)  # type: ignore[arg-type]


def test_the_configuration_forwards_only_fleet_posts(tmp_path: Path) -> None:
    text = gateway_config(_options(tmp_path, host="10.0.0.5", port=9092))
    assert "listen 10.0.0.5:9092 ssl;" in text
    assert "location /v1/fleet/ {\n      limit_except POST { deny all; }" in text
    assert text.count("proxy_pass https://127.0.0.1:9093;") == 2  # fleet and /health only
    assert "proxy_ssl_verify on;" in text and "proxy_ssl_name localhost;" in text
    assert "location / {\n      default_type text/plain;\n      return 403" in text
    assert 'if ($http_flwr_signature = "") { return 401; }' in text
    assert "limit_conn per_address 16;" in text
    assert f"ssl_certificate_key {tmp_path / 'certs' / 'server.key'};" in text
    plain = gateway_config(_options(tmp_path, insecure=True, certs_dir=None))
    assert "ssl" not in plain.replace("proxy_ssl", "") and "proxy_pass http://" in plain


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"certs_dir": None}, "needs --certs"),
        ({"port": 0}, "not in 1..65535"),
        ({"upstream": "x; include /etc/passwd"}, "nginx would parse"),
        ({"host": "0.0.0.0 ssl; #"}, "nginx would parse"),
        ({"max_body_mb": 0}, "at least 1"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(GatewayError, match=message):
        _options(tmp_path, **kw)


def _nginx_or_skip() -> None:
    try:
        find_nginx()
    except GatewayError:
        if os.environ.get("HEPAFED_REQUIRE_NGINX"):
            raise
        pytest.skip("nginx is not installed (apt-get install nginx)")


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, {**dict(self.headers), "_len": str(len(body))}))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """nginx on a free port in front of a recording TLS upstream; (port, ca.pem)."""
    _nginx_or_skip()
    root = tmp_path_factory.mktemp("gateway")
    certs = create_certificates(root / "certs", ["127.0.0.1", "localhost"])
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(root / "certs" / SERVER_CERT, root / "certs" / SERVER_KEY)
    upstream.socket = context.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    upstream_address = f"127.0.0.1:{upstream.server_address[1]}"
    options = GatewayOptions(
        root / "gw", upstream_address, root / "certs", host="127.0.0.1", port=port, max_body_mb=1
    )
    proc = start_gateway(options)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (options.runtime_dir / "nginx.pid").exists():
                break
            time.sleep(0.1)
        time.sleep(0.3)
        yield port, certs.ca_cert
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        upstream.shutdown()


def _request(
    gateway: tuple[int, Path], method: str, path: str, body: bytes = b"x", signed: bool = True
) -> int:
    port, ca = gateway
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca)), timeout=20
    )
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(len(body)))
        if signed:  # a SuperNode's auth headers (checked by the SuperLink, present here)
            for header in NODE_AUTH_HEADERS:
                conn.putheader(header, "abc")
        conn.endheaders(body)
        return conn.getresponse().status
    finally:
        conn.close()


def test_fleet_requests_reach_the_superlink_with_their_headers(
    gateway: tuple[int, Path],
) -> None:
    _Recorder.seen.clear()
    assert _request(gateway, "POST", "/v1/fleet/pull-messages", b"p" * 1000) == 200
    assert _request(gateway, "GET", "/health", b"") == 200
    method, path, headers = _Recorder.seen[0]
    assert (method, path, headers["flwr-public-key"], headers["_len"]) == (
        "POST", "/v1/fleet/pull-messages", "abc", "1000")  # fmt: skip
    assert [p for _, p, _ in _Recorder.seen] == ["/v1/fleet/pull-messages", "/health"]


ATTACKS = [
    ("POST", "/v1/control/register-node"),  # `flwr supernode register`
    ("POST", "/v1/control/start-run"),  # `flwr run`
    ("POST", "/v1/control/stop-run"),
    ("POST", "/v1/runtime/acquire-task"),  # the ServerApp's Runtime API
    ("GET", "/v1/fleet/pull-messages"),  # a Fleet path, but not a POST
    ("PUT", "/v1/fleet/push-messages"),
    ("POST", "/v1/fleet/../control/start-run"),
    ("POST", "/v1/fleet/%2e%2e/control/start-run"),
    ("POST", "/v1/fleet/..%2fcontrol/start-run"),
    ("POST", "/v1/fleet%2f../control/start-run"),
    ("POST", "//v1/control/start-run"),
    ("POST", "/V1/FLEET/../control/start-run"),
    ("POST", "/docs"),
    ("POST", "/openapi.json"),
]


@pytest.mark.parametrize(("method", "path"), ATTACKS)
def test_everything_else_is_refused_before_the_superlink(
    gateway: tuple[int, Path], method: str, path: str
) -> None:
    _Recorder.seen.clear()
    status = _request(gateway, method, path)
    assert status in (400, 403), status
    assert _Recorder.seen == [], f"{method} {path} reached the SuperLink"


def test_an_unsigned_fleet_request_is_refused_before_its_body_is_read(
    gateway: tuple[int, Path],
) -> None:
    """Flower's SuperLink reads a whole body before it checks the node's signature: the
    gateway refuses a Fleet request without the node-auth headers first (no 2 GB bodies
    from anyone on the network)."""
    _Recorder.seen.clear()
    status = _request(gateway, "POST", "/v1/fleet/push-object", b"z" * 100_000, signed=False)
    assert status == 401 and _Recorder.seen == []


def test_a_message_over_the_limit_is_refused(gateway: tuple[int, Path]) -> None:
    _Recorder.seen.clear()
    assert _request(gateway, "POST", "/v1/fleet/push-object", b"z" * (2 * 1024 * 1024)) == 413
    assert _Recorder.seen == []


def test_nginx_is_found_where_debian_puts_it() -> None:
    _nginx_or_skip()
    assert Path(find_nginx()).name == "nginx"
    assert shutil.which("nginx", path="/usr/sbin") is None or find_nginx()
