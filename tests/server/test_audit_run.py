"""A run folder against its audit trail: the sealed end of the run, a rolled-back head and trail,
swapped or edited checkpoints, an edited report signature, and the report's model hashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from common.cli import main
from common.config import RunConfig
from common.signing import load_public_key
from server.audit import AUDIT_FILE, HEAD_FILE, AuditError, AuditTrail, entries, verify_trail
from server.audit_cli import verify_with
from server.audit_run import provenance_problems, verify_run
from server.records import RunRecorder
from server.trust import REPORT_SIGNATURE, ServerTrust, file_sha256, sign_report

RUN_ID = "run-7f3a"


def _lines(run: Path) -> list[str]:
    return (run / AUDIT_FILE).read_text(encoding="utf-8").splitlines()


def _checkpoint(recorder: RunRecorder, trail: AuditTrail, model: str, rnd: int) -> None:
    """A checkpoint and its trail entry, as the federation writes them."""
    state = {"w": torch.full((4,), float(rnd) + (0.5 if model != "global" else 0.0))}
    path = recorder.checkpoint(state, RunConfig(), rnd, model)
    trail.append(
        "checkpoint", {"model": model, "round": rnd, "file": path.name, "sha256": file_sha256(path)}
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signed run that ended: config, global rounds 1-2 and site-a's model checkpointed,
    report signed and sealed. ``older/`` keeps the trail, head and checkpoint.pt as they were
    after round 1."""
    run = tmp_path_factory.mktemp("finished") / "run"
    cfg = RunConfig().replace({"output.run-dir": str(run)})
    trust = ServerTrust(cfg, run, RUN_ID)
    trust.publish_key(run)
    trail = AuditTrail(run, sign=trust.signer())
    trail.append("config", {"run_id": RUN_ID})
    recorder = RunRecorder(run)
    _checkpoint(recorder, trail, "global", 1)
    older = run.parent / "older"
    older.mkdir()
    for name in (AUDIT_FILE, HEAD_FILE, "checkpoint.pt"):
        shutil.copy(run / name, older / name)
    _checkpoint(recorder, trail, "global", 2)
    _checkpoint(recorder, trail, "local-site-a", 0)
    (run / "report.json").write_text('{"sites": [{"auc": 0.71}]}')
    (run / "report.html").write_text("<html>AUC 0.71</html>")
    sign_report(trust, trail, run)
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _verify(run: Path) -> tuple[int, list[str]]:
    """``hepafed audit verify RUN_DIR`` with the run's key copy: exit status, lines printed."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["audit", "verify", str(run)])
    return code, out.getvalue().splitlines()[1:]  # without the "key: ..." line


# --- the sealed end of the run -----------------------------------------------------------


def test_a_finished_run_is_sealed_by_its_head(finished: Path) -> None:
    items = entries(finished)
    assert [e["kind"] for e in items][-2:] == ["report", "final"]
    files = {n: file_sha256(finished / n) for n in ("report.json", "report.html")}
    assert items[-1]["data"] == {"run_id": RUN_ID, "report": files}
    head = json.loads((finished / HEAD_FILE).read_text())
    assert head["format"] == "hepafed-audit-head/2"
    assert (head["seq"], head["run_id"], head["final"], head["report"]) == (
        len(items) - 1, RUN_ID, True, files,
    )  # fmt: skip
    key = load_public_key(finished / "keys" / "server.pub")
    report = verify_trail(finished, verify_with(key))
    assert (report.ok, report.final, report.head_signed) == (True, True, True)
    assert (report.run_id, report.report) == (RUN_ID, files)
    audit = verify_run(finished, verify_with(key), key)
    assert (audit.problems, audit.finished) == ([], True)
    code, out = _verify(finished)
    assert code == 0
    assert out[-1] == f"run {RUN_ID} finished: trail sealed, report and checkpoints match it"


def test_an_entry_after_the_seal_unseals_until_sealed_again(run: Path) -> None:
    """``report-rewritten``: simulate rewrites the report; the trail is open until re-sealed."""
    trail = AuditTrail(run)
    assert trail.run_id == RUN_ID
    trail.append("report-rewritten", {"reason": "pooled baseline added"})
    report = verify_trail(run)
    assert (report.ok, report.final, report.report) == (True, False, None)
    (run / "report.json").write_text('{"sites": [{"auc": 0.73}]}')
    files = {n: file_sha256(run / n) for n in ("report.json", "report.html")}
    trail.seal(files)
    report = verify_trail(run)
    assert (report.ok, report.final, report.report) == (True, True, files)


def test_sealing_needs_the_run_and_report_hashes(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path)
    with pytest.raises(ValueError, match="'final' ends the run: use AuditTrail.seal"):
        trail.append("final", {"run_id": RUN_ID})
    with pytest.raises(AuditError, match="no config entry names the run"):
        trail.seal({"report.json": "0" * 64})
    trail.append("config", {"run_id": RUN_ID})
    with pytest.raises(ValueError, match="report must map each report file to its SHA-256"):
        trail.seal({"report.json": "not-a-hash"})
    with pytest.raises(ValueError, match="run 'other' in the trail of run 'run-7f3a'"):
        trail.append("config", {"run_id": "other"})
    assert [e["kind"] for e in entries(tmp_path)] == ["config"]  # nothing else written


# --- rolled back -------------------------------------------------------------------------


def test_older_head_with_the_trail_cut_back_and_the_report_edited_is_caught(
    run: Path, finished: Path
) -> None:
    """``audit-rollback``: an older genuine head, the trail cut back to it, an edited report:
    the chain alone verifies, but the run is not final and the folder contradicts it."""
    older = finished.parent / "older"
    for name in (AUDIT_FILE, HEAD_FILE):  # the checkpoint stays as the run left it
        shutil.copy(older / name, run / name)
    (run / "report.json").write_text('{"sites": [{"auc": 0.99}]}')
    key = load_public_key(run / "keys" / "server.pub")
    report = verify_trail(run, verify_with(key))
    assert (report.ok, report.final, report.head_signed) == (True, False, True)  # chain: fine
    code, out = _verify(run)
    assert code == 1
    assert out[:-1] == [
        "report.json: present, but the audit trail records no report: it was not written by "
        "this run's server, or the trail was cut back before its report entry",
        "report.html: present, but the audit trail records no report: it was not written by "
        "this run's server, or the trail was cut back before its report entry",
        "checkpoint-local-site-a.pt: not recorded in the audit trail: not written by this run "
        "(left from an earlier run in this folder, or planted); move it out of the run folder",
        out[3],
    ]
    assert out[3].startswith("checkpoint.pt: edited or replaced: its SHA-256 ")
    assert out[3].endswith("which the audit trail recorded for model 'global', round 1")
    assert out[-1] == "audit trail NOT intact: 4 problem(s)"


def test_only_the_final_entry_cut_with_the_report_edited(run: Path) -> None:
    lines = _lines(run)
    (run / AUDIT_FILE).write_text("".join(line + "\n" for line in lines[:-1]))
    report = verify_trail(run)
    assert report.problems == [
        f"the trail ends at seq {len(lines) - 2} but audit.head.json says seq {len(lines) - 1}: "
        "entries removed from the end"
    ]
    (run / "report.json").write_text('{"sites": [{"auc": 0.99}]}')
    code, out = _verify(run)
    assert code == 1 and out[0] == report.problems[0]


def test_a_head_claiming_the_end_of_an_unfinished_run(run: Path) -> None:
    """A head rewritten (unsigned) to say the run ended: without the key the seal check still
    sees that the trail's last entry is not a final entry."""
    lines = _lines(run)[:-1]  # cut the final entry
    (run / AUDIT_FILE).write_text("".join(line + "\n" for line in lines))
    head = json.loads((run / HEAD_FILE).read_text())
    last = json.loads(lines[-1])
    head.update(seq=last["seq"], hash=last["hash"], entries=last["seq"] + 1, signature=None)
    (run / HEAD_FILE).write_text(json.dumps(head))
    assert verify_trail(run).problems == [
        f"audit.head.json says the run ended, but the trail's last entry, line {len(lines)} "
        f"(seq {last['seq']}), is not a final entry"
    ]


def test_a_head_naming_another_run(run: Path) -> None:
    head = json.loads((run / HEAD_FILE).read_text())
    (run / HEAD_FILE).write_text(json.dumps({**head, "run_id": "other", "signature": None}))
    assert verify_trail(run).problems == [
        "audit.head.json names run 'other' but the trail's config entry names run "
        f"'{RUN_ID}': the head belongs to another run"
    ]
    key = load_public_key(run / "keys" / "server.pub")
    assert "audit.head.json is unsigned" in verify_trail(run, verify_with(key)).problems[-1]


def test_an_old_format_head_is_named(run: Path) -> None:
    head = json.loads((run / HEAD_FILE).read_text())
    old = {k: head[k] for k in ("seq", "hash", "entries", "signature")}
    (run / HEAD_FILE).write_text(json.dumps(old))
    report = verify_trail(run)
    assert not report.ok and not report.final
    assert report.problems[0].startswith("audit.head.json is in the old format (it signs only")
    with pytest.raises(AuditError, match="old format"):
        AuditTrail(run)  # never continued


# --- not finished ------------------------------------------------------------------------


def test_a_run_in_progress_is_not_finished_and_not_tampered(finished: Path, tmp_path: Path) -> None:
    """``audit-not-final``: exit 2 with its own message; --allow-unfinished accepts it."""
    run = Path(shutil.copytree(finished.parent / "older", tmp_path / "run"))  # after round 1
    shutil.copytree(finished / "keys", run / "keys")
    assert verify_run(run).problems == []
    code, out = _verify(run)
    assert code == 2
    assert out[-2].startswith("run not finished / trail not sealed: no final entry")
    assert out[-1] == "use --allow-unfinished to accept a run in progress"
    assert main(["audit", "verify", str(run), "--allow-unfinished"]) == 0


# --- checkpoints and the report ------------------------------------------------------------


def test_checkpoint_swapped_for_another_models(run: Path) -> None:
    """``checkpoint-swapped``: the global checkpoint replaced by site-a's."""
    shutil.copy(run / "checkpoint-local-site-a.pt", run / "checkpoint.pt")
    code, out = _verify(run)
    assert code == 1
    assert out == [
        "checkpoint.pt: swapped: it is checkpoint-local-site-a.pt of model 'local-site-a', "
        "round 0, not the checkpoint the audit trail recorded for model 'global', round 2",
        "audit trail NOT intact: 1 problem(s)",
    ]


def test_checkpoint_edited_or_missing(run: Path) -> None:
    """``checkpoint-edited``: one byte appended; another checkpoint deleted."""
    with (run / "checkpoint.pt").open("ab") as fh:
        fh.write(b"\0")
    (run / "checkpoint-local-site-a.pt").unlink()
    code, out = _verify(run)
    assert code == 1
    assert out[0] == (
        "checkpoint-local-site-a.pt: missing (the audit trail recorded it for model "
        "'local-site-a', round 0)"
    )
    assert out[1].startswith("checkpoint.pt: edited or replaced: its SHA-256 ")
    assert out[2] == "audit trail NOT intact: 2 problem(s)"


def test_report_signature_edited(run: Path) -> None:
    """``report-sig-edited``: the signed statement rewritten to an edited report's hashes."""
    (run / "report.json").write_text('{"sites": [{"auc": 0.99}]}')
    doc = json.loads((run / REPORT_SIGNATURE).read_text())
    doc["statement"]["files"]["report.json"] = file_sha256(run / "report.json")
    (run / REPORT_SIGNATURE).write_text(json.dumps(doc))
    code, out = _verify(run)
    assert code == 1
    assert out == [
        "report.json: changed since the audit trail recorded its hash",
        "report.sig.json: signature does not verify with the server key",
        "report.sig.json: it signs other report hashes than the audit trail recorded: edited, "
        "or taken from another run",
        "audit trail NOT intact: 3 problem(s)",
    ]


def test_report_signature_of_another_run(run: Path) -> None:
    doc = json.loads((run / REPORT_SIGNATURE).read_text())
    doc["statement"]["run"] = "run-other"
    (run / REPORT_SIGNATURE).write_text(json.dumps(doc))
    code, out = _verify(run)
    assert code == 1
    assert f"report.sig.json: it signs run 'run-other', not this run '{RUN_ID}'" in out


def test_report_model_hash_must_be_the_trails(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path)
    trail.append("config", {"run_id": RUN_ID})
    trail.append("checkpoint", {"model": "global", "round": 1, "file": "checkpoint.pt",
                                "sha256": "1" * 64, "model_sha256": "a" * 64})  # fmt: skip
    report = {"provenance": {"model_sha256": {"global": "a" * 64}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert provenance_problems(tmp_path, entries(tmp_path)) == []
    report["provenance"]["model_sha256"]["global"] = "b" * 64
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert provenance_problems(tmp_path, entries(tmp_path)) == [
        "report.json: the model_sha256 of 'global' (bbbbbbbbbbbb...) is not the one the audit "
        "trail recorded for its checkpoint (aaaaaaaaaaaa...)"
    ]
