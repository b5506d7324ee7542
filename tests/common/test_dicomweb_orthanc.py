"""A site that reads its series from a real Orthanc (DICOMweb) loads what it loads from the
same series in a folder; the PACS's failures are named bad cases; TLS trusts the site's CA.

Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) runs on loopback for the module
(``tests/orthanc.py``); the phantom's first hospital is written as DICOM series
(``simulations.phantom_dicom``) and uploaded to it. Skipped when Orthanc or dicomweb-client
is missing, unless ``HEPAFED_REQUIRE_ORTHANC=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from pydicom.uid import UID, generate_uid

from client.app import query as query_handler
from client.app import train as train_handler
from client.policy import SitePolicy
from client.site import open_site
from common.badcases import BadCaseError, BadInput
from common.cli import main
from common.config import RunConfig
from common.crypto import create_certificates
from common.dicomweb import DicomWebSource, SeriesRef, open_source
from common.dicomweb_secrets import read_secrets
from common.keys import EVAL_ALL, Split
from common.manifest import open_manifest
from common.models import build_model
from common.weights import to_arrays
from simulations.phantom import generate_phantom
from simulations.phantom_dicom import dicom_files, dicomweb_site, write_dicom_phantom
from simulations.scenario import load_scenario
from tests.deploy import free_port
from tests.dicom_series import ct_volume, write_ct_series
from tests.orthanc import Orthanc, running_orthanc, tls_proxy

N_CASES = 12  # per hospital of liver-2: every split has cases, and it loads in seconds
CFG = RunConfig().replace({"data.roi-size": 32, "data.context-mm": 0.0, "train.local-epochs": 1})


@dataclass(frozen=True)
class Pacs:
    """The module's Orthanc, what is stored on it, and the sites that read it."""

    orthanc: Orthanc
    root: Path
    folder_sites: tuple[Path, Path]  # the phantom's hospitals as DICOM series folders
    web_site: Path  # the first hospital, every image cell a dicomweb: series on Orthanc
    image_only: SeriesRef  # a one-slice CT series, and
    with_report: SeriesRef  # the same study's series holding a CT slice and an SR

    def secrets(self, name: str = "pacs.toml", **values: str) -> Path:
        """A 0600 secrets file for Orthanc (``values`` replace its keys)."""
        fields = {"url": self.orthanc.dicomweb, "username": self.orthanc.user,
                  "password": self.orthanc.password, **values}  # fmt: skip
        path = self.root / name
        path.write_text("".join(f'{k} = "{v}"\n' for k, v in fields.items()))
        path.chmod(0o600)
        return path

    def node_config(self, site: Path, cache: Path, **values: str) -> dict[str, Any]:
        """A deployed site's node config: its folder, PACS secrets and cache folder."""
        return {"site-dir": str(site), "policy.dicomweb-secrets": str(self.secrets(**values)),
                "policy.cache-dir": str(cache)}  # fmt: skip


def _report_series(root: Path) -> tuple[list[Path], SeriesRef, SeriesRef]:
    """A study with an image series and a series holding an image and a structured report."""
    image = write_ct_series(root / "image", ct_volume(shape=(8, 8, 1)))[0]
    mixed = write_ct_series(root / "mixed", ct_volume(shape=(8, 8, 1), seed=1))[0]
    ds = pydicom.dcmread(mixed)
    study = str(pydicom.dcmread(image).StudyInstanceUID)
    ds.StudyInstanceUID = study
    ds.save_as(mixed, enforce_file_format=True)
    sr = pydicom.dcmread(mixed)
    del sr.PixelData
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.33")
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.save_as(root / "report.dcm", enforce_file_format=True)
    image_ref = SeriesRef(study, str(pydicom.dcmread(image).SeriesInstanceUID))
    return [image, mixed, root / "report.dcm"], image_ref, SeriesRef(study, ds.SeriesInstanceUID)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    root = tmp_path_factory.mktemp("pacs")
    with running_orthanc(root / "orthanc") as orthanc:
        scenario = load_scenario("liver-2")
        scenario = replace(scenario, sites=tuple(replace(s, n_cases=N_CASES)
                                                 for s in scenario.sites))  # fmt: skip
        phantom = generate_phantom(scenario, root / "phantom")
        site_a, site_b = write_dicom_phantom(phantom, root / "dicom")
        extra, image_only, with_report = _report_series(root / "extra")
        assert orthanc.upload([*dicom_files(site_a), *extra]) == 3 * N_CASES + 3
        web = dicomweb_site(site_a, root / "web")
        yield Pacs(orthanc, root, (site_a, site_b), web, image_only, with_report)


def _flat(split: Any) -> dict[str, Any]:
    return {"ids": split.case_ids, "labels": split.labels.tolist()}


def test_a_site_loads_from_orthanc_what_it_loads_from_the_folder(
    pacs: Pacs, tmp_path: Path
) -> None:
    node_config = pacs.node_config(pacs.web_site, tmp_path / "cache")
    cfg = SitePolicy.from_node_config(node_config).apply(CFG)
    web, folder = (
        open_site(node_config, cfg),
        open_site({"site-dir": str(pacs.folder_sites[0])}, CFG),
    )
    assert web.name == folder.name == "site-a" and not web.manifest.row_problems
    assert [(c.case_id, c.label, c.split, dict(c.metadata)) for c in web.manifest.cases] == [
        (c.case_id, c.label, c.split, dict(c.metadata)) for c in folder.manifest.cases
    ]
    assert web.manifest.cases[0].metadata["vendor"] == "Siemens"  # from the retrieved headers
    for split in (Split.TRAIN, Split.VAL, Split.TEST):
        a, b = web.split(split, cfg), folder.split(split, CFG)
        assert len(a) and _flat(a) == _flat(b)
        assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    # the cache: one owner-only file per SOP Instance UID; a re-run retrieves nothing
    cached = sorted((tmp_path / "cache" / "dicomweb-instances").rglob("*.dcm"))
    assert len(cached) == 3 * N_CASES and {p.stat().st_mode & 0o777 for p in cached} == {0o600}
    assert {p.stem for p in cached} == {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        for f in dicom_files(pacs.folder_sites[0])
    }
    source = open_source(str(pacs.secrets()), str(tmp_path / "cache"))
    assert source is not None
    open_manifest(pacs.web_site, CFG.data.channels, CFG.task, pacs=source)
    assert source.retrieved == 0


def test_site_check_against_orthanc_prints_the_folder_sites_summary(
    pacs: Pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "node-config.toml").write_text(
        f'[policy]\ndicomweb-secrets = "{pacs.secrets()}"\ncache-dir = "{tmp_path / "cache"}"\n'
    )
    assert main(["site", "check", str(pacs.web_site), "--keys", str(keys)]) == 0
    web = capsys.readouterr().out.splitlines()
    assert main(["site", "check", str(pacs.folder_sites[0])]) == 0
    folder = capsys.readouterr().out.splitlines()
    assert web[0] == f"site site-a: {N_CASES} cases in {pacs.web_site / 'manifest.csv'}"
    assert web[4] == f"  image sources: DICOMweb series={3 * N_CASES}"
    assert folder[4] == f"  image sources: DICOM series={3 * N_CASES}"
    assert web[1:4] + web[5:] == folder[1:4] + folder[5:] and web[-1] == "  no problems found"
    # without the node config the site check names what is missing, for every cell
    assert main(["site", "check", str(pacs.web_site)]) == 1
    err = capsys.readouterr().err
    assert f"{3 * N_CASES} problem(s)" in err and err.count("has no DICOMweb server") == 3 * N_CASES


@pytest.mark.usefixtures("flower_task")
def test_one_round_of_two_sites_equals_the_round_with_the_series_in_a_folder(
    pacs: Pacs, tmp_path: Path
) -> None:
    """The ClientApp of two hospitals (one on Orthanc) trains one FedAvg round from the same
    global model; the round equals the one where both read folders."""
    received = to_arrays(build_model(CFG))
    config = ConfigRecord({**CFG.to_flat(), "server-round": 1, "share": "shared"})

    def reply(node_config: dict[str, Any], handler: Any, kind: str) -> Message:
        content = RecordDict({"arrays": received, "config": config})
        msg = Message(content, dst_node_id=0, message_type=kind)
        ctx = Context(run_id=1, node_id=0, node_config=node_config, state=RecordDict(),
                      run_config={})  # fmt: skip
        return handler(msg, ctx)

    def round_of(first: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[Any]]:
        nodes = [first, {"site-dir": str(pacs.folder_sites[1])}]
        replies = [reply(n, train_handler, MessageType.TRAIN) for n in nodes]
        metrics = [dict(r.content.metric_records["metrics"]) for r in replies]
        weights = [cast(float, m["num-examples"]) for m in metrics]
        arrays = [r.content.array_records["arrays"] for r in replies]
        mean = {k: np.sum([w * a[k].numpy() for w, a in zip(weights, arrays, strict=True)],
                          axis=0) / sum(weights) for k in received}  # fmt: skip
        sites = [dict(reply(n, query_handler, MessageType.QUERY).content["site"]) for n in nodes]
        return mean, [*metrics, *sites]

    web_mean, web_info = round_of(pacs.node_config(pacs.web_site, tmp_path / "cache"))
    folder_mean, folder_info = round_of({"site-dir": str(pacs.folder_sites[0])})
    for key in received:
        np.testing.assert_array_equal(web_mean[key], folder_mean[key])
    for info in (web_info, folder_info):  # the manifests differ (their image cells); all else
        info[2].pop("manifest-sha256")
        for metrics in info[:2]:
            metrics.pop("seconds")
    assert web_info == folder_info


def _bad_case_site(pacs: Pacs, root: Path) -> Path:
    """Three cases of the first hospital, the second naming a series the PACS does not have,
    the third a series holding a structured report beside its image."""
    site = root / "site-bad"
    for folder in ("masks", "livers"):  # the masks stay files beside the PACS's series
        shutil.copytree(pacs.web_site / folder, site / folder)
    with (pacs.web_site / "manifest.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = list(reader.fieldnames or []), list(reader)[:3]
    rows[1]["image_portal"] = SeriesRef(pacs.image_only.study, "1.2.826.0.1.3680043.404").cell
    rows[2]["image_delayed"] = pacs.with_report.cell
    for row in rows:
        row["split"] = "train"
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return site


def _ids(site: Path) -> list[str]:
    return [
        row["case_id"] for row in csv.DictReader((site / "manifest.csv").read_text().splitlines())
    ]


def _kinds(site: Path, pacs_source: DicomWebSource, secret: str = "") -> dict[str, list[str]]:
    """The kinds of every case's problems (whose messages never hold ``secret``)."""
    manifest = open_manifest(site, CFG.data.channels, CFG.task, pacs=pacs_source)
    problems = [p for ps in manifest.row_problems.values() for p in ps]
    assert not secret or all(secret not in str(p) for p in problems)
    return {cid: [p.kind for p in ps] for cid, ps in manifest.row_problems.items()}


def test_the_pacs_failures_are_named_bad_cases(pacs: Pacs, tmp_path: Path) -> None:
    site = _bad_case_site(pacs, tmp_path)
    ids = _ids(site)
    skip = CFG.replace({"data.on-bad-case": "skip"})
    node_config = pacs.node_config(site, tmp_path / "cache")
    web = open_site(node_config, SitePolicy.from_node_config(node_config).apply(skip))
    assert {cid: [p.kind for p in ps] for cid, ps in web.manifest.row_problems.items()} == {
        ids[1]: [BadInput.DICOMWEB_SERIES_MISSING],
        ids[2]: [BadInput.DICOMWEB_NOT_IMAGE],
    }
    cfg = SitePolicy.from_node_config(node_config).apply(skip)
    split = web.split(EVAL_ALL, cfg)
    assert split.case_ids == (ids[0],) and [s.case_id for s in split.skipped] == ids[1:]
    missing, report = (s.reason for s in split.skipped)
    assert "1.2.826.0.1.3680043.404" in missing and "no such series" in missing
    assert pacs.with_report.series in report and "(Comprehensive SR Storage) has no pixel" in report
    # under fail the first bad case stops the job, naming case, series and remedy
    fail_cfg = SitePolicy.from_node_config(node_config).apply(CFG)
    with pytest.raises(BadCaseError, match=rf"case '{ids[1]}'.*1\.2\.826\.0\.1\.3680043\.404"):
        open_site(node_config, fail_cfg).split(EVAL_ALL, fail_cfg)
    # wrong credentials and a server that is down: every series of the site, named
    wrong = DicomWebSource(read_secrets(pacs.secrets("wrong.toml", password="not-it")),
                           tmp_path / "cache2")  # fmt: skip
    assert _kinds(site, wrong, "not-it") == {i: [BadInput.DICOMWEB_UNAUTHORIZED] * 3 for i in ids}
    down = pacs.secrets("down.toml", url=f"http://127.0.0.1:{free_port()}/dicom-web")
    assert _kinds(site, DicomWebSource(read_secrets(down), tmp_path / "cache3")) == {
        i: [BadInput.DICOMWEB_UNREACHABLE] * 3 for i in ids
    }


def test_tls_to_the_pacs_trusts_the_sites_ca_only(pacs: Pacs, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    create_certificates(certs, ["127.0.0.1", "localhost"])
    other = tmp_path / "other"
    create_certificates(other, ["127.0.0.1", "localhost"])
    with tls_proxy(tmp_path / "nginx", pacs.orthanc.port, certs) as port:
        url = f"https://127.0.0.1:{port}/dicom-web"
        trusted = read_secrets(
            pacs.secrets("tls.toml", url=url, **{"ca-file": str(certs / "ca.pem")})
        )
        folder = DicomWebSource(trusted, tmp_path / "cache").fetch(pacs.image_only)
        assert len(list(folder.iterdir())) == 1
        untrusted = read_secrets(pacs.secrets("tls2.toml", url=url,
                                              **{"ca-file": str(other / "ca.pem")}))  # fmt: skip
        site = _bad_case_site(pacs, tmp_path)
        kinds = _kinds(site, DicomWebSource(untrusted, tmp_path / "cache2"))
        assert set(kinds) == set(_ids(site))
        assert all(k == [BadInput.DICOMWEB_TLS] * 3 for k in kinds.values())
