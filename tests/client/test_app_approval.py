"""The site's list of approved app bundles: reproducible hashes, approve, revoke, refuse."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from client.app_approval import (
    APPROVALS_FILE,
    REFUSALS_LOG,
    AppNotApproved,
    ApprovalsError,
    approve,
    log_refusal,
    read_approvals,
    revoke,
)
from common.app_bundle import bundle_sha256

ROOT = Path(__file__).resolve().parents[2]


def _app(folder: Path, body: str = "x = 1\n") -> Path:
    """A minimal Flower app folder (what `flwr run` builds a bundle from)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "tiny"\nversion = "1.0.0"\n\n'
        '[tool.flwr.app]\npublisher = "me"\n\n[tool.flwr.app.components]\n'
        'serverapp = "tiny.server:app"\nclientapp = "tiny.client:app"\n'
    )
    (folder / "tiny").mkdir(exist_ok=True)
    (folder / "tiny" / "client.py").write_text(body)
    return folder


def test_a_bundle_hash_is_reproducible_and_changes_with_the_code(tmp_path: Path) -> None:
    first = bundle_sha256(str(_app(tmp_path / "a")))
    again = bundle_sha256(str(_app(tmp_path / "b")))  # same files elsewhere, built later
    other = bundle_sha256(str(_app(tmp_path / "c", "import os; os.system('id')\n")))
    assert first == again and first != other and len(first) == 64
    fab = tmp_path / "app.fab"
    fab.write_bytes(b"bundle bytes")
    assert bundle_sha256(str(fab)) == hashlib.sha256(b"bundle bytes").hexdigest()
    assert bundle_sha256(first) == first
    with pytest.raises(ValueError, match="not a SHA-256, a .fab file or a Flower app folder"):
        bundle_sha256(str(tmp_path / "nothing"))


def test_approve_revoke_and_refuse(tmp_path: Path) -> None:
    path = tmp_path / APPROVALS_FILE
    content = b"the reviewed release"
    digest = hashlib.sha256(content).hexdigest()
    with pytest.raises(AppNotApproved, match=r"is not approved; refused at site a before"):
        read_approvals(path).require(content, "a")
    approve(path, digest, "release 1")
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_approvals(path).require(content, "a") == digest
    with pytest.raises(AppNotApproved, match="is not approved"):  # one byte more: another one
        read_approvals(path).require(content + b" ", "a")
    revoke(path, digest)
    approvals = read_approvals(path)
    assert not approvals.approved and [r.sha256 for r in approvals.revoked] == [digest]
    with pytest.raises(AppNotApproved, match="was revoked at 20"):
        approvals.require(content, "a")
    with pytest.raises(KeyError, match="is not approved"):
        revoke(path, digest)
    approve(path, digest)  # approved again on purpose: no longer listed as revoked
    assert read_approvals(path).allows(digest) and not read_approvals(path).revoked


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[app]]\nsha256 = 'abc'\n", "is not 64 lowercase hex digits"),
        ("[[app]]\nlabel = 'no hash'\n", "sha256 None"),
        ("[approved]\nx = 1\n", "unknown table"),
        ("[[app]\n", "cannot read the approved apps"),
    ],
)
def test_a_malformed_list_is_a_named_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / APPROVALS_FILE
    path.write_text(text)
    with pytest.raises(ApprovalsError, match=message):
        read_approvals(path)


def test_refusals_are_logged_at_the_site(tmp_path: Path) -> None:
    log_refusal(tmp_path, "app bundle sha256 ab... refused")
    log_refusal(tmp_path, "second")
    lines = (tmp_path / REFUSALS_LOG).read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "app bundle sha256 ab... refused",
        "second",
    ]
    assert os.stat(tmp_path / REFUSALS_LOG).st_mode & 0o777 == 0o600


def test_the_project_bundle_leaves_out_runs_and_data(tmp_path: Path) -> None:
    """The hash a site approves does not move with run folders or generated data."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))).namelist()
    assert "client/executor.py" in names and "server/app.py" in names
    assert not [n for n in names if n.startswith(("runs/", "data/", ".venv/"))]
