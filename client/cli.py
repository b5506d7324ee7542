"""The hospital's ``hepafed site`` commands: its data, its site folder, its node, its apps.

``hepafed site check DIR``        validate a data folder's manifest and images (read-only)
``hepafed site init NAME``        a site folder: key pair, node config and policy, templates
``hepafed site start``            the hospital's Flower SuperNode and its site executor
``hepafed site approve-app``      approve an app bundle by hash (revoke-app, list-apps)
``hepafed site explain DIR``      Grad-CAM overlays of a run's model on the site's own cases

The command lines come from ``client.node.supernode_command`` and
``client.node.executor_command``; ``site start`` supervises the two processes (when
one ends, the other is stopped, with its exit code). Nothing of ``server`` is imported
here: a hospital's commands load the hospital's code only (``common.cli``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from client.app_approval import APPROVALS_FILE, approve, read_approvals, revoke
from client.node import (
    DEFAULT_RUNTIME_PORT,
    NODE_CONFIG_FILE,
    SuperNodeOptions,
    check_site_folder,
    executor_command,
    init_site_folder,
    read_node_config,
    site_folder_is_writable,
    start_supernode,
    supernode_command,
    supernode_environment,
    write_auth_secret,
)
from client.policy import PolicyError
from client.policy_file import read_policy
from client.supernode import BUSY_POLL_S, IDLE_POLL_S
from common.app_bundle import bundle_sha256
from common.cli import EXIT_OK, EXIT_PROBLEMS, parse_overrides
from common.config import RunConfig
from common.crypto import SITE_PRIVATE_KEY, public_key_fingerprint, warn_insecure
from common.dicomweb import open_source
from common.dicomweb_secrets import DicomWebConfigError
from common.keys import Split
from common.manifest import ManifestError, SiteManifest
from common.processes import supervise, with_flower_on_path
from common.signing import SERVER_PUBLIC_KEY
from common.site_files import inspect_site

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cmd_site_check(args: argparse.Namespace) -> int:
    """Validate a site folder and print its summary (read-only for the site folder; exit 1
    on any problem). With ``--keys``, the node config's policy gives the data root and the
    DICOMweb server, whose series are retrieved into the node's cache folder."""
    cfg = RunConfig().replace(parse_overrides(args.run_config))
    manifest: SiteManifest | None
    data_root, pacs = args.data_root, None
    try:
        if args.keys:
            policy = read_policy(Path(args.keys) / NODE_CONFIG_FILE)
            data_root = data_root or policy.data_root or None
            pacs = open_source(policy.dicomweb_secrets, policy.cache_dir)
        manifest, problems = inspect_site(
            Path(args.site_dir), cfg.data.channels, cfg.task, cfg.data.spatial_dims,
            data_root=data_root, pacs=pacs,
        )  # fmt: skip
    except ManifestError as e:
        manifest, problems = None, list(e.problems)
    except (DicomWebConfigError, PolicyError) as e:
        print(f"site check: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    if manifest is not None:
        from common.acquisition import format_survey, survey_site

        print("\n".join(format_survey(survey_site(manifest))))
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return EXIT_PROBLEMS
    print("  no problems found")
    return EXIT_OK


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
        policy=read_policy(keys / NODE_CONFIG_FILE) if keys else None,
        cold_tasks=args.cold_tasks,
        idle_poll_s=args.idle_poll,
        busy_poll_s=args.busy_poll,
        threads=args.threads,
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
    keys_dir = Path(args.keys).resolve() if args.keys else None
    if keys_dir is None:
        raise ValueError(
            "give --keys (the folder from `hepafed site init`): the apps this site approved "
            f"({APPROVALS_FILE}) and its refusals log live there"
        )
    approvals = read_approvals(keys_dir / APPROVALS_FILE)
    if not approvals.approved:
        print(
            f"note: {approvals.path} approves no app yet: every task will be refused until "
            "the site approves a reviewed release with `hepafed site approve-app`",
            file=sys.stderr,
        )
    print(f"site {options.site_name}: serving {options.site_dir} to {options.superlink}; "
          f"runs only the {len(approvals.approved)} app bundle(s) approved in "
          f"{approvals.path}", flush=True)  # fmt: skip
    home = Path(args.flwr_home) if args.flwr_home else None
    with tempfile.TemporaryDirectory(prefix="hepafed-site-") as private:
        options = replace(options, auth_secret_file=write_auth_secret(Path(private)))
        print("$ " + " ".join(supernode_command(options)), file=sys.stderr, flush=True)
        supernode = start_supernode(options, home)
        executor = subprocess.Popen(
            executor_command(options, keys_dir, parent_pid=supernode.pid),
            start_new_session=True,
            cwd=PROJECT_ROOT,
            env=with_flower_on_path({**os.environ, **supernode_environment(home)}),
        )
        return supervise({"SuperNode": supernode, "site executor": executor})


def cmd_site_approve_app(args: argparse.Namespace) -> int:
    """Approve an app bundle (by hash, .fab file or reviewed app folder) at this site."""
    digest = bundle_sha256(args.source)
    path = Path(args.keys) / APPROVALS_FILE
    approve(path, digest, args.label or args.source)
    print(f"approved app bundle sha256 {digest} in {path}")
    return EXIT_OK


def cmd_site_revoke_app(args: argparse.Namespace) -> int:
    """Withdraw an approved app bundle; the next task of that bundle is refused."""
    path = Path(args.keys) / APPROVALS_FILE
    revoke(path, bundle_sha256(args.source))
    print(f"revoked app bundle sha256 {bundle_sha256(args.source)} in {path}")
    return EXIT_OK


def cmd_site_list_apps(args: argparse.Namespace) -> int:
    """The app bundles this site approved and revoked."""
    approvals = read_approvals(Path(args.keys) / APPROVALS_FILE)
    for a in approvals.approved:
        print(f"approved {a.sha256}  {a.approved_at}  {a.label}")
    for r in approvals.revoked:
        print(f"revoked  {r.sha256}  {r.revoked_at}")
    if not approvals.approved and not approvals.revoked:
        print(f"no app approved in {approvals.path}")
    return EXIT_OK


def cmd_site_explain(args: argparse.Namespace) -> int:
    """Write Grad-CAM overlays of a run's final model on this site's cases into its folder."""
    from client.explain_cli import ExplainError, explain_site  # torch, MONAI: only when chosen
    from common.badcases import BadCaseError, NoUsableCasesError
    from common.weights import WeightsError

    try:
        done = explain_site(
            Path(args.site_dir), Path(args.run), split=args.split,
            out=Path(args.out) if args.out else None, max_cases=args.max_cases,
            model_sha256=args.model_sha256 or "",
            data_root=Path(args.data_root) if args.data_root else None,
        )  # fmt: skip
    except (ExplainError, ManifestError, BadCaseError, NoUsableCasesError, WeightsError) as e:
        print(f"site explain: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"model SHA-256 {done.model_sha256}")
    if not args.model_sha256:
        print(
            "note: the checkpoint was not checked against the run's evidence: compare this "
            "hash with report.json's provenance.model_sha256 (of a run `hepafed audit verify` "
            "finds intact), or pass it as --model-sha256",
            file=sys.stderr,
        )
    print(f"{done.cases} case(s) explained in {done.folder} (0700; sent nowhere)")
    print(f"  open {done.folder / 'index.html'}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``site`` and its commands to the root's subparsers (``common.cli``)."""
    p = sub.add_parser("site", help="a hospital's commands")
    site_sub = p.add_subparsers(dest="site_command", required=True)
    c = site_sub.add_parser("check", help="validate a site's manifest and images (read-only)")
    c.add_argument("site_dir", help="the site folder holding manifest.csv")
    c.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    c.add_argument(
        "--data-root",
        help="a folder outside the site folder that manifest paths may lead to (the site "
        "policy's data-root; default: every path stays inside the site folder)",
    )
    c.add_argument(
        "--keys",
        help="the folder from `hepafed site init`: its node-config.toml's [policy] gives the "
        "data root and the DICOMweb server (dicomweb-secrets, cache-dir) of dicomweb: cells",
    )
    c.set_defaults(func=cmd_site_check)

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
    c.add_argument(
        "--cold-tasks",
        action="store_true",
        help="start a fresh Python for every task (as Flower's own executor does) instead of "
        "forking it from a warm process that imported torch once; slower",
    )
    c.add_argument(
        "--idle-poll",
        type=float,
        default=IDLE_POLL_S,
        metavar="SECONDS",
        help=f"how long the SuperNode waits before asking the SuperLink again when no message "
        f"came (default {IDLE_POLL_S:g}; Flower's own is 3: fewer requests, slower rounds)",
    )
    c.add_argument(
        "--busy-poll",
        type=float,
        default=BUSY_POLL_S,
        metavar="SECONDS",
        help=f"the same wait for 30 s after the site sent a reply, when a round's next message "
        f"is near (default {BUSY_POLL_S:g}; give the --idle-poll value for one rate; a "
        "federation of many sites may want a longer one: each site asks 1/SECONDS times a "
        "second meanwhile)",
    )
    c.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads each task's training and evaluation may use (default: all the "
        "cores this node may use, at most its container's CPU limit); set it when the site "
        "shares its machine, e.g. with other sites' nodes",
    )
    c.set_defaults(func=cmd_site_start)

    c = site_sub.add_parser(
        "approve-app", help="approve an app bundle to run at this site (by its SHA-256)"
    )
    c.add_argument("source", help="the bundle's SHA-256, a .fab file, or a reviewed app folder")
    c.add_argument("--keys", required=True, help="the site folder from `hepafed site init`")
    c.add_argument("--label", help="what the bundle is (e.g. 'hepafed 0.2.0, reviewed by X')")
    c.set_defaults(func=cmd_site_approve_app)
    c = site_sub.add_parser("revoke-app", help="withdraw an approved app bundle")
    c.add_argument("source", help="the bundle's SHA-256, a .fab file, or an app folder")
    c.add_argument("--keys", required=True, help="the site folder from `hepafed site init`")
    c.set_defaults(func=cmd_site_revoke_app)
    c = site_sub.add_parser("list-apps", help="the app bundles this site approved and revoked")
    c.add_argument("--keys", required=True, help="the site folder from `hepafed site init`")
    c.set_defaults(func=cmd_site_list_apps)

    c = site_sub.add_parser(
        "explain",
        help="Grad-CAM overlays of a run's model on this site's cases, kept in the site folder",
        description="Grad-CAM of a run's final model on a split of this site's cases, for its "
        "clinicians: one PNG per case, index.html and explanations.json in "
        "SITE_DIR/explanations/RUN_NAME/ (0700), sent nowhere. Classification runs with "
        "data.spatial-dims = 2 only (a 3-D run is refused).",
    )
    c.add_argument("site_dir", help="the site folder holding manifest.csv")
    c.add_argument("--run", required=True, help="the run folder (config.json, checkpoint.pt)")
    c.add_argument("--split", default=Split.TEST.value, choices=[s.value for s in Split])
    c.add_argument("--out", help="the output folder (default SITE_DIR/explanations/RUN_NAME)")
    c.add_argument("--max-cases", type=_positive, help="explain the split's first N cases only")
    c.add_argument(
        "--model-sha256",
        help="refuse a checkpoint whose model hash is not this one (report.json's "
        "provenance.model_sha256, of a run whose audit trail verifies)",
    )
    c.add_argument(
        "--data-root", help="a folder outside the site folder that manifest paths may lead to"
    )
    c.set_defaults(func=cmd_site_explain)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 1")
    return value
