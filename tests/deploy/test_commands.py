"""Certificates, site keys and the command lines, without starting Flower."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.app_approval import APPROVALS_FILE
from client.executor import limit_threads, task_command
from client.executor import parser as executor_parser
from client.node import (
    SuperNodeOptions,
    check_site_folder,
    executor_command,
    init_site_folder,
    read_node_config,
    supernode_command,
)
from common.cli import build_parser, main
from common.crypto import certificate_hosts, create_certificates, create_site_keys
from server.deploy import (
    ControlConnection,
    RunRequest,
    SuperLinkOptions,
    check_superlink_files,
    run_command,
    superlink_command,
)
from server.run_cli import run_dir_of, run_overrides
from tests.deploy import ROOT


def test_certificates_have_sans_chain_to_the_ca_and_private_keys_are_0600(
    tmp_path: Path,
) -> None:
    files = create_certificates(tmp_path, ["127.0.0.1", "localhost", "superlink.example.org"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (files.ca_key, files.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        create_certificates(tmp_path, ["127.0.0.1"])


def test_site_keys_are_what_flower_supernode_auth_reads(tmp_path: Path) -> None:
    files = create_site_keys(tmp_path, comment="site-a")
    private = serialization.load_ssh_private_key(files.private_key.read_bytes(), None)
    public = serialization.load_ssh_public_key(files.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert files.private_key.stat().st_mode & 0o777 == 0o600
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(files.public_key)  # Flower's own loader accepts it


def test_site_folder_has_keys_and_templates(tmp_path: Path) -> None:
    folder = init_site_folder("hospital-a", tmp_path / "a")
    assert read_node_config(folder.root) == {"site-name": "hospital-a"}
    header = folder.manifest_template.read_text().splitlines()[0].split(",")
    assert {"case_id", "image_arterial", "mask", "label", "split"} <= set(header)
    assert init_site_folder("hospital-a", tmp_path / "a", exist_ok=True) == folder
    with pytest.raises(FileExistsError):
        init_site_folder("hospital-a", tmp_path / "a")
    assert check_site_folder(tmp_path / "missing")
    assert check_site_folder(folder.root)  # no manifest.csv


def test_superlink_command_is_secure_by_default(tmp_path: Path) -> None:
    cmd = superlink_command(SuperLinkOptions(state_dir=tmp_path, certs_dir=tmp_path / "c"))
    assert cmd[0] == "hepafed-superlink"  # flower-superlink, objects in memory (server.superlink)
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"):
        assert flag in cmd
    assert "--insecure" not in cmd
    assert "--disable-runtime-dependency-installation" in cmd
    assert cmd[cmd.index("--isolation") + 1] == "subprocess"
    assert cmd[cmd.index("--database") + 1] == str(tmp_path / "superlink.db")
    insecure = superlink_command(SuperLinkOptions(state_dir=tmp_path, insecure=True))
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    with pytest.raises(ValueError, match="--insecure"):
        SuperLinkOptions(state_dir=tmp_path)


def test_supernode_command_is_secure_by_default(tmp_path: Path) -> None:
    options = SuperNodeOptions(
        superlink="link.example.org:9093",
        site_dir=tmp_path / "data",
        site_name="hospital-a",
        private_key=tmp_path / "site_key",
        ca=tmp_path / "ca.pem",
    )
    cmd = supernode_command(options)
    # Flower's SuperNode through hepafed's launcher, which only shortens its idle poll
    assert cmd[1:9] == ["-m", "client.supernode", "--idle-poll", "1", "--busy-poll", "0.2",
                        "--superlink", "link.example.org:9093"]  # fmt: skip
    assert cmd[cmd.index("--root-certificates") + 1] == str(tmp_path / "ca.pem")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "site_key")
    assert cmd[cmd.index("--node-config") + 1] == (
        f"site-dir='{tmp_path / 'data'}' site-name='hospital-a' "
        f"signing-key='{tmp_path / 'site_key'}'"
    )
    assert "--insecure" not in cmd and "--allow-runtime-dependency-installation" not in cmd
    # Flower's own executor would run any bundle: the SuperNode leaves its tasks to the site
    # executor, and its Runtime API (which hands out tasks) listens on loopback only
    assert cmd[cmd.index("--isolation") + 1] == "process"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    executor = executor_command(options, tmp_path / "keys", parent_pid=7)
    assert executor[1:4] == ["-m", "client.executor", "serve"]
    assert executor[executor.index("--approvals") + 1] == str(tmp_path / "keys" / APPROVALS_FILE)
    assert executor[executor.index("--runtime-api-address") + 1] == "127.0.0.1:9094"
    assert executor[-2:] == ["--parent-pid", "7"]
    assert "--cold" not in executor  # tasks fork from the warm zygote unless the site says so
    cold = executor_command(replace(options, cold_tasks=True), tmp_path / "keys")
    assert cold[-1] == "--cold"
    assert "--threads" not in executor  # torch's default unless the site limits it
    shared = executor_command(replace(options, threads=2), tmp_path / "keys")
    assert shared[-2:] == ["--threads", "2"]
    task_args = executor_parser().parse_args([*shared[3:], "--token", "t"])
    assert task_command(task_args, "t")[-2:] == ["--threads", "2"]  # each task gets it
    with pytest.raises(ValueError, match="--threads 0: give at least 1"):
        replace(options, threads=0)
    with pytest.raises(ValueError, match="--insecure"):
        SuperNodeOptions(superlink="x:1", site_dir=tmp_path, site_name="a")


def test_a_task_uses_the_threads_its_site_allows() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        limit_threads(before + 1)  # one more than now: the call, not the default, decides
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_server_start_keeps_the_control_api_on_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``control-api-exposed``: the SuperLink's own port is the unauthenticated Control API."""
    assert main(["certs", "init", "--out", str(tmp_path / "c"), "--host", "fl.example.org"]) == 0
    for host in ("0.0.0.0", "10.0.0.5"):
        argv = ["server", "start", "--certs", str(tmp_path / "c"), "--state", str(tmp_path / "s")]
        assert main([*argv, "--control-host", host]) == 2
        assert "must stay on loopback" in capsys.readouterr().err
    args = build_parser().parse_args(["server", "start"])
    assert (args.host, args.port, args.control_host, args.control_port) == (
        "0.0.0.0", 9092, "127.0.0.1", 9093)  # fmt: skip


def test_flower_cli_connection_and_run_command(tmp_path: Path) -> None:
    toml = ControlConnection("10.0.0.5:9093", tmp_path / "ca.pem").config_toml()
    assert 'address = "10.0.0.5:9093"' in toml and "root-certificates" in toml
    assert "insecure = true" in ControlConnection("h:1", insecure=True).config_toml()
    with pytest.raises(ValueError):
        ControlConnection("no-port", tmp_path / "ca.pem")
    cmd = run_command(RunRequest(ROOT, ("federation.num-rounds=2",)))
    assert cmd[:3] == ["flwr", "run", str(ROOT)] and "--stream" in cmd
    assert cmd[-2:] == ["--run-config", "federation.num-rounds=2"]
    assert run_dir_of(ROOT, ["output.run-dir='/srv/r1' seed=1"]) == "/srv/r1"
    assert run_dir_of(ROOT, []) == "runs/flwr"


def test_cli_has_the_deploy_commands() -> None:
    parser = build_parser()
    for argv in (
        ["certs", "init", "--out", "c", "--host", "127.0.0.1"],
        ["site", "init", "hospital-a", "--out", "k"],
        ["site", "start", "--site-dir", "d", "--keys", "k", "--superlink", "h:1", "--ca", "c"],
        ["server", "start", "--certs", "c", "--state", "s"],
        ["server", "gateway", "--upstream", "superlink:9093", "--runtime-dir", "r"],
        ["site", "approve-app", "a" * 64, "--keys", "k"],
        ["site", "revoke-app", "a" * 64, "--keys", "k"],
        ["site", "list-apps", "--keys", "k"],
        ["server", "register-site", "k.pub", "--ca", "c"],
        ["run", "--superlink", "h:1", "--ca", "c", "--run-config", "seed=1"],
    ):
        assert callable(parser.parse_args(argv).func)


def test_certs_init_adds_loopback_and_server_start_checks_the_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--out", str(certs), "--host", "fl.example.org"]) == 0
    # the CA's key is never written with the SuperLink's files (`ca-key-offline`)
    assert not (certs / "ca.key").exists()
    offline = tmp_path / "certs-ca-offline" / "ca.key"
    assert offline.is_file() and offline.stat().st_mode & 0o777 == 0o600
    assert set(certificate_hosts(certs / "server.pem")) == {
        "fl.example.org",
        "localhost",
        "127.0.0.1",
    }
    assert main(["certs", "init", "--out", str(certs), "--host", "fl.example.org"]) == 2
    again = ["certs", "init", "--out", str(certs), "--host", "fl.example.org", "--exist-ok"]
    assert main(again) == 0
    assert "kept" in capsys.readouterr().out
    check_superlink_files(SuperLinkOptions(state_dir=tmp_path, certs_dir=certs))
    narrow = create_certificates(tmp_path / "narrow", ["fl.example.org"])
    with pytest.raises(ValueError, match="127.0.0.1"):
        check_superlink_files(SuperLinkOptions(state_dir=tmp_path, certs_dir=narrow.ca_cert.parent))
    check_superlink_files(
        SuperLinkOptions(state_dir=tmp_path, certs_dir=narrow.ca_cert.parent, host="fl.example.org")
    )


def test_site_start_refuses_a_folder_without_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert main(["site", "init", "hospital-a", "--out", str(keys)]) == 0
    (tmp_path / "data").mkdir()
    argv = ["site", "start", "--site-dir", str(tmp_path / "data"), "--keys", str(keys)]
    argv += ["--superlink", "127.0.0.1:1", "--ca", str(tmp_path / "missing.pem")]
    assert main(argv) == 2  # the CA file does not exist
    create_certificates(tmp_path / "certs", ["127.0.0.1"])
    argv[-1] = str(tmp_path / "certs" / "ca.pem")
    assert main(argv) == 1
    assert "manifest.csv does not exist" in capsys.readouterr().err


def test_run_needs_a_keyring_or_an_explicit_unsigned_run(tmp_path: Path) -> None:
    """``deploy-no-keyring``: a deployed run signs models and checks site signatures."""
    from server.run_cli import run_overrides

    args = build_parser().parse_args(["run", "--superlink", "h:1", "--ca", "c"])
    with pytest.raises(ValueError, match="needs the federation's keyring"):
        run_overrides(args)
    args = build_parser().parse_args(
        ["run", "--superlink", "h:1", "--ca", "c", "--keyring", str(tmp_path)]
    )
    assert run_overrides(args) == [f'trust.keys-dir="{tmp_path.resolve()}"']
    args = build_parser().parse_args(
        ["run", "--superlink", "h:1", "--ca", "c", "--run-config", "trust.sign-updates=false"]
    )
    assert run_overrides(args) == ["trust.sign-updates=false"]


def test_resume_submits_the_runs_own_config(tmp_path: Path) -> None:
    import json

    from common.cli import parse_overrides
    from common.config import RunConfig
    from server.run_cli import run_overrides

    cfg = RunConfig().replace({"federation.num-rounds": 3, "trust.keys-dir": "/k"})
    (tmp_path / "config.json").write_text(json.dumps({"config": cfg.to_flat(), "sites": []}))
    args = build_parser().parse_args(
        ["run", "--superlink", "h:1", "--ca", "c", "--resume", str(tmp_path)]
    )
    submitted = parse_overrides(run_overrides(args))
    expected = cfg.replace({"output.run-dir": str(tmp_path.resolve()), "output.resume": True})
    assert RunConfig.from_flat(submitted) == expected


def test_site_start_hands_the_sites_own_policy_to_its_node(tmp_path: Path) -> None:
    """The [policy] of node-config.toml reaches the ClientApp as policy.* node-config keys:
    the site's decision, read from its own folder, never from the run config."""
    from flwr.common.config import parse_config_args

    from client.cli import supernode_options
    from client.policy import SitePolicy
    from tests.deploy import set_site_policy

    keys = tmp_path / "keys"
    assert main(["site", "init", "hospital-a", "--out", str(keys)]) == 0
    set_site_policy(keys, {"min-cases": 8, "max-calibration-bins": 4})
    (tmp_path / "data").mkdir()
    args = build_parser().parse_args(
        [
            "site",
            "start",
            "--site-dir",
            str(tmp_path / "data"),
            "--keys",
            str(keys),
            "--superlink",
            "fl.example.org:9092",
            "--insecure",
        ]
    )
    options = supernode_options(args)
    parsed = parse_config_args([options.node_config()])
    policy = SitePolicy.from_node_config(parsed)
    assert (policy.min_cases, policy.max_calibration_bins) == (8, 4)
    assert policy.require_signed_models and policy.state_dir == str(keys / "state")
    assert parsed["site-name"] == "hospital-a"


def test_one_key_speaks_for_one_plainly_named_site(tmp_path: Path) -> None:
    """``key-two-names``: a key filed for one site is refused under a second name; a name that
    is not a plain identifier never becomes a key file's path."""
    from common.signing import Keyring, SigningKeyError
    from server.cli import register_signing_key

    files = create_site_keys(tmp_path / "b", comment="hospital-b")
    keyring = tmp_path / "keyring"
    assert register_signing_key(str(keyring), files.public_key, "hospital-b").is_file()
    assert register_signing_key(str(keyring), files.public_key, "hospital-b").is_file()  # again
    with pytest.raises(ValueError, match="already filed as hospital-b"):
        register_signing_key(str(keyring), files.public_key, "hospital-b2")
    for name in ("./hospital-b", "../../etc/x", "", "a b", ".hidden"):
        with pytest.raises(ValueError, match="site name"):
            register_signing_key(str(keyring), files.public_key, name)
        with pytest.raises(SigningKeyError, match="site name"):
            Keyring(keyring).site_public(name)
        with pytest.raises(ValueError, match="site name"):
            init_site_folder(name, tmp_path / "x")


def test_the_superlink_never_opens_flowers_legacy_listeners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``legacy-grpc-listener``: an inherited FLWR_INTERNAL_GRPC_CONTROL_API=1 would make
    Flower open its gRPC Control API on every interface, around the gateway."""
    import server.deploy as deploy

    seen: dict[str, dict[str, str]] = {}

    def popen(command: list[str], env: dict[str, str], **kw: object) -> object:
        seen["env"] = env
        return object()

    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_FLEET_API", "1")
    monkeypatch.setattr(deploy.subprocess, "Popen", popen)
    deploy.start_superlink(SuperLinkOptions(state_dir=tmp_path, insecure=True))
    assert not {"FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"} & set(seen["env"])
    assert seen["env"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_run_with_seeds_submits_one_run_per_seed_and_combines_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hepafed run --seeds 2``: two runs, each with its seed and its own run folder, then
    one report combining them (the SuperLink replaced by a stand-in that writes each run's
    report, a committed example with the AUCs moved for the second seed)."""
    import copy
    import json

    import server.run_cli as run_cli
    from common.cli import parse_overrides
    from server.deploy import RunOutcome

    example = Path(__file__).parents[1] / "server" / "data" / "reports" / "holdout-external"
    report = json.loads((example / "report.json").read_text())
    submitted: list[dict[str, object]] = []

    def fake_submit(control: object, request: RunRequest) -> RunOutcome:
        given = parse_overrides(list(request.run_config))
        submitted.append(given)
        folder = Path(str(given["output.run-dir"]))
        folder.mkdir(parents=True)
        doc = copy.deepcopy(report)
        for row in doc["sites"]:
            if "auc" in row:
                row["auc"]["estimate"] -= 0.01 * (len(submitted) - 1)
        (folder / "report.json").write_text(json.dumps(doc))
        return RunOutcome(len(submitted), "finished:completed", {})

    monkeypatch.setattr(run_cli, "submit_run", fake_submit)
    run_dir = tmp_path / "runs"
    argv = ["run", "--superlink", "h:1", "--insecure", "--keyring", str(tmp_path), "--seeds"]
    argv += ["2", "--run-config", f'seed=7 output.run-dir="{run_dir}"']
    assert main(argv) == 0
    assert [(g["seed"], g["output.run-dir"]) for g in submitted] == [
        (7, str(run_dir / "seed-7")),
        (8, str(run_dir / "seed-8")),
    ]
    combined = json.loads((run_dir / "report.json").read_text())
    assert combined["training_noise"]["seeds"] == [7, 8]
    assert (run_dir / "report.html").is_file()
    assert "report combining seeds 7, 8" in capsys.readouterr().out
    # --resume continues one run, not several
    args = build_parser().parse_args(
        ["run", "--superlink", "h:1", "--ca", "c", "--resume", str(run_dir), "--seeds", "2"]
    )
    with pytest.raises(ValueError, match="--resume continues one run"):
        run_overrides(args)


def test_run_seeds_is_one_tracking_parent_with_each_seeds_run_its_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hepafed run --seeds` at the coordinating center: a TensorBoard (or MLflow) parent
    run in RUN_DIR before the first seed is submitted, so each seed's ServerApp run (here
    started as the ServerApp starts it) is its child, and the parent gets the combined
    report's figures."""
    import json

    from common.cli import parse_overrides
    from common.config import RunConfig
    from server import run_cli
    from server.deploy import RunOutcome
    from server.tracking import read_record, start_run

    pytest.importorskip("tensorboard", reason="the tensorboard extra")
    example = Path(__file__).parents[1] / "server" / "data" / "reports" / "holdout-external"
    report = json.loads((example / "report.json").read_text())
    parents: list[dict[str, object] | None] = []

    def fake_submit(control: object, request: RunRequest) -> RunOutcome:
        given = parse_overrides(list(request.run_config))
        folder = Path(str(given["output.run-dir"]))
        cfg = RunConfig().replace(given)
        parents.append(read_record(folder.parent))  # what the ServerApp finds there
        run = start_run(cfg, folder, f"run-{given['seed']}")  # as RunRecorder.start does
        (folder / "config.json").write_text(json.dumps({"config": cfg.to_flat(), "sites": []}))
        (folder / "report.json").write_text(json.dumps(report))
        run.end()
        return RunOutcome(len(parents), "finished:completed", {})

    monkeypatch.setattr(run_cli, "submit_run", fake_submit)
    run_dir = tmp_path / "runs"
    argv = ["run", "--superlink", "h:1", "--insecure", "--keyring", str(tmp_path), "--seeds",
            "2", "--run-config", f'seed=7 output.run-dir="{run_dir}" '
            'tracking.backend="tensorboard"']  # fmt: skip
    assert main(argv) == 0
    assert all(p is not None and p["role"] == "parent" for p in parents)
    children = [read_record(run_dir / f"seed-{s}") for s in (7, 8)]
    assert all(c is not None and c["role"] == "run" for c in children)
    assert (run_dir / "tensorboard").is_dir() and (run_dir / "report.json").is_file()
    assert {p.name for p in (run_dir / "tensorboard").iterdir()} >= {"seed-7", "seed-8"}
