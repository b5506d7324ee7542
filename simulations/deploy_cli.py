"""The deployment subcommands of ``hepafed``: certificates, sites, server, runs.

``hepafed certs init``            CA + server certificate (coordinating center)
``hepafed site init NAME``        a site folder: key pair, node config, manifest template
``hepafed server start``          the Flower SuperLink (TLS, site authentication)
``hepafed server register-site``  register a site's public key with the SuperLink
``hepafed server list-sites``     the SuperNodes the SuperLink knows
``hepafed site start``            the hospital's Flower SuperNode
``hepafed run``                   submit this project's app, follow it, say where the report is

The command lines themselves come from ``server.deploy.superlink_command`` and
``client.node.supernode_command``; ``server start`` and ``site start`` replace
this process with Flower's (signals and exit codes are Flower's own).
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

from client.node import (
    DEFAULT_RUNTIME_PORT,
    SuperNodeOptions,
    check_site_folder,
    init_site_folder,
    read_node_config,
    site_folder_is_writable,
    supernode_command,
    supernode_environment,
)
from common.crypto import (
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    SITE_PRIVATE_KEY,
    CertificateFiles,
    certificate_hosts,
    create_certificates,
    public_key_fingerprint,
)
from common.processes import with_flower_on_path
from common.signing import SERVER_PUBLIC_KEY, Keyring, load_public_key
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
    submit_run,
    superlink_command,
    superlink_environment,
    warn_insecure,
)
from server.trust import UNSIGNED_WARNING

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
    ca_dir = Path(args.ca_dir) if args.ca_dir else out
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
    print(f"  {files.ca_key}: the CA's private key; keep it offline, never send it")
    if args.keyring:
        keyring = Keyring(Path(args.keyring))
        keyring.ensure_server_key()
        print(f"  {keyring.server_private}: the server's signing key (runs: --keyring)")
        print(f"  {keyring.server_public}: give it to every site (`site start --server-key`)")
        if args.public_out:
            shutil.copyfile(keyring.server_public, Path(args.public_out) / SERVER_PUBLIC_KEY)
            print(f"  {Path(args.public_out) / SERVER_PUBLIC_KEY}: the same, for the sites")
    return EXIT_OK


# --- site ----------------------------------------------------------------------------


def cmd_site_init(args: argparse.Namespace) -> int:
    """Create a site folder with its key pair and templates."""
    folder = init_site_folder(args.name, Path(args.out), exist_ok=args.exist_ok)
    print(f"site {args.name} in {folder.root}")
    print(f"  {folder.private_key}: private key (0600), never leaves this hospital")
    print(f"  {folder.public_key}: send it to the coordinating center")
    print(f"    fingerprint {public_key_fingerprint(folder.public_key)}")
    print(f"  {folder.node_config}: site name and data folder for `hepafed site start`")
    print(f"  {folder.manifest_template}: the manifest's columns, for manifest.csv")
    if args.export_public:
        export = Path(args.export_public)
        export.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder.public_key, export / f"{args.name}.pub")
        print(f"  public key copied to {export / (args.name + '.pub')}")
    return EXIT_OK


def supernode_options(args: argparse.Namespace) -> SuperNodeOptions:
    """``SuperNodeOptions`` from ``hepafed site start``'s arguments and node-config.toml."""
    keys = Path(args.keys) if args.keys else None
    template = read_node_config(keys) if keys else {}
    site_dir = args.site_dir or template.get("site-dir")
    if not site_dir:
        raise ValueError("give --site-dir (the folder holding manifest.csv)")
    site_path = Path(site_dir).resolve()
    name = args.site_name or template.get("site-name") or site_path.name
    private_key = keys / SITE_PRIVATE_KEY if keys else None
    if private_key is not None and not private_key.is_file():
        raise FileNotFoundError(f"{private_key} does not exist: run `hepafed site init` first")
    ca = Path(args.ca).resolve() if args.ca else None
    if ca is not None and not ca.is_file():
        raise FileNotFoundError(f"CA certificate {ca} does not exist")
    server_key = Path(args.server_key).resolve() if args.server_key else None
    if server_key is None and keys is not None and (keys / SERVER_PUBLIC_KEY).is_file():
        server_key = (keys / SERVER_PUBLIC_KEY).resolve()
    if server_key is not None and not server_key.is_file():
        raise FileNotFoundError(f"server key {server_key} does not exist")
    if server_key is None:
        print(
            "warning: no --server-key (the federation's server.pub): this site cannot check "
            "the models it receives and will refuse runs with signed updates",
            file=sys.stderr,
        )
    return SuperNodeOptions(
        superlink=args.superlink,
        site_dir=site_path,
        site_name=name,
        private_key=private_key.resolve() if private_key else None,
        ca=None if args.insecure else ca,
        insecure=args.insecure,
        runtime_port=args.runtime_port,
        server_key=server_key,
        allowed_hooks=template.get("allowed-hooks", ""),
    )


def cmd_site_start(args: argparse.Namespace) -> int:
    """Check the data folder (read-only), then become the site's SuperNode."""
    if args.insecure:
        warn_insecure()
    options = supernode_options(args)
    problems = check_site_folder(options.site_dir)
    if problems:
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        print("site start: the data folder is not usable; fix it (see `hepafed site check`)")
        return EXIT_PROBLEMS
    if site_folder_is_writable(options.site_dir):
        print(
            f"note: {options.site_dir} is writable by this process; the node only reads it, "
            "a read-only mount is safer",
            file=sys.stderr,
        )
    print(f"site {options.site_name}: serving {options.site_dir} to {options.superlink}")
    home = Path(args.flwr_home) if args.flwr_home else None
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
    return _exec(supernode_command(options), supernode_environment(home))


# --- server --------------------------------------------------------------------------


def superlink_options(args: argparse.Namespace) -> SuperLinkOptions:
    """``SuperLinkOptions`` from ``hepafed server start``'s arguments."""
    return SuperLinkOptions(
        state_dir=Path(args.state).resolve(),
        certs_dir=None if args.insecure else Path(args.certs).resolve(),
        host=args.host,
        port=args.port,
        insecure=args.insecure,
    )


def cmd_server_start(args: argparse.Namespace) -> int:
    """Become the SuperLink (TLS and site authentication unless ``--insecure``)."""
    if args.insecure:
        warn_insecure()
    options = superlink_options(args)
    check_superlink_files(options)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    options.flwr_home.mkdir(parents=True, exist_ok=True)
    mode = "INSECURE (no TLS, no site authentication)" if options.insecure else "TLS + site auth"
    print(f"SuperLink on {options.host}:{options.port}, {mode}, state in {options.database}")
    print(
        "ServerApp runs started with `hepafed run` write their run folder (output.run-dir) "
        f"relative to {Path.cwd()}"
    )
    return _exec(superlink_command(options), superlink_environment(options))


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
    target = Keyring(Path(keyring_dir)).site_public(name)
    if target.exists() and target.read_bytes().split()[:2] != public_key.read_bytes().split()[:2]:
        raise ValueError(
            f"{target} holds another key for {name}; remove it first if the site's key changed"
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
    c.add_argument("--ca-dir", help="keep ca.key (and a copy of ca.pem) here (default: --out)")
    c.add_argument("--public-out", help="also copy ca.pem here, to hand to the sites")
    c.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    c.add_argument("--exist-ok", action="store_true", help="keep complete existing files")
    c.add_argument("--keyring", help="also create the server's update-signing key here")
    c.set_defaults(func=cmd_certs_init)

    c = site_sub.add_parser("init", help="create a site folder with its key pair and templates")
    c.add_argument("name", help="the site's name (how it appears in the report)")
    c.add_argument("--out", required=True, help="the site folder to create")
    c.add_argument("--export-public", help="also copy the public key here as NAME.pub")
    c.add_argument("--exist-ok", action="store_true", help="keep an existing key pair")
    c.set_defaults(func=cmd_site_init)

    c = site_sub.add_parser("start", help="start this hospital's Flower SuperNode")
    c.add_argument("--site-dir", help="data folder holding manifest.csv (opened read-only)")
    c.add_argument("--keys", help="the folder from `hepafed site init` (key pair, node config)")
    c.add_argument("--site-name", help="default: node-config.toml's site-name")
    c.add_argument("--superlink", required=True, help="the SuperLink's HOST:PORT")
    c.add_argument("--ca", help="the federation's ca.pem")
    c.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    c.add_argument(
        "--runtime-port",
        type=int,
        default=DEFAULT_RUNTIME_PORT,
        help=f"local port of the SuperNode's own API (default {DEFAULT_RUNTIME_PORT})",
    )
    c.add_argument("--flwr-home", help="Flower's home for this node (default ~/.flwr)")
    c.add_argument(
        "--server-key", help="the federation's server.pub (default: server.pub in --keys)"
    )
    c.set_defaults(func=cmd_site_start)

    p = sub.add_parser("server", help="the coordinating center's SuperLink")
    server_sub = p.add_subparsers(dest="server_command", required=True)
    c = server_sub.add_parser("start", help="start the Flower SuperLink")
    c.add_argument("--certs", default="certs", help="folder from `hepafed certs init`")
    c.add_argument("--state", default="superlink-state", help="persistent state folder")
    c.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    c.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    c.add_argument(
        "--insecure", action="store_true", help="no TLS and no site auth (local tests only)"
    )
    c.set_defaults(func=cmd_server_start)

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
