"""The coordinating center's subcommands of ``hepafed``: certificates, server, runs
(the hospital's are in ``simulations.site_cli``).

``hepafed certs init``            CA + server certificate (coordinating center)
``hepafed server start``          the Flower SuperLink on loopback + the Fleet gateway (nginx)
``hepafed server gateway``        the Fleet gateway alone (compose.yaml)
``hepafed server register-site``  register a site's public key with the SuperLink
``hepafed server list-sites``     the SuperNodes the SuperLink knows
``hepafed run``                   submit this project's app, follow it, say where the report is

The command lines themselves come from ``server.deploy.superlink_command`` and
``server.gateway.gateway_config``; ``server start`` supervises the two processes
(when one ends, the other is stopped, with its exit code).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

from client.app_approval import bundle_sha256
from common.crypto import (
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    CertificateFiles,
    certificate_hosts,
    create_certificates,
    public_key_fingerprint,
)
from common.keys import site_name_problem
from common.processes import supervise, with_flower_on_path
from common.signing import SERVER_PUBLIC_KEY, UNSIGNED_WARNING, Keyring, load_public_key
from server.deploy import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ControlConnection,
    ControlError,
    RunRequest,
    SuperLinkOptions,
    check_superlink_files,
    list_nodes,
    register_site,
    runtime_host,
    start_superlink,
    submit_run,
    superlink_command,
    warn_insecure,
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
from simulations.site_cli import add_site_commands

EXIT_OK, EXIT_PROBLEMS = 0, 1
PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def _exec(command: list[str], env: dict[str, str]) -> int:
    """Replace this process with ``command`` (Flower's own process handles signals)."""
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    sys.stdout.flush()
    full_env = with_flower_on_path({**os.environ, **env})
    program = shutil.which(command[0], path=full_env["PATH"]) or command[0]
    os.execve(program, command, full_env)
    return EXIT_PROBLEMS  # pragma: no cover (execve does not return)


# --- certs ---------------------------------------------------------------------------


def cmd_certs_init(args: argparse.Namespace) -> int:
    """Create the CA and the server certificate (or keep complete existing ones)."""
    out = Path(args.out)
    # the CA key never sits with the SuperLink's files: by default in a sibling folder that
    # the operator moves offline (it is needed only to issue new certificates)
    ca_dir = Path(args.ca_dir) if args.ca_dir else out.parent / f"{out.name}-ca-offline"
    if not args.ca_dir and (out / CA_KEY).is_file():
        ca_dir = out  # a folder made before: kept as it is (`server start` warns about it)
    # The SuperLink's own SuperExec reaches its Runtime API over TLS on loopback.
    args.host = [*args.host, *(h for h in LOOPBACK_NAMES if h not in args.host)]
    wanted = [out / CA_CERT, out / SERVER_CERT, out / SERVER_KEY, ca_dir / CA_KEY]
    if args.exist_ok and all(p.is_file() for p in wanted):
        have = set(certificate_hosts(out / SERVER_CERT))
        missing = [h for h in args.host if h not in have]
        if missing:
            raise ValueError(
                f"{out / SERVER_CERT} exists but lacks {', '.join(missing)}; "
                "create new certificates in a fresh folder"
            )
        print(f"certificates in {out} kept (server names: {', '.join(sorted(have))})")
        files = CertificateFiles(
            out / CA_CERT, ca_dir / CA_KEY, out / SERVER_CERT, out / SERVER_KEY
        )
    else:
        files = create_certificates(out, args.host, days=args.days)
        if ca_dir != out:
            ca_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(files.ca_key, ca_dir / CA_KEY)
            shutil.copyfile(files.ca_cert, ca_dir / CA_CERT)
            files = CertificateFiles(
                files.ca_cert, ca_dir / CA_KEY, files.server_cert, files.server_key
            )
        print(f"CA and server certificate for {', '.join(args.host)} in {out}")
    if args.public_out:
        public = Path(args.public_out)
        public.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files.ca_cert, public / CA_CERT)
        print(f"  {public / CA_CERT}: give this file to every site")
    print(f"  {files.ca_cert}: the CA certificate, give it to every site")
    print(f"  {files.server_cert}, {files.server_key}: for `hepafed server start --certs {out}`")
    print(f"  {files.ca_key}: the CA's private key; move {files.ca_key.parent} off this host "
          "(offline storage), never send it")  # fmt: skip
    if args.keyring:
        keyring = Keyring(Path(args.keyring))
        keyring.ensure_server_key()
        print(f"  {keyring.server_private}: the server's signing key (runs: --keyring)")
        print(f"  {keyring.server_public}: give it to every site (`site start --server-key`)")
        if args.public_out:
            shutil.copyfile(keyring.server_public, Path(args.public_out) / SERVER_PUBLIC_KEY)
            print(f"  {Path(args.public_out) / SERVER_PUBLIC_KEY}: the same, for the sites")
    return EXIT_OK


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
    mode = "INSECURE (no TLS, no site authentication)" if options.insecure else "TLS + site auth"
    print(f"Fleet gateway for the sites on {gateway.host}:{gateway.port} ({mode}); "
          "every other API is refused there")  # fmt: skip
    print(f"SuperLink (Control and Runtime APIs, operators only) on {options.host}:"
          f"{options.port}, state in {options.database}")  # fmt: skip
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


def _connection(args: argparse.Namespace) -> ControlConnection:
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
    connection = _connection(args)
    failed = 0
    for key in args.public_key:
        path = Path(key)
        name = args.name or _key_name(path)
        try:
            node_id = register_site(connection, path, name)
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
        nodes = list_nodes(_connection(args))
    except ControlError as e:
        print(f"hepafed: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    for node in nodes:
        print(f"{node.get('node-id')}  {node.get('status')}  online since {node.get('online-at')}")
    return EXIT_OK


# --- run -----------------------------------------------------------------------------


def default_app_dir() -> Path:
    """The Flower app folder: this project's root (holding pyproject.toml) or the cwd."""
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()


def run_dir_of(app_dir: Path, run_config: list[str]) -> str:
    """``output.run-dir`` of a run: the last override, else the app's default."""
    from simulations.cli import parse_overrides

    overrides: dict[str, Any] = parse_overrides(run_config) if run_config else {}
    if "output.run-dir" in overrides:
        return str(overrides["output.run-dir"])
    pyproject = tomllib.loads((app_dir / "pyproject.toml").read_text())
    app_cfg = pyproject.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    return str(app_cfg.get("output", {}).get("run-dir", "runs/flwr"))


def cmd_run(args: argparse.Namespace) -> int:
    """Submit this project's app to a SuperLink, follow its log, report where results are."""
    connection = _connection(args)
    app_dir = Path(args.app).resolve() if args.app else default_app_dir()
    run_config = run_overrides(args)
    run_dir = run_dir_of(app_dir, run_config)
    print(f"app bundle sha256 {bundle_sha256(str(app_dir))}: every site must have approved it "
          "(`hepafed site approve-app`), or it refuses the run's tasks", flush=True)  # fmt: skip
    outcome = submit_run(connection, RunRequest(app_dir, tuple(run_config)))
    print()
    if outcome.run_id is None:
        print(f"run not submitted: {outcome.status}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"run {outcome.run_id}: {outcome.status}")
    where = (
        run_dir
        if Path(run_dir).is_absolute()
        else (f"{run_dir} (relative to the folder `hepafed server start` was run in)")
    )
    print(f"run folder at the coordinating center: {where}")
    print("  report.json, report.html, rounds.jsonl, evaluations.json, checkpoint.pt")
    return EXIT_OK if outcome.completed else EXIT_PROBLEMS


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The run-config overrides ``hepafed run`` submits: ``--resume`` takes the run's own
    config from RUN_DIR/config.json; ``--keyring`` sets ``trust.keys-dir``. A deployment
    without a keyring must say ``trust.sign-updates=false`` (and is warned)."""
    from simulations.cli import parse_overrides

    overrides: list[str] = list(args.run_config)
    if args.resume:
        config = Path(args.resume) / "config.json"
        try:
            recorded = json.loads(config.read_text())["config"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"--resume {args.resume}: cannot read {config} ({e})") from e
        recorded.update({"output.run-dir": str(Path(args.resume).resolve()),
                         "output.resume": True})  # fmt: skip
        overrides = [" ".join(f"{k}={_toml(v)}" for k, v in sorted(recorded.items()))]
    if args.keyring:
        overrides.append(f"trust.keys-dir={_toml(str(Path(args.keyring).resolve()))}")
    given = parse_overrides(overrides) if overrides else {}
    if given.get("trust.sign-updates") is False:
        print(f"warning: {UNSIGNED_WARNING}", file=sys.stderr)
    elif not given.get("trust.keys-dir"):
        raise ValueError(
            "a deployed run needs the federation's keyring to sign models and check site "
            "signatures: give --keyring DIR (from `hepafed certs init --keyring`), or "
            "--run-config 'trust.sign-updates=false' to run unsigned (not for patient data)"
        )
    return overrides


def _toml(value: Any) -> str:
    """A run-config value as Flower's --run-config parses it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


# --- parser --------------------------------------------------------------------------


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--superlink",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"the SuperLink's HOST:PORT (default 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument("--ca", help="the federation's ca.pem (from `hepafed certs init`)")
    p.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")


def add_deploy_commands(
    sub: argparse._SubParsersAction[Any], site_sub: argparse._SubParsersAction[Any]
) -> None:
    """Register ``certs``, ``server``, ``run`` and ``site init/start`` on the parsers."""
    p = sub.add_parser("certs", help="TLS certificates for a deployment")
    certs_sub = p.add_subparsers(dest="certs_command", required=True)
    c = certs_sub.add_parser("init", help="create a CA and the SuperLink's server certificate")
    c.add_argument("--out", required=True, help="folder for ca.pem, server.pem, server.key")
    c.add_argument(
        "--host",
        action="append",
        required=True,
        help="a host name or IP the sites use to reach the SuperLink (repeat for several); "
        "localhost and 127.0.0.1 are always added",
    )
    c.add_argument(
        "--ca-dir",
        help="write ca.key (and a copy of ca.pem) here, to keep offline "
        "(default: OUT-ca-offline beside --out, never inside it)",
    )
    c.add_argument("--public-out", help="also copy ca.pem here, to hand to the sites")
    c.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    c.add_argument("--exist-ok", action="store_true", help="keep complete existing files")
    c.add_argument("--keyring", help="also create the server's update-signing key here")
    c.set_defaults(func=cmd_certs_init)

    add_site_commands(site_sub)

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
    _add_connection_args(c)
    c.set_defaults(func=cmd_server_register_site)

    c = server_sub.add_parser("list-sites", help="list registered SuperNodes and their status")
    _add_connection_args(c)
    c.set_defaults(func=cmd_server_list_sites)

    p = sub.add_parser("run", help="submit a federated run to a SuperLink and follow it")
    _add_connection_args(p)
    p.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    p.add_argument("--app", help="the Flower app folder (default: this project)")
    p.add_argument("--keyring", help="the federation's keyring (server signing key, site keys)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR (its own run config) from its last completed round",
    )
    p.set_defaults(func=cmd_run)
