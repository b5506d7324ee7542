"""DICOMweb series as image sources, against a scripted server: the cell syntax, the secrets
file, the cache of instances, and every failure named (tests/common/test_dicomweb_orthanc.py
runs the same against a real Orthanc)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
import torch

from common.badcases import SKIPPED_CASE_REASONS, BadCaseError, BadInput, skipped_fields
from common.config_sections import DataConfig
from common.data import load_split
from common.dicom import read_series
from common.dicomweb import (
    EXTRA,
    DicomWebCellError,
    DicomWebError,
    DicomWebSource,
    SeriesRef,
    is_dicomweb_cell,
    make_client,
    open_source,
    parse_cell,
    redact_uids,
)
from common.dicomweb_secrets import DicomWebConfigError, DicomWebSettings, read_secrets
from common.keys import BadCasePolicy
from common.manifest import open_manifest
from common.site_files import inspect_site
from tests.dicom_series import ct_volume, write_ct_series, write_nifti_volume

PASSWORD = "s3cret-never-shown"
CHANNELS = ("ct",)
TASK = "lesion-malignancy"


# ---- a scripted DICOMweb server -----------------------------------------------------------


def _series(folder: Path, seed: int = 0) -> list[Any]:
    """The instances of one CT series (written by ``write_ct_series``), as a server has them."""
    files = write_ct_series(folder, ct_volume(shape=(12, 10, 3), seed=seed))
    return [pydicom.dcmread(f) for f in files]


def _ref(instances: list[Any]) -> SeriesRef:
    return SeriesRef(str(instances[0].StudyInstanceUID), str(instances[0].SeriesInstanceUID))


class FakeServer:
    """``DICOMwebClient``'s two calls that ``DicomWebSource`` makes, on a dict of series;
    ``fail`` raises an exception for every request."""

    def __init__(self, *series: list[Any]) -> None:
        self.series = {_ref(s): list(s) for s in series}
        self.requests: list[str] = []
        self.fail: BaseException | None = None

    def search_for_instances(self, study_instance_uid: str, series_instance_uid: str,
                             **kw: Any) -> list[dict[str, Any]]:  # fmt: skip
        self.requests.append("qido")
        if self.fail is not None:
            raise self.fail
        found = self.series.get(SeriesRef(study_instance_uid, series_instance_uid), [])
        return [{"00080018": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}} for ds in found]

    def retrieve_instance(self, study: str, series: str, sop: str) -> Any:
        self.requests.append(f"wado {sop}")
        if self.fail is not None:
            raise self.fail
        return next(ds for ds in self.series[SeriesRef(study, series)]
                    if ds.SOPInstanceUID == sop)  # fmt: skip


def _settings(tmp_path: Path) -> DicomWebSettings:
    return DicomWebSettings("https://pacs.test/dicom-web", tmp_path / "pacs.toml",
                            username="hepafed", password=PASSWORD)  # fmt: skip


def _source(tmp_path: Path, server: FakeServer) -> DicomWebSource:
    return DicomWebSource(_settings(tmp_path), tmp_path / "cache", lambda _: server)


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


# ---- the cell --------------------------------------------------------------------------


def test_a_cell_names_a_study_and_a_series_by_their_uids() -> None:
    assert parse_cell(" dicomweb:1.2.840.1/1.2.840.1.2 ") == SeriesRef("1.2.840.1", "1.2.840.1.2")
    assert is_dicomweb_cell("DICOMweb:1.2/3.4") and not is_dicomweb_cell("dicom/case-1/ct")
    for bad in ("dicomweb:1.2.3", "dicomweb:1.2/../../etc", "dicomweb:1.02/3.4",
                "dicomweb:1.2/3.4/5.6", "dicomweb:/1.2", f"dicomweb:1.2/1.{'2' * 70}"):  # fmt: skip
        with pytest.raises(DicomWebCellError, match="write dicomweb:STUDY_UID/SERIES_UID"):
            parse_cell(bad)


def test_uids_are_redacted_from_what_leaves_the_site() -> None:
    text = "DICOMweb series 1.2.840.113619.2.55 (study 2.25.1234567890123): HTTP 404."
    assert redact_uids(text) == "DICOMweb series <UID> (study <UID>): HTTP 404."
    kept = "manifest.csv row 3, kVp 120.5, version 1.2, host 10.0.0.5"
    assert redact_uids(kept) == kept
    # a component with a leading zero (not a valid UID, still one): redacted whole
    assert redact_uids("series 1.3.12.2.1107.5.1.4.0123.30000 failed") == "series <UID> failed"


def test_a_malformed_cell_is_not_echoed() -> None:
    """A cell that is no series reference may hold an identifier (an MRN): the error that
    can reach the server says what is wrong without repeating it."""
    with pytest.raises(DicomWebCellError) as info:
        parse_cell("dicomweb:MRN0042317/1.2.3")
    assert "MRN0042317" not in str(info.value)


def test_an_answer_that_is_no_dicom_is_a_named_failure_not_a_crash(tmp_path: Path) -> None:
    """A PACS whose answer pydicom cannot read (InvalidDicomError is no ValueError) gives the
    site's named DICOMWEB_FAILED bad case, never an exception that stops every message."""
    from pydicom.errors import InvalidDicomError

    instances = _series(tmp_path / "server")
    server, ref = FakeServer(instances), _ref(instances)
    server.fail = InvalidDicomError("File is missing DICOM File Meta Information header")
    with pytest.raises(DicomWebError, match=r"could not be read \(InvalidDicomError\)") as info:
        _source(tmp_path, server).fetch(ref)
    assert info.value.kind == BadInput.DICOMWEB_FAILED


# ---- the secrets file ------------------------------------------------------------------


def _secrets(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "pacs.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_secrets_file_gives_server_ca_and_credentials(tmp_path: Path) -> None:
    (tmp_path / "pacs-ca.pem").write_text("CA")
    path = _secrets(tmp_path, 'url = "https://pacs.example.org/dicom-web/"\nca-file = '
                    f'"pacs-ca.pem"\nusername = "hepafed"\npassword = "{PASSWORD}"\n'
                    "timeout-s = 5\n")  # fmt: skip
    s = read_secrets(path)
    assert (s.url, s.ca_file, s.username, s.password, s.timeout_s) == (
        "https://pacs.example.org/dicom-web",
        tmp_path / "pacs-ca.pem",
        "hepafed",
        PASSWORD,
        5.0,
    )
    assert PASSWORD not in repr(s)
    token = read_secrets(_secrets(tmp_path, 'url = "http://127.0.0.1:8042/dicom-web"\n'
                                  'token = "abc"\n'))  # fmt: skip
    assert token.token == "abc" and token.ca_file is None


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ('url = "https://p/dw"', 0o644, r"mode 0644: others may read .* run `chmod 600 "),
        ('url = "https://p/dw"', 0o640, r"run `chmod 600 "),
        (f'url = "https://p/dw"\npasword = "{PASSWORD}"', 0o600, r"unknown key\(s\) pasword;"),
        (f'url = "https://p/dw"\npassword = "{PASSWORD}"', 0o600, "give both username and"),
        (f'url = "https://hepafed:{PASSWORD}@p/dw"', 0o600, "must not hold credentials"),
        (
            f'url = "http://pacs.hospital.org/dw"\nusername = "u"\npassword = "{PASSWORD}"',
            0o600,
            "plain http to another machine",
        ),
        (f'url = "https://p/dw"\npassword = {PASSWORD}', 0o600, "not valid TOML"),
        ('url = "https://p/dw"\nca-file = "missing.pem"', 0o600, "ca-file .* does not exist"),
        ('url = "https://p/dw"\ntimeout-s = 0', 0o600, "timeout-s must be a number"),
        ("", 0o600, "url is missing"),
    ],
)
def test_an_unusable_secrets_file_is_named_and_never_echoed(
    tmp_path: Path, text: str, mode: int, message: str
) -> None:
    path = _secrets(tmp_path, text, mode)
    with pytest.raises(DicomWebConfigError, match=message) as info:
        read_secrets(path)
    assert str(path) in str(info.value) and PASSWORD not in str(info.value)


def test_a_linked_secrets_file_and_a_ca_others_may_write_are_refused(tmp_path: Path) -> None:
    """The file is opened once without following a link and checked as opened (no swap
    between the check and the read); a CA file others may write could gain their CA."""
    real = _secrets(tmp_path, 'url = "https://p/dw"\nca-file = "ca.pem"')
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    os.chmod(tmp_path / "ca.pem", 0o644)
    assert read_secrets(real).ca_file == tmp_path / "ca.pem"
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    with pytest.raises(DicomWebConfigError, match="a symbolic link is refused"):
        read_secrets(link)
    os.chmod(tmp_path / "ca.pem", 0o666)
    with pytest.raises(DicomWebConfigError, match="may be written by others .*`chmod go-w"):
        read_secrets(real)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_secrets_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = _secrets(tmp_path, 'url = "https://p/dw"')
    os.chown(path, 4242, -1)
    with pytest.raises(DicomWebConfigError, match="belongs to uid 4242, not to the user"):
        read_secrets(path)


def test_the_client_uses_the_ca_the_credentials_and_nothing_from_the_environment(
    tmp_path: Path,
) -> None:
    pytest.importorskip("dicomweb_client")
    ca = tmp_path / "ca.pem"
    settings = replace(_settings(tmp_path), ca_file=ca, timeout_s=7.0)
    client = make_client(settings)
    session = client._session  # what every request of the client goes through
    assert session.verify == str(ca) and session.auth == ("hepafed", PASSWORD)
    assert session.trust_env is False and client._timeout == 7.0
    assert client._max_attempts == 3  # not the library's 5 tries over 30 s
    bearer = make_client(replace(settings, username="", password="", token="tok"))._session
    assert bearer.headers["Authorization"] == "Bearer tok" and bearer.auth is None
    assert make_client(replace(settings, ca_file=None))._session.verify is True


def test_without_the_extra_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dicomweb_client", None)
    monkeypatch.setitem(sys.modules, "dicomweb_client.api", None)
    with pytest.raises(DicomWebConfigError, match="needs the dicomweb extra: " + re.escape(EXTRA)):
        make_client(_settings(tmp_path))


def test_a_site_without_dicomweb_imports_nothing_of_it(tmp_path: Path) -> None:
    site = _site(tmp_path, {"nii-0": "images/case0.nii.gz"})
    code = (
        "import sys; from common.manifest import read_manifest; "
        f"read_manifest({str(site)!r}, ('ct',), 'lesion-malignancy'); "
        "print(sorted(m for m in sys.modules if m.startswith(('dicomweb_client', 'requests'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_a_policy_without_cache_folder_is_refused(tmp_path: Path) -> None:
    assert open_source("", "") is None
    with pytest.raises(DicomWebConfigError, match="set policy.cache-dir"):
        open_source(str(tmp_path / "pacs.toml"), "")


# ---- retrieving into the cache ---------------------------------------------------------


def test_instances_are_retrieved_once_into_an_owner_only_cache(tmp_path: Path) -> None:
    instances = _series(tmp_path / "server")
    server, ref = FakeServer(instances), _ref(instances)
    folder = _source(tmp_path, server).fetch(ref)
    uids = sorted(str(ds.SOPInstanceUID) for ds in instances)
    assert folder == tmp_path / "cache" / "dicomweb-instances" / ref.study / ref.series
    assert sorted(p.name for p in folder.iterdir()) == [f"{u}.dcm" for u in uids]
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
    assert folder.stat().st_mode & 0o777 == folder.parent.stat().st_mode & 0o777 == 0o700
    assert read_series(folder).shape == (12, 10, 3)
    assert server.requests == ["qido", *(f"wado {u}" for u in uids)]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    # a re-run (a new source: another process) asks for the list only
    server.requests.clear()
    again = _source(tmp_path, server)
    assert again.fetch(ref) == folder and again.retrieved == 0 and server.requests == ["qido"]
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_the_cache_follows_the_server_and_a_partial_write_never_counts(tmp_path: Path) -> None:
    instances = _series(tmp_path / "server")
    server, ref = FakeServer(instances), _ref(instances)
    folder = _source(tmp_path, server).fetch(ref)
    deleted = instances[0].SOPInstanceUID
    server.series[ref] = instances[1:]  # deleted on the PACS (a withdrawn consent)
    (folder / f"{instances[1].SOPInstanceUID}.dcm").unlink()
    (folder / f"{instances[1].SOPInstanceUID}.dcm.tmp").write_bytes(b"half a fi")  # a crash
    source = _source(tmp_path, server)
    source.fetch(ref)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in instances[1:])  # fmt: skip
    assert source.retrieved == 1 and not (folder / f"{deleted}.dcm").exists()
    del server.series[ref]  # the whole series deleted: nothing of it stays at the site
    with pytest.raises(DicomWebError, match="no such series"):
        _source(tmp_path, server).fetch(ref)
    assert not folder.exists()


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (requests.ConnectionError("refused"), BadInput.DICOMWEB_UNREACHABLE, "cannot be reached"),
        (requests.exceptions.SSLError("bad cert"), BadInput.DICOMWEB_TLS, "not trusted by"),
        (_http_error(401), BadInput.DICOMWEB_UNAUTHORIZED, "refused the credentials"),
        (_http_error(403), BadInput.DICOMWEB_UNAUTHORIZED, r"\(HTTP 403\)"),
        (_http_error(404), BadInput.DICOMWEB_SERIES_MISSING, r"no such series \(HTTP 404\)"),
        (_http_error(500), BadInput.DICOMWEB_FAILED, "answered HTTP 500"),
        (requests.exceptions.ReadTimeout("slow"), BadInput.DICOMWEB_FAILED, "raise timeout-s"),
        (ValueError("not JSON"), BadInput.DICOMWEB_FAILED, "could not be read"),
    ],
)
def test_every_failure_is_named_with_the_series_and_what_to_do(
    tmp_path: Path, error: BaseException, kind: BadInput, message: str
) -> None:
    instances = _series(tmp_path / "server")
    server, ref = FakeServer(instances), _ref(instances)
    server.fail = error
    source = _source(tmp_path, server)
    with pytest.raises(DicomWebError, match=message) as info:
        source.fetch(ref)
    assert info.value.kind == kind and ref.series in str(info.value)
    assert PASSWORD not in str(info.value) and "pacs.test" not in str(info.value)
    # down, untrusted or refusing: the next series is not asked for (no lockout, no waits)
    server.requests.clear()
    with pytest.raises(DicomWebError) as again:
        source.fetch(SeriesRef("1.2.3", "1.2.3.4"))
    remembered = kind in (BadInput.DICOMWEB_UNREACHABLE, BadInput.DICOMWEB_TLS,
                          BadInput.DICOMWEB_UNAUTHORIZED)  # fmt: skip
    assert (server.requests == []) == remembered and again.value.kind == kind
    assert "1.2.3.4" in str(again.value)


def test_a_missing_series_and_a_non_image_are_named(tmp_path: Path) -> None:
    instances = _series(tmp_path / "server")
    report = pydicom.dcmread(write_ct_series(tmp_path / "sr", ct_volume(shape=(4, 4, 1)))[0])
    del report.PixelData
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    report.StudyInstanceUID = instances[0].StudyInstanceUID
    report.SeriesInstanceUID = instances[0].SeriesInstanceUID
    server, ref = FakeServer(instances + [report]), _ref(instances)
    with pytest.raises(DicomWebError, match=r"\(Comprehensive SR Storage\) has no pixel data"
                       ) as info:  # fmt: skip
        _source(tmp_path, server).fetch(ref)
    assert info.value.kind == BadInput.DICOMWEB_NOT_IMAGE
    assert not (_source(tmp_path, server).folder(ref) / f"{report.SOPInstanceUID}.dcm").exists()
    with pytest.raises(DicomWebError, match="the server has no such series") as missing:
        _source(tmp_path, server).fetch(SeriesRef(ref.study, ref.series + ".9"))
    assert missing.value.kind == BadInput.DICOMWEB_SERIES_MISSING


def test_an_instance_other_than_the_one_asked_for_is_refused(tmp_path: Path) -> None:
    first, second = _series(tmp_path / "a"), _series(tmp_path / "b", seed=1)
    server, ref = FakeServer(first), _ref(first)
    server.retrieve_instance = lambda *a: second[0]  # type: ignore[method-assign]
    with pytest.raises(DicomWebError, match="the server sent instance") as info:
        _source(tmp_path, server).fetch(ref)
    assert info.value.kind == BadInput.DICOMWEB_FAILED
    assert not any(_source(tmp_path, server).folder(ref).iterdir())


# ---- in the manifest and the loader ----------------------------------------------------


def _site(root: Path, images: dict[str, str]) -> Path:
    """A one-channel 3-D site: case id -> image cell; every case has the same mask."""
    site = root / "site-web"
    hu = ct_volume(shape=(12, 10, 3))
    write_nifti_volume(site / "images/case0.nii.gz", hu)
    mask = np.zeros(hu.shape, np.uint8)
    mask[4:8, 3:7, 1:2] = 1
    write_nifti_volume(site / "masks/case0.nii.gz", mask)
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "image_ct", "mask", "label", "split"])
        for i, (cid, cell) in enumerate(images.items()):
            writer.writerow([cid, cell, "masks/case0.nii.gz", i % 2, "train"])
    return site


def test_a_retrieved_series_is_loaded_like_the_same_volume_and_bad_ones_are_skipped(
    tmp_path: Path,
) -> None:
    instances = _series(tmp_path / "server")
    ref = _ref(instances)
    missing = SeriesRef(ref.study, "1.2.826.0.1.3680043.99")
    site = _site(tmp_path, {"web-0": ref.cell, "nii-0": "images/case0.nii.gz",
                            "web-1": missing.cell, "web-2": "dicomweb:not-a-uid"})  # fmt: skip
    source = _source(tmp_path, FakeServer(instances))
    manifest = open_manifest(site, CHANNELS, TASK, pacs=source)
    assert manifest.cases[0].images[0] == source.folder(ref)
    assert manifest.cases[0].metadata["vendor"] == "GE MEDICAL SYSTEMS"  # from the headers
    kinds = {cid: [p.kind for p in ps] for cid, ps in manifest.row_problems.items()}
    assert kinds == {"web-1": [BadInput.DICOMWEB_SERIES_MISSING],
                     "web-2": [BadInput.DICOMWEB_CELL]}  # fmt: skip
    cfg = DataConfig(channels=CHANNELS, spatial_dims=3, roi_size=8, spacing_mm=1.0,
                     window_min=-150.0, on_bad_case=BadCasePolicy.SKIP)  # fmt: skip
    split = load_split(manifest, "train", cfg, TASK)
    assert split.case_ids == ("web-0", "nii-0")
    torch.testing.assert_close(split.images[0], split.images[1], atol=1e-5, rtol=0)
    assert [s.case_id for s in split.skipped] == ["web-1", "web-2"]
    assert missing.series in split.skipped[0].reason and "HTTP" not in split.skipped[0].reason
    # what the reply carries: no UID of the patient's study or series
    sent = skipped_fields(split.skipped, site)[SKIPPED_CASE_REASONS]
    assert sent[0].startswith("manifest.csv: image_ct: DICOMweb series <UID> (study <UID>): ")
    assert ref.study not in " ".join(sent) and missing.series not in " ".join(sent)


def test_under_fail_the_case_error_names_case_series_and_remedy(tmp_path: Path) -> None:
    ref = SeriesRef("1.2.3.4", "1.2.3.4.5")
    site = _site(tmp_path, {"web-0": ref.cell})
    server = FakeServer()
    server.fail = _http_error(401)
    manifest = open_manifest(site, CHANNELS, TASK, pacs=_source(tmp_path, server))
    cfg = DataConfig(channels=CHANNELS, spatial_dims=3, roi_size=8, spacing_mm=1.0)
    with pytest.raises(BadCaseError) as info:
        load_split(manifest, "train", cfg, TASK)
    text = str(info.value)
    assert "case 'web-0'" in text and "1.2.3.4.5" in text and "(HTTP 401)" in text
    assert "check username and password" in text and "manifest.csv row 1" in text
    assert info.value.path == str(site / "manifest.csv") and PASSWORD not in text


def test_a_site_without_a_dicomweb_server_names_the_setting(tmp_path: Path) -> None:
    site = _site(tmp_path, {"web-0": "dicomweb:1.2.3.4/1.2.3.4.5"})
    _, problems = inspect_site(site, CHANNELS, TASK, spatial_dims=3)
    assert [p.kind for p in problems] == [BadInput.DICOMWEB_UNCONFIGURED]
    assert "dicomweb-secrets" in problems[0].message and "--keys" in problems[0].message


def test_a_full_disk_is_named_and_leaves_nothing_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instances = _series(tmp_path / "server")
    server, ref = FakeServer(instances), _ref(instances)

    def full(path: Path, data: bytes, mode: int | None = None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("common.dicomweb.write_atomic", full)
    with pytest.raises(DicomWebError, match="No space left on device") as info:
        _source(tmp_path, server).fetch(ref)
    assert info.value.kind == BadInput.DICOMWEB_FAILED
    assert not any(_source(tmp_path, server).folder(ref).iterdir())


def test_site_check_reads_the_secrets_file_the_node_config_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.cli import main

    site = _site(tmp_path, {"web-0": "dicomweb:1.2.3.4/1.2.3.4.5"})
    secrets = _secrets(tmp_path, f'url = "https://p/dw"\nusername = "u"\npassword = "{PASSWORD}"',
                       0o644)  # fmt: skip
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "node-config.toml").write_text(
        f'[policy]\ndicomweb-secrets = "{secrets}"\ncache-dir = "{tmp_path / "cache"}"\n'
    )
    assert main(["site", "check", str(site), "--keys", str(keys)]) == 1
    err = capsys.readouterr().err
    assert f"run `chmod 600 {secrets}`" in err and PASSWORD not in err


def test_a_path_cell_into_the_cache_folder_is_still_outside_the_site(tmp_path: Path) -> None:
    instances = _series(tmp_path / "server")
    ref = _ref(instances)
    source = _source(tmp_path, FakeServer(instances))
    cached = source.fetch(ref)  # retrieved for another manifest, or an earlier one
    site = _site(tmp_path, {"sneak": str(cached)})
    manifest, problems = inspect_site(site, CHANNELS, TASK, spatial_dims=3, pacs=source)
    assert [(p.case_id, p.kind) for p in problems] == [("sneak", BadInput.PATH_ESCAPE)]
    assert manifest.escape(cached) is not None  # only what this manifest retrieved is allowed


def test_an_error_reply_names_no_absolute_path_and_no_uid(
    tmp_path: Path, flower_task: object
) -> None:
    """Under on-bad-case = fail the case's error stops the message; what the site replies
    (Flower would send the exception's text) names files relative to the site folder, any
    other absolute path by its name, and no UID; the full text stays in the site's log."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

    from client.app import redaction_mod
    from common.badcases import BadCaseError

    site_dir = tmp_path / "site"
    error = BadCaseError("hospital-a", "c7", str(site_dir / "manifest.csv"),
                         "image_ct: DICOMweb series 1.2.840.113619.2.55.3.604688119.7 (study "
                         "1.2.840.113619.2.55.3.6) via /etc/hepafed/pacs.toml: HTTP 404",
                         site_dir)  # fmt: skip

    def fail(msg: Message, ctx: Context) -> Message:
        raise error

    msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1,
                  message_type=MessageType.EVALUATE)  # fmt: skip
    ctx = Context(run_id=1, node_id=1, node_config={"site-dir": str(site_dir)}, state=RecordDict(),
                  run_config={})  # fmt: skip
    reply = redaction_mod(msg, ctx, fail)
    assert reply.has_error()
    reason = str(reply.error.reason)
    assert "case 'c7': manifest.csv: image_ct: DICOMweb series <UID> (study <UID>)" in reason
    assert str(tmp_path) not in reason and "/etc/hepafed" not in reason
    assert "via pacs.toml" in reason and reason.startswith("BadCaseError: site 'hospital-a'")


def test_the_instance_list_is_paged_with_an_end_and_a_cap(tmp_path: Path) -> None:
    """QIDO-RS is paged by the site: a server that ignores offset (the same page again)
    ends the list instead of looping; one that never stops listing new instances is
    refused past MAX_INSTANCES, a named failure rather than memory without end."""
    from common.dicomweb import MAX_INSTANCES, PAGE_SIZE

    def entry(i: int) -> dict[str, Any]:
        return {"00080018": {"vr": "UI", "Value": [f"1.2.3.{i}"]}}

    class SamePage:
        calls = 0

        def search_for_instances(self, **kw: Any) -> list[dict[str, Any]]:
            SamePage.calls += 1
            return [entry(i) for i in range(PAGE_SIZE)]  # offset ignored

    class Endless:
        def search_for_instances(self, offset: int = 0, **kw: Any) -> list[dict[str, Any]]:
            return [entry(offset + i) for i in range(PAGE_SIZE)]

    ref = SeriesRef("1.2.3", "1.2.3.4")
    source = _source(tmp_path, FakeServer())
    assert len(source._instances(SamePage(), ref)) == PAGE_SIZE and SamePage.calls == 2
    with pytest.raises(DicomWebError, match=f"more than {MAX_INSTANCES} instances") as info:
        source._instances(Endless(), ref)
    assert info.value.kind == BadInput.DICOMWEB_FAILED
