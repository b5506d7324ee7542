"""The coordinating center's ``hepafed`` commands: certificates and the server
(``hepafed run`` is in ``server.run_cli``, the hospital's commands in ``client.cli``).

``hepafed certs init``            CA + server certificate (coordinating center)
``hepafed server start``          the Flower SuperLink on loopback + the Fleet gateway (nginx)
``hepafed server gateway``        the Fleet gateway alone (compose.yaml)
``hepafed server register-site``  register a site's public key with the SuperLink
``hepafed server list-sites``     the SuperNodes the SuperLink knows

The command lines themselves come from ``server.deploy.superlink_command`` and
``server.gateway.gateway_config``; ``server start`` supervises the two processes
(when one ends, the other is stopped, with its exit code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from common.cli import EXIT_OK, EXIT_PROBLEMS
from common.crypto import (
    CA_KEY,
    public_key_fingerprint,
    warn_insecure,
)
from common.keys import site_name_problem
from common.processes import supervise, with_flower_on_path
from common.signing import Keyring, load_public_key
from server.deploy import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    LOOPBACK_NAMES,
    ControlConnection,
    ControlError,
    SuperLinkOptions,
    check_superlink_files,
    list_nodes,
    register_site,
    runtime_host,
    start_superlink,
    superlink_command,
)
from server.gateway import (
    DEFAULT_FLEET_PORT,
    DEFAULT_MAX_BODY_MB,
    GATEWAY_DIR,
    UPSTREAM_TLS_NAME,
    GatewayOptions,
    check_gateway_config,
    find_nginx,
    gateway_command,
    start_gateway,
    write_gateway_config,
)


def _exec(command: list[str], env: dict[str, str]) -> int:
    """Replace this process with ``command`` (Flower's own process handles signals)."""
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    sys.stdout.flush()
    full_env = with_flower_on_path({**os.environ, **env})
    program = shutil.which(command[0], path=full_env["PATH"]) or command[0]
    os.execve(program, command, full_env)
    return EXIT_PROBLEMS  # pragma: no cover (execve does not return)


# --- server --------------------------------------------------------------------------


def superlink_options(args: argparse.Namespace) -> SuperLinkOptions:
    """``SuperLinkOptions`` from ``hepafed server start``'s arguments."""
    return SuperLinkOptions(
        state_dir=Path(args.state).resolve(),
        certs_dir=None if args.insecure else Path(args.certs).resolve(),
        host=args.control_host,
        port=args.control_port,
        insecure=args.insecure,
    )


def gateway_options(args: argparse.Namespace, superlink: SuperLinkOptions) -> GatewayOptions:
    """The Fleet gateway in front of ``superlink``, from ``hepafed server start``'s arguments."""
    return GatewayOptions(
        runtime_dir=superlink.state_dir / GATEWAY_DIR,
        upstream=f"{runtime_host(superlink)}:{superlink.port}",
        certs_dir=superlink.certs_dir,
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        max_body_mb=args.max_message_mb,
    )


CONTROL_EXPOSED_WARNING = (
    "WARNING: --expose-control-api: the SuperLink's Control API (register nodes, submit and "
    "stop runs) listens on {host}, and it has NO authentication: anyone who reaches it can "
    "run code on this server and at every site. Use this only on an isolated operator "
    "network."
)


def cmd_server_start(args: argparse.Namespace) -> int:
    """Run the SuperLink on loopback and the Fleet gateway (nginx) on the public address.

    The two run together: when one ends, the other is stopped.
    """
    if args.insecure:
        warn_insecure()
    options = superlink_options(args)
    if options.host not in (*LOOPBACK_NAMES, "::1"):
        if not args.expose_control_api:
            raise ValueError(
                f"--control-host {options.host}: the SuperLink's Control API has no "
                "authentication and must stay on loopback (operators work on this host, e.g. "
                "over SSH); sites reach the Fleet API through the gateway (--host/--port). "
                "Pass --expose-control-api only for an isolated operator network"
            )
        print(CONTROL_EXPOSED_WARNING.format(host=options.host), file=sys.stderr)
    gateway = gateway_options(args, options)
    if (gateway.host, gateway.port) == (options.host, options.port):
        raise ValueError("--port and --control-port must differ")
    check_superlink_files(options)
    if options.certs_dir is not None and (options.certs_dir / CA_KEY).exists():
        print(
            f"WARNING: {options.certs_dir / CA_KEY} is on the SuperLink host: whoever takes "
            "this host can issue certificates the sites trust. Move it offline (`hepafed "
            "certs init --ca-dir` writes it elsewhere).",
            file=sys.stderr,
        )
    options.state_dir.mkdir(parents=True, exist_ok=True)
    options.flwr_home.mkdir(parents=True, exist_ok=True)
    write_gateway_config(gateway)
    check_gateway_config(gateway)
    from server.superlink_state import registry_path

    mode = "INSECURE (no TLS, no site authentication)" if options.insecure else "TLS + site auth"
    print(f"Fleet gateway for the sites on {gateway.host}:{gateway.port} ({mode}); "
          "every other API is refused there")  # fmt: skip
    print(f"SuperLink (Control and Runtime APIs, operators only) on {options.host}:"
          f"{options.port}, state in memory, registered sites in "
          f"{registry_path(options.database)}")  # fmt: skip
    print(
        "ServerApp runs started with `hepafed run` write their run folder (output.run-dir) "
        f"relative to {Path.cwd()}",
        flush=True,
    )
    print("$ " + " ".join(superlink_command(options)), file=sys.stderr)
    print("$ " + " ".join(gateway_command(gateway, find_nginx())), file=sys.stderr, flush=True)
    superlink = start_superlink(options)
    try:
        nginx = start_gateway(gateway)
    except BaseException:
        superlink.terminate()
        raise
    return supervise({"SuperLink": superlink, "Fleet gateway (nginx)": nginx})


def cmd_server_gateway(args: argparse.Namespace) -> int:
    """Become the Fleet gateway alone, in front of a SuperLink elsewhere (compose.yaml)."""
    if args.insecure:
        warn_insecure()
    options = GatewayOptions(
        runtime_dir=Path(args.runtime_dir).resolve(),
        upstream=args.upstream,
        certs_dir=None if args.insecure else Path(args.certs).resolve(),
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        max_body_mb=args.max_message_mb,
        upstream_tls_name=args.upstream_tls_name,
    )
    write_gateway_config(options)
    check_gateway_config(options)
    print(f"Fleet gateway on {options.host}:{options.port} -> {options.upstream}", flush=True)
    return _exec(gateway_command(options, find_nginx()), {})


def connection(args: argparse.Namespace) -> ControlConnection:
    if args.insecure:
        warn_insecure()
    ca = Path(args.ca) if args.ca else None
    if ca is not None and not args.insecure and not ca.is_file():
        raise FileNotFoundError(f"CA certificate {ca} does not exist")
    return ControlConnection(args.superlink, None if args.insecure else ca, args.insecure)


def _key_name(path: Path) -> str:
    parts = path.read_text().split()
    return parts[2] if len(parts) > 2 else path.stem


def cmd_server_register_site(args: argparse.Namespace) -> int:
    """Register one or more sites' public keys with the SuperLink."""
    control = connection(args)
    failed = 0
    for key in args.public_key:
        path = Path(key)
        name = args.name or _key_name(path)
        try:
            node_id = register_site(control, path, name)
        except ControlError as e:
            if args.exist_ok and "already" in str(e).lower():
                print(f"{name}: already registered")
                continue
            print(f"hepafed: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: registered ({public_key_fingerprint(path)}), SuperNode id {node_id}")
    if args.keyring:
        for key in args.public_key:
            path = Path(key)
            name = args.name or _key_name(path)
            try:
                target = register_signing_key(args.keyring, path, name)
                print(f"{name}: update-signing key in {target}")
            except ValueError as e:
                print(f"hepafed: {e}", file=sys.stderr)
                failed += 1
    return EXIT_PROBLEMS if failed else EXIT_OK


def register_signing_key(keyring_dir: str, public_key: Path, name: str) -> Path:
    """Copy a site's public key into the run keyring as ``sites/NAME.pub`` (the key its
    updates must be signed with); an existing different key is never replaced."""
    load_public_key(public_key)  # readable, and a key type that signs
    problem = site_name_problem(name)
    if problem is not None:
        raise ValueError(f"{public_key}: {problem}; give --name")
    target = Keyring(Path(keyring_dir)).site_public(name)
    key = public_key.read_bytes().split()[:2]
    if target.exists() and target.read_bytes().split()[:2] != key:
        raise ValueError(
            f"{target} holds another key for {name}; remove it first if the site's key changed"
        )
    for other in sorted(target.parent.glob("*.pub")) if target.parent.is_dir() else []:
        if other != target and other.read_bytes().split()[:2] == key:
            raise ValueError(
                f"{public_key} is already filed as {other.stem} ({other}): one key speaks for "
                "one site; remove that file first if the site was renamed"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(public_key, target)
    return target


def cmd_server_list_sites(args: argparse.Namespace) -> int:
    """Print the SuperNodes the SuperLink knows and their status."""
    try:
        nodes = list_nodes(connection(args))
    except ControlError as e:
        print(f"hepafed: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    for node in nodes:
        print(f"{node.get('node-id')}  {node.get('status')}  online since {node.get('online-at')}")
    return EXIT_OK


# --- parser --------------------------------------------------------------------------


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--superlink",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"the SuperLink's HOST:PORT (default 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument("--ca", help="the federation's ca.pem (from `hepafed certs init`)")
    p.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``server`` and its commands to the root's subparsers (``common.cli``)."""
    p = sub.add_parser("server", help="the coordinating center's SuperLink")
    server_sub = p.add_subparsers(dest="server_command", required=True)
    c = server_sub.add_parser(
        "start", help="start the SuperLink (loopback) and the Fleet gateway for the sites"
    )
    c.add_argument("--certs", default="certs", help="folder from `hepafed certs init`")
    c.add_argument("--state", default="superlink-state", help="persistent state folder")
    c.add_argument(
        "--host", default="0.0.0.0", help="the gateway's address, reached by the sites "
        "(default 0.0.0.0)"
    )  # fmt: skip
    c.add_argument(
        "--port", type=int, default=DEFAULT_FLEET_PORT,
        help=f"the gateway's port (default {DEFAULT_FLEET_PORT})",
    )  # fmt: skip
    c.add_argument(
        "--control-host", default=DEFAULT_HOST,
        help=f"the SuperLink's own address, for operators only (default {DEFAULT_HOST})",
    )  # fmt: skip
    c.add_argument("--control-port", type=int, default=DEFAULT_PORT,
                   help=f"the SuperLink's own port (default {DEFAULT_PORT})")  # fmt: skip
    c.add_argument(
        "--expose-control-api", action="store_true",
        help="allow --control-host off loopback (an isolated operator network only)",
    )  # fmt: skip
    c.add_argument(
        "--max-message-mb",
        type=int,
        default=DEFAULT_MAX_BODY_MB,
        help=f"largest message a site may send (default {DEFAULT_MAX_BODY_MB})",
    )
    c.add_argument(
        "--insecure", action="store_true", help="no TLS and no site auth (local tests only)"
    )
    c.set_defaults(func=cmd_server_start)

    c = server_sub.add_parser(
        "gateway", help="run only the Fleet gateway (nginx) in front of a SuperLink elsewhere"
    )
    c.add_argument("--certs", default="certs", help="folder with ca.pem, server.pem, server.key")
    c.add_argument("--upstream", required=True, help="the SuperLink's HOST:PORT")
    c.add_argument("--upstream-tls-name", default=UPSTREAM_TLS_NAME,
                   help="the name checked in the SuperLink's certificate")  # fmt: skip
    c.add_argument("--runtime-dir", required=True, help="folder for nginx's config and logs")
    c.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    c.add_argument("--port", type=int, default=DEFAULT_FLEET_PORT)
    c.add_argument("--max-message-mb", type=int, default=DEFAULT_MAX_BODY_MB)
    c.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    c.set_defaults(func=cmd_server_gateway)

    c = server_sub.add_parser("register-site", help="allow a site's key to join")
    c.add_argument("public_key", nargs="+", help="the site's site_key.pub (one or more)")
    c.add_argument("--name", help="site name (default: the key's comment)")
    c.add_argument("--exist-ok", action="store_true", help="an already registered key is fine")
    c.add_argument("--keyring", help="also add the key to the run keyring as sites/NAME.pub")
    add_connection_args(c)
    c.set_defaults(func=cmd_server_register_site)

    c = server_sub.add_parser("list-sites", help="list registered SuperNodes and their status")
    add_connection_args(c)
    c.set_defaults(func=cmd_server_list_sites)
