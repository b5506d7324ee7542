"""The hash-chained audit trail: every kind of tampering is caught and named by line and seq."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from common.cli import main
from server.audit import (
    AUDIT_FILE,
    HEAD_FILE,
    AuditError,
    AuditTrail,
    entries,
    verify_trail,
)
from server.audit_cli import load_public_key, verify_with
from server.audit_head import head_bytes, head_record

ZERO = "0" * 64
EVENTS = [
    ("run-start", {"run": "liver-5", "seed": 2026, "sites": ["hosp-a", "hosp-b", "hosp-c"]}),
    ("round-start", {"round": 1, "sampled": ["hosp-a", "hosp-b", "hosp-c"]}),
    ("update-accepted", {"round": 1, "site": "hosp-a", "n": 412, "norm": 3.25}),
    ("update-rejected", {"round": 1, "site": "hosp-c", "reason": "norm z 4.1 > 3.5"}),
    ("aggregate", {"round": 1, "sites": ["hosp-a", "hosp-b"], "loss": 0.6931}),
    ("run-end", {"rounds": 1, "model_sha256": hashlib.sha256(b"weights").hexdigest()}),
]


def _signer(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    return lambda data: key.sign(data, ec.ECDSA(hashes.SHA384()))


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def verify(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes, bytes], bool]:
    return verify_with(key.public_key())


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, key: ec.EllipticCurvePrivateKey) -> Path:
    """A signed trail of six entries (seq 0-5 on lines 1-6); copy it before tampering."""
    run = tmp_path_factory.mktemp("run")
    trail = AuditTrail(run, sign=_signer(key))
    for kind, data in EVENTS:
        trail.append(kind, data)
    return run


@pytest.fixture
def run(original: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(original, tmp_path / "run"))


def _lines(run: Path) -> list[str]:
    return (run / AUDIT_FILE).read_text(encoding="utf-8").splitlines()


def _write(run: Path, lines: list[str]) -> None:
    (run / AUDIT_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _rehash(entry: dict) -> str:
    """The entry with its hash recomputed, as one canonical line (what a forger would write)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    entry = {**body, "hash": hashlib.sha256(_canonical(body).encode()).hexdigest()}
    return _canonical(entry)


def _rewrite_head(run: Path, entry: dict, signature: str | None, run_id: str = "") -> None:
    head = head_record(entry["seq"], entry["hash"], run_id)
    (run / HEAD_FILE).write_text(json.dumps({**head, "signature": signature}), encoding="utf-8")


# --- writing -----------------------------------------------------------------------------


def test_entries_are_chained_and_the_head_is_signed(
    original: Path, verify: Callable[[bytes, bytes], bool]
) -> None:
    got = entries(original)
    assert [e["seq"] for e in got] == [0, 1, 2, 3, 4, 5]
    assert [e["kind"] for e in got] == [kind for kind, _ in EVENTS]
    assert got[2]["data"] == {"round": 1, "site": "hosp-a", "n": 412, "norm": 3.25}
    assert got[0]["prev"] == ZERO
    for before, after in itertools.pairwise(got):
        assert after["prev"] == before["hash"]
    for e in got:
        body = {k: v for k, v in e.items() if k != "hash"}
        assert e["hash"] == hashlib.sha256(_canonical(body).encode()).hexdigest()
        assert e["time"].endswith("+00:00")
    head = json.loads((original / HEAD_FILE).read_text())
    assert (head["seq"], head["hash"], head["entries"]) == (5, got[-1]["hash"], 6)
    report = verify_trail(original, verify)
    assert (report.ok, report.entries, report.problems, report.head_signed) == (True, 6, [], True)


def test_a_new_trail_is_empty_and_pinned(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    trail = AuditTrail(tmp_path / "new", sign=_signer(key))
    assert trail.head == {"seq": -1, "hash": ZERO}
    report = verify_trail(tmp_path / "new", verify_with(key.public_key()))
    assert (report.ok, report.entries, report.head_signed) == (True, 0, True)


def test_reopening_continues_the_seq_and_the_chain(
    run: Path, key: ec.EllipticCurvePrivateKey, verify: Callable[[bytes, bytes], bool]
) -> None:
    last = entries(run)[-1]
    trail = AuditTrail(run, sign=_signer(key))
    assert trail.head == {"seq": 5, "hash": last["hash"]}
    entry = trail.append("run-resumed", {"round": 2})
    assert (entry["seq"], entry["prev"]) == (6, last["hash"])
    assert trail.head == {"seq": 6, "hash": entry["hash"]}
    assert entries(run)[-1] == entry
    report = verify_trail(run, verify)
    assert (report.ok, report.entries, report.head_signed) == (True, 7, True)


def test_reopening_a_tampered_trail_refuses(run: Path) -> None:
    lines = _lines(run)
    _write(run, lines[:2] + lines[3:])
    with pytest.raises(AuditError, match=r"entry seq 2 missing between line 2 \(seq 1\)"):
        AuditTrail(run)
    assert _lines(run) == lines[:2] + lines[3:]  # nothing appended


def test_reopening_with_the_trail_deleted_refuses(run: Path) -> None:
    (run / AUDIT_FILE).unlink()
    with pytest.raises(AuditError, match="audit.head.json exists but .* does not"):
        AuditTrail(run)


def test_nan_or_unserialisable_data_is_refused_and_nothing_is_written(run: Path) -> None:
    trail = AuditTrail(run)
    before = (run / AUDIT_FILE).read_bytes(), (run / HEAD_FILE).read_bytes()
    with pytest.raises(ValueError, match="audit entry 'aggregate'.*NaN"):
        trail.append("aggregate", {"round": 2, "loss": float("nan")})
    with pytest.raises(ValueError, match="audit entry 'weights'"):
        trail.append("weights", {"array": object()})
    assert ((run / AUDIT_FILE).read_bytes(), (run / HEAD_FILE).read_bytes()) == before
    assert trail.head["seq"] == 5


# --- tampering ---------------------------------------------------------------------------


def test_edited_entry(run: Path, verify: Callable[[bytes, bytes], bool]) -> None:
    lines = _lines(run)
    lines[3] = lines[3].replace("norm z 4.1 > 3.5", "norm z 1.1 < 3.5")
    _write(run, lines)
    report = verify_trail(run, verify)
    assert not report.ok
    assert report.problems == ["line 4 (seq 3): content edited, hash does not match"]


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(
    run: Path, verify: Callable[[bytes, bytes], bool]
) -> None:
    lines = _lines(run)
    entry = json.loads(lines[3])
    entry["data"]["reason"] = "none"
    lines[3] = _rehash(entry)
    _write(run, lines)
    report = verify_trail(run, verify)
    assert not report.ok
    assert report.problems == [
        "line 5 (seq 4): prev link broken: it does not match the hash of line 4 (seq 3); "
        "that entry was edited and its hash recomputed, or this prev was changed"
    ]


def test_removed_entry(run: Path, verify: Callable[[bytes, bytes], bool]) -> None:
    lines = _lines(run)
    _write(run, lines[:2] + lines[3:])
    report = verify_trail(run, verify)
    assert not report.ok
    assert report.problems == ["entry seq 2 missing between line 2 (seq 1) and line 3 (seq 3)"]


def test_removed_first_entries(run: Path) -> None:
    _write(run, _lines(run)[2:])
    assert verify_trail(run).problems == [
        "entries seq 0-1 missing before line 1 (seq 2), at the start of the trail"
    ]


def test_inserted_forged_entry_with_a_valid_link(
    run: Path, verify: Callable[[bytes, bytes], bool]
) -> None:
    lines = _lines(run)
    entry2 = json.loads(lines[2])
    forged = {
        "seq": 3,
        "time": entry2["time"],
        "kind": "update-accepted",
        "data": {"round": 1, "site": "hosp-c", "n": 380, "norm": 2.0},
        "prev": entry2["hash"],
    }
    _write(run, lines[:3] + [_rehash(forged)] + lines[3:])
    report = verify_trail(run, verify)
    assert not report.ok
    assert report.problems == [
        "line 4 (seq 3): inserted entry, not part of the chain: the chain continues from "
        "line 3 (seq 2) at line 5 (seq 3)"
    ]


def test_inserted_entry_with_a_made_up_link(run: Path) -> None:
    lines = _lines(run)
    forged = {**json.loads(lines[2]), "seq": 3, "prev": "ab" * 32, "kind": "note"}
    _write(run, lines[:3] + [_rehash(forged)] + lines[3:])
    assert verify_trail(run).problems == [
        "line 4 (seq 3): inserted entry, not part of the chain: the chain goes from "
        "line 3 (seq 2) to line 5 (seq 3)"
    ]


def test_duplicated_line(run: Path) -> None:
    lines = _lines(run)
    _write(run, lines[:3] + [lines[1]] + lines[3:])
    assert verify_trail(run).problems == [
        "line 4 (seq 1): inserted entry (a copy of line 2), not part of the chain: it repeats "
        "an entry already in the chain"
    ]


def test_swapped_entries(run: Path, verify: Callable[[bytes, bytes], bool]) -> None:
    lines = _lines(run)
    lines[2], lines[3] = lines[3], lines[2]
    _write(run, lines)
    report = verify_trail(run, verify)
    assert not report.ok
    assert report.problems == ["lines 3-4 are out of order (seq 3, 2): entries reordered"]


def test_truncated_end_is_caught_by_the_head(
    run: Path, verify: Callable[[bytes, bytes], bool]
) -> None:
    _write(run, _lines(run)[:-1])
    report = verify_trail(run, verify)
    assert not report.ok
    assert report.problems == [
        "the trail ends at seq 4 but audit.head.json says seq 5: entries removed from the end"
    ]
    assert report.head_signed  # the head itself is genuine; the trail is short


def test_entry_appended_after_the_head(run: Path) -> None:
    lines = _lines(run)
    last = json.loads(lines[-1])
    extra = {**last, "seq": 6, "prev": last["hash"], "kind": "note", "data": {}}
    _write(run, lines + [_rehash(extra)])
    assert verify_trail(run).problems == [
        "entries after line 6 (seq 5) (up to line 7 (seq 6)) are not covered by "
        "audit.head.json, which says seq 5: appended after the head was written"
    ]


def test_truncated_with_an_unsigned_head_is_caught_by_the_key(
    run: Path, verify: Callable[[bytes, bytes], bool]
) -> None:
    lines = _lines(run)[:-1]
    _write(run, lines)
    _rewrite_head(run, json.loads(lines[-1]), signature=None)
    assert verify_trail(run).ok  # without the key this forgery is invisible, as documented
    report = verify_trail(run, verify)
    assert not report.ok
    assert not report.head_signed
    assert report.problems == [
        "audit.head.json is unsigned, but a server key was given: the end of the trail is "
        "not pinned"
    ]


def test_truncated_with_the_old_signature_reused(
    run: Path, verify: Callable[[bytes, bytes], bool]
) -> None:
    old_signature = json.loads((run / HEAD_FILE).read_text())["signature"]
    lines = _lines(run)[:-1]
    _write(run, lines)
    _rewrite_head(run, json.loads(lines[-1]), signature=old_signature)
    report = verify_trail(run, verify)
    assert report.problems == ["audit.head.json signature does not verify with the server key"]


def test_head_signed_by_another_key(run: Path, verify: Callable[[bytes, bytes], bool]) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    head = json.loads((run / HEAD_FILE).read_text())
    _rewrite_head(run, {"seq": 5, "hash": head["hash"]}, _signer(other)(head_bytes(head)).hex())
    assert verify_trail(run, verify_with(other.public_key())).ok
    report = verify_trail(run, verify)
    assert (report.ok, report.head_signed) == (False, False)
    assert report.problems == ["audit.head.json signature does not verify with the server key"]


def test_whole_trail_forged_and_resigned_by_another_key(
    run: Path, verify: Callable[[bytes, bytes], bool]
) -> None:
    """Recomputing every hash defeats the chain alone; only the server key's signature holds."""
    forged_run = run.parent / "forged"
    other = ec.generate_private_key(ec.SECP384R1())
    trail = AuditTrail(forged_run, sign=_signer(other))
    for kind, data in EVENTS:
        trail.append(kind, {**data, "note": "forged"})
    assert verify_trail(forged_run).ok
    assert verify_trail(forged_run, verify).problems == [
        "audit.head.json signature does not verify with the server key"
    ]


def test_line_that_is_not_json(run: Path, verify: Callable[[bytes, bytes], bool]) -> None:
    lines = _lines(run)
    lines[3] = lines[3][:40]  # a cut-off write
    _write(run, lines)
    report = verify_trail(run, verify)
    assert not report.ok
    assert len(report.problems) == 1  # the unreadable entry is not also reported as missing
    assert report.problems[0].startswith("line 4: not JSON (")


def test_several_problems_are_all_reported(run: Path) -> None:
    lines = _lines(run)
    lines[1] = lines[1].replace("hosp-b", "hosp-x")
    _write(run, lines[:3] + lines[4:-1])
    assert verify_trail(run).problems == [
        "line 2 (seq 1): content edited, hash does not match",
        "entry seq 3 missing between line 3 (seq 2) and line 4 (seq 4)",
        "the trail ends at seq 4 but audit.head.json says seq 5: entries removed from the end",
    ]


def test_every_single_line_deletion_copy_or_move_is_reported_once(original: Path) -> None:
    lines = _lines(original)
    n = len(lines)
    variants = [lines[:i] + lines[i + 1 :] for i in range(n)]
    variants += [lines[:at] + [lines[i]] + lines[at:] for i in range(n) for at in range(n + 1)]
    for i in range(n):
        rest = lines[:i] + lines[i + 1 :]
        variants += [rest[:at] + [lines[i]] + rest[at:] for at in range(n) if at != i]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(shutil.copytree(original, Path(tmp) / "run"))
        for variant in variants:
            _write(run, variant)
            problems = verify_trail(run).problems
            assert len(problems) == 1, (variant, problems)


def test_line_that_is_not_an_entry(run: Path) -> None:
    lines = _lines(run)
    _write(run, lines[:2] + ["[1, 2]", '{"seq": 2}'] + lines[2:])
    assert verify_trail(run).problems == [
        "line 3: not an audit entry: an array, not an object",
        "line 4: not an audit entry: missing data, hash, kind, prev, time",
    ]


def test_missing_trail_or_head(tmp_path: Path, run: Path) -> None:
    assert verify_trail(tmp_path / "nowhere").problems == [
        f"{tmp_path / 'nowhere' / AUDIT_FILE} missing: no audit trail in {tmp_path / 'nowhere'}"
    ]
    (run / HEAD_FILE).unlink()
    assert verify_trail(run).problems == [
        "audit.head.json missing: the end of the trail cannot be checked"
    ]


@settings(max_examples=60)
@given(
    index=st.integers(0, len(EVENTS) - 1),
    field=st.sampled_from(["seq", "time", "kind", "data", "prev", "hash"]),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=6,
    ),
)
def test_any_single_field_edit_is_detected_on_its_line(
    original: Path, index: int, field: str, value: object
) -> None:
    lines = _lines(original)
    entry = json.loads(lines[index])
    if _canonical(entry[field]) == _canonical(value):
        return
    entry[field] = value
    lines[index] = _canonical(entry)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(shutil.copytree(original, Path(tmp) / "run"))
        _write(run, lines)
        report = verify_trail(run)
    assert not report.ok
    assert any(p.startswith(f"line {index + 1}") for p in report.problems), report.problems


@settings(max_examples=60)
@given(data=st.data())
def test_any_single_byte_edit_is_detected(original: Path, data: st.DataObject) -> None:
    raw = (original / AUDIT_FILE).read_bytes()
    at = data.draw(st.sampled_from([i for i, b in enumerate(raw) if b != ord("\n")]))
    new = data.draw(st.sampled_from([c for c in range(32, 127) if c != raw[at]]))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(shutil.copytree(original, Path(tmp) / "run"))
        (run / AUDIT_FILE).write_bytes(raw[:at] + bytes([new]) + raw[at + 1 :])
        report = verify_trail(run)
    line = raw[:at].count(b"\n") + 1
    assert not report.ok
    assert any(p.startswith(f"line {line}") for p in report.problems), report.problems


# --- keys and the command line -----------------------------------------------------------


def test_public_keys_load_from_openssh_and_pem(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, original: Path
) -> None:
    public = key.public_key()
    ssh = tmp_path / "server.pub"
    ssh.write_bytes(
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b" coordinating-center\n"
    )
    pem = tmp_path / "server.pem"
    pem.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for path in (ssh, pem):
        assert verify_trail(original, verify_with(load_public_key(path))).head_signed
    ed = ed25519.Ed25519PrivateKey.generate()
    check = verify_with(ed.public_key())
    assert check(b"head", ed.sign(b"head")) and not check(b"tail", ed.sign(b"head"))
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    with pytest.raises(ValueError, match="junk.pub is not a readable public key"):
        load_public_key(junk)


def _write_key_copy(run: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path = run / "keys" / "server.pub"
    path.parent.mkdir()
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return path


def test_cli_intact_with_the_run_folder_key(
    run: Path, key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _write_key_copy(run, key)
    assert main(["audit", "verify", str(run), "--allow-unfinished"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"key: {copy}, the copy inside the run folder")
    assert "proves less than checking with the federation's own copy" in out[0]
    assert out[1] == (
        f"audit trail {run / AUDIT_FILE}: 6 entries, chain intact, head signed by the server key"
    )
    assert out[2].startswith("run not finished / trail not sealed: no final entry")


def test_cli_intact_with_an_explicit_key_or_none(
    run: Path, tmp_path: Path, key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = tmp_path / "federation-server.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert main(["audit", "verify", str(run), "--public-key", str(pem)]) == 2  # not ended
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        f"key: {pem}",
        f"audit trail {run / AUDIT_FILE}: 6 entries, chain intact, head signed by the server key",
    ]
    assert out[-1] == "use --allow-unfinished to accept a run in progress"
    unsigned = tmp_path / "unsigned"
    trail = AuditTrail(unsigned)
    trail.append("run-start", {"seed": 1})
    assert main(["audit", "verify", str(unsigned), "--allow-unfinished"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        f"audit trail {unsigned / AUDIT_FILE}: 1 entries, chain intact, head unsigned"
    )


def test_cli_reports_every_problem_and_fails(
    run: Path, key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_key_copy(run, key)
    lines = _lines(run)
    lines[3] = lines[3].replace("hosp-c", "hosp-b")
    _write(run, lines[:-1])
    assert main(["audit", "verify", str(run)]) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "line 4 (seq 3): content edited, hash does not match",
        "the trail ends at seq 4 but audit.head.json says seq 5: entries removed from the end",
        "audit trail NOT intact: 2 problem(s)",
    ]


def test_cli_missing_folder_or_trail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().out == f"audit: no run folder at {tmp_path / 'nowhere'}\n"
    assert main(["audit", "verify", str(tmp_path)]) == 1
    assert capsys.readouterr().out == (
        f"audit: no audit trail in {tmp_path}: {tmp_path / AUDIT_FILE} does not exist\n"
    )


def test_a_server_stopped_between_entry_and_head_is_continued_and_recorded(
    run: Path, key: ec.EllipticCurvePrivateKey, verify: Callable[[bytes, bytes], bool]
) -> None:
    """The one crash window (entry written, head not yet replaced): a resumed run continues
    the trail and names the uncovered entry; two uncovered entries are refused."""
    head = (run / HEAD_FILE).read_text(encoding="utf-8")
    AuditTrail(run, sign=_signer(key)).append("round", {"round": 9})
    (run / HEAD_FILE).write_text(head, encoding="utf-8")  # as if the server died here
    assert not verify_trail(run, verify).ok
    trail = AuditTrail(run, sign=_signer(key))
    last = entries(run)[-1]
    assert last["kind"] == "uncovered-entry" and last["data"]["seq"] == last["seq"] - 1
    assert trail.head["seq"] == last["seq"]
    assert verify_trail(run, verify).ok

    head = (run / HEAD_FILE).read_text(encoding="utf-8")
    trail.append("round", {"round": 10})
    trail.append("round", {"round": 11})
    (run / HEAD_FILE).write_text(head, encoding="utf-8")
    with pytest.raises(AuditError, match="not covered by"):
        AuditTrail(run, sign=_signer(key))
