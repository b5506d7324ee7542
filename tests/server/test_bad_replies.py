"""Bad replies other than updates: the site query, hook statistics, evaluation summaries,
and models trained at one site; each is a named rejection and the run goes on.

Replies come from a fake Grid that answers each message with what a case's site sends.
The case tables are listed in docs/trust.md (a test keeps them in step).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from common.config import RunConfig
from common.hooks import HookSet
from common.keys import RecordKey, SiteKey
from common.summary import SiteSummary
from server.audit import AuditTrail, entries
from server.federation import Federation
from server.records import RunRecorder, checkpoint_name
from server.reply_checks import ReplyError, summary_record
from server.sites import FederationError, SiteInfo, discover_sites
from server.statistics_screen import screen_statistics
from server.trust import ServerTrust
from tests.server.fake_grid import Answer, ReplyGrid

pytestmark = pytest.mark.usefixtures("flower_task")

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, **extra: Any) -> RunConfig:
    values = {
        "output.run-dir": str(tmp_path / "run"),
        "federation.round-timeout-s": 0.5,
        "data.channels": "arterial,portal",
        **extra,
    }
    return RunConfig().replace(values)


# ---- the site query ------------------------------------------------------------------------

GOOD_QUERY: dict[str, Any] = {
    SiteKey.N_TRAIN.value: 10,
    SiteKey.N_TEST.value: 5,
    SiteKey.MANIFEST_SHA256.value: "ab" * 32,
    SiteKey.ACQUISITION.value: json.dumps({"n_cases": 15, "vendor": {"GE": 15}}),
}

QUERY_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("query-bad-counts", "n-train = -3", {"n-train": -3}, "n-train = -3: must be >= 0"),
    (
        "query-absurd-count",
        "n-test = 10^12",
        {"n-test": 10**12},
        "n-test = 1000000000000: more than the 1e+07 cases a site can hold",
    ),
    (
        "query-fractional-count",
        "n-train = 2.5",
        {"n-train": 2.5},
        "n-train = 2.5: must be a whole number",
    ),
    (
        "query-bad-json",
        "an acquisition summary that is not JSON",
        {"acquisition": "{not json"},
        "acquisition summary that is not JSON or not an object: the text is not valid JSON",
    ),
    (
        "query-nan-json",
        "NaN inside the acquisition summary's JSON",
        {"acquisition": '{"n_cases": NaN}'},
        "NaN is not a JSON number",
    ),
    (
        "query-counts-disagree",
        "acquisition n_cases 3, fewer than n-train + n-test = 15",
        {"acquisition": '{"n_cases": 3}'},
        "acquisition n_cases = 3: must be >= 15 (n-train + n-test = 15)",
    ),
    ("query-no-name", "no site name", {"name": None}, "name: site name 'None': use a letter"),
    ("query-error", "the query failed at the node", {"error": "disk full"}, "failed at the node"),
]


def _query_answer(bad: dict[str, Any], bad_node: int = 3) -> Callable[[Message], Message]:
    def answer(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        fields = {SiteKey.NAME.value: f"site-{node}", **GOOD_QUERY}
        if node == bad_node:
            if "error" in bad:
                return Message(Error(code=0, reason=bad["error"]), reply_to=msg)
            fields.update(bad)
        info = ConfigRecord({k: v for k, v in fields.items() if v is not None})
        return Message(RecordDict({RecordKey.SITE: info}), reply_to=msg)

    return answer


@pytest.mark.parametrize(
    ("case", "what", "bad", "expected"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES]
)
def test_a_site_with_an_unbelievable_query_reply_is_refused_and_left_out(
    tmp_path: Path, case: str, what: str, bad: dict[str, Any], expected: str
) -> None:
    cfg = _cfg(tmp_path)
    refused: dict[str, str] = {}
    sites = discover_sites(ReplyGrid(_query_answer(bad)), cfg, [1, 2, 3], refused)  # type: ignore[arg-type]
    assert [s.name for s in sites] == ["site-1", "site-2"], what
    assert [s.declared_cases for s in sites] == [15, 15]
    assert len(refused) == 1
    who, reason = next(iter(refused.items()))
    assert who in ("site-3 (node 3)", "node 3") and expected in reason, (who, reason)
    # with a third site required, the run cannot go on, and says why
    strict = _cfg(tmp_path, **{"federation.min-sites": 3})
    with pytest.raises(FederationError, match=r"2 site\(s\) left after refusing 1 .*min-sites = 3"):
        discover_sites(ReplyGrid(_query_answer(bad)), strict, [1, 2, 3])  # type: ignore[arg-type]


def test_every_node_refused_is_a_federation_error_naming_the_last_line_of_each_error(
    tmp_path: Path,
) -> None:
    """A site's error can be a whole Ray traceback: the refusal keeps its last line."""
    traceback = "Traceback (most recent call last):\n  File 'x.py'\n" + "  ...\n" * 500
    bad = {"error": traceback + "TrustError: site-3 cannot sign its identity"}

    def answer(msg: Message) -> Message:
        return _query_answer(bad, bad_node=msg.metadata.dst_node_id)(msg)

    cfg = _cfg(tmp_path, **{"federation.external-sites": "site-2"})
    with pytest.raises(FederationError) as err:
        discover_sites(ReplyGrid(answer), cfg, [1, 2, 3])  # type: ignore[arg-type]
    text = str(err.value)
    assert text.startswith("0 site(s) left after refusing 3 (")
    assert text.count("failed at the node: TrustError: site-3 cannot sign its identity") == 3
    assert "Traceback" not in text and len(text) < 1000


def test_declared_cases_fall_back_to_train_plus_test() -> None:
    assert SiteInfo(1, "a", "train", 10, 5, "x").declared_cases == 15
    assert SiteInfo(1, "a", "train", 10, 5, "x", {"n_cases": 20}).declared_cases == 20


# ---- hook statistics (Nyul landmarks) ------------------------------------------------------

MARKS = [0.1 * i for i in range(1, 12)]  # 11 increasing landmarks (hooks.landmarks)
GOOD_STATS = {"nyul": {"landmarks-0": MARKS, "landmarks-1": [m + 0.01 for m in MARKS]}}
DECLARED = {"site-1": 15, "site-2": 45, "site-3": 15}

STATS_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "stats-huge-n",
        "n-cases = 1e300 (would set the federation's scale alone)",
        {"n-cases": 1e300},
        "n-cases = 1e+300: more than the 15 case(s) the site declared when it joined",
    ),
    (
        "stats-over-declared",
        "n-cases = 16 from a site that declared 15 cases",
        {"n-cases": 16},
        "n-cases = 16: more than the 15 case(s)",
    ),
    (
        "stats-inf",
        "n-cases = +infinity",
        {"n-cases": float("inf")},
        "n-cases = inf: must be a whole",
    ),
    ("stats-zero", "n-cases = 0", {"n-cases": 0}, "n-cases = 0: must be >= 1"),
    (
        "stats-bad-json",
        "statistics that are not JSON",
        {"statistics": '{"nyul": '},
        "statistics is not valid JSON",
    ),
    (
        "stats-inf-landmarks",
        "Infinity in the landmarks' JSON",
        {"statistics": json.dumps({"nyul": {**GOOD_STATS["nyul"], "landmarks-0": [1e999] * 11}})},
        "Infinity is not a JSON number",
    ),
    (
        "stats-absurd-landmarks",
        "landmarks of 1e300 (finite, increasing)",
        {
            "statistics": json.dumps(
                {"nyul": {**GOOD_STATS["nyul"], "landmarks-0": [m * 1e300 for m in MARKS]}}
            )
        },
        "statistics refused: nyul: landmarks-0 has a value beyond +-1e+06",
    ),
    (
        "stats-wrong-channels",
        "landmarks for one channel of two",
        {"statistics": json.dumps({"nyul": {"landmarks-0": MARKS}})},
        "statistics refused: nyul: landmark keys ['landmarks-0'] are not",
    ),
    ("stats-error", "the site failed to compute them", {"error": "no foreground"}, "no foreground"),
]


def _stats_answer(bad: dict[str, Any], bad_node: int = 3) -> Answer:
    def answer(msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        fields: dict[str, Any] = {
            SiteKey.NAME.value: f"site-{node}",
            SiteKey.STATISTICS.value: json.dumps(GOOD_STATS),
            SiteKey.N_CASES.value: 15 if node != 2 else 45,
        }
        if node == bad_node:
            if "error" in bad:
                return Message(Error(code=0, reason=bad["error"]), reply_to=msg)
            fields.update(bad)
        return Message(RecordDict({RecordKey.SITE: ConfigRecord(fields)}), reply_to=msg)

    return answer


def _stats_replies(answer: Answer) -> list[Message]:
    sent = [
        Message(RecordDict({RecordKey.CONFIG: ConfigRecord()}), dst_node_id=n, message_type="query")
        for n in (1, 2, 3)
    ]
    return [r for m in sent if (r := answer(m)) is not None]


@pytest.mark.parametrize(
    ("case", "what", "bad", "expected"), STATS_CASES, ids=[c[0] for c in STATS_CASES]
)
def test_unbelievable_hook_statistics_are_rejected_and_the_others_pooled(
    tmp_path: Path, case: str, what: str, bad: dict[str, Any], expected: str
) -> None:
    hooks = HookSet(_cfg(tmp_path, **{"hooks.use": "nyul"}))
    replies = _stats_replies(_stats_answer(bad))
    stats, rejected = screen_statistics(
        replies, lambda r: f"site-{r.metadata.src_node_id}", DECLARED, hooks
    )
    assert sorted(stats) == ["site-1", "site-2"], what
    assert list(rejected) == ["site-3"] and expected in rejected["site-3"], rejected
    assert [w for w, _ in stats.values()] == [15.0, 45.0]


def test_statistics_of_a_site_that_never_answers_are_named(tmp_path: Path) -> None:
    hooks = HookSet(_cfg(tmp_path, **{"hooks.use": "nyul"}))
    replies = _stats_replies(_stats_answer({}))[:2]
    stats, rejected = screen_statistics(
        replies, lambda r: f"site-{r.metadata.src_node_id}", DECLARED, hooks
    )
    assert sorted(stats) == ["site-1", "site-2"] and rejected == {"site-3": "no reply in time"}


def _federation(tmp_path: Path, answer: Answer, **extra: Any) -> Federation:
    cfg = _cfg(tmp_path, **{"model.width": 4, **extra})
    run = tmp_path / "run"
    trust = ServerTrust(cfg, run, "run-1")
    sites = [SiteInfo(n, f"site-{n}", "train", 10, 5, "ab" * 32) for n in (1, 2, 3)]
    recorder = RunRecorder(run)
    (run / "rounds.jsonl").write_text("")
    return Federation(
        ReplyGrid(answer),  # type: ignore[arg-type]
        cfg,
        recorder,
        sites,
        trust,
        AuditTrail(run),
    )


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    text = (tmp_path / "run" / "rounds.jsonl").read_text()
    return [json.loads(line, parse_constant=lambda c: pytest.fail(c)) for line in text.splitlines()]


def test_the_federation_pools_only_believable_statistics_and_records_the_rest(
    tmp_path: Path,
) -> None:
    """stats-huge-n end to end: the scale is the 15:45 mean of sites 1 and 2 (site 3's
    1e300 cases and its landmarks 10x as high change nothing), recorded with the reason."""
    bad = {"n-cases": 1e300, "statistics": json.dumps(
        {"nyul": {k: [10 * m for m in v] for k, v in GOOD_STATS["nyul"].items()}})}  # fmt: skip
    fed = _federation(tmp_path, _stats_answer(bad), **{"hooks.use": "nyul"})
    fed.sites = [SiteInfo(n, f"site-{n}", "train", 10, 5, "x", {"n_cases": DECLARED[f"site-{n}"]})
                 for n in (1, 2, 3)]  # fmt: skip
    shared = json.loads(fed.shared_statistics(fed.sites))
    # both contributing sites sent the same landmarks: the scale is exactly theirs
    np.testing.assert_allclose(shared["nyul"]["landmarks-0"], MARKS, rtol=1e-12)
    record = _records(tmp_path)[-1]
    assert record["phase"] == "statistics" and record["sites"] == ["site-1", "site-2"]
    assert "n-cases = 1e+300: more than the 15 case(s)" in record["rejected"]["site-3"]
    audit = [e for e in entries(tmp_path / "run") if e["kind"] == "statistics"]
    assert audit[-1]["data"]["rejected"] == record["rejected"]


# ---- evaluation summaries ------------------------------------------------------------------

GOOD_SUMMARY = SiteSummary(n=12, n_pos=5, n_neg=7, auc=0.8, auc_var=0.01).to_record()

SUMMARY_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("summary-nan", "auc = NaN", {"auc": float("nan")}, "metric 'auc' = nan: must be finite"),
    (
        "summary-over-declared",
        "n = 100 at a site that declared 15 cases",
        {"n": 100, "num-examples": 100},
        "num-examples = 100: more than the 15 case(s) the site declared when it joined",
    ),
    ("summary-negative-count", "n-pos = -1", {"n-pos": -1}, "n-pos = -1: must be >= 0"),
    ("summary-parts-over-n", "n-pos = 13 > n = 12", {"n-pos": 13}, "n-pos = 13 exceeds n = 12"),
    (
        "summary-table-over-n",
        "a 2x2 table of 20 cases when n = 12",
        {"thresholds": [0.5], "tp": [5], "fp": [5], "fn": [5], "tn": [5]},
        "2x2 table 0 counts 20 cases, more than n = 12",
    ),
    # out of range, the value would stop the report being built for every site
    ("summary-auc-out-of-range", "auc = 1.5", {"auc": 1.5}, "auc = 1.5: must lie in [0, 1]"),
    (
        "summary-class-auc-out-of-range",
        "a one-vs-rest AUC of -0.2",
        {"class-auc": [0.8, -0.2, 0.7]},
        "class-auc[1] = -0.2: must lie in [0, 1]",
    ),
    ("summary-negative-variance", "auc-var = -0.01", {"auc-var": -0.01}, "auc-var = -0.01"),
]


@pytest.mark.parametrize(
    ("case", "what", "bad", "expected"), SUMMARY_CASES, ids=[c[0] for c in SUMMARY_CASES]
)
def test_an_unbelievable_evaluation_summary_is_rejected(
    case: str, what: str, bad: dict[str, Any], expected: str
) -> None:
    good = Message(RecordDict({RecordKey.METRICS: MetricRecord(dict(GOOD_SUMMARY))}), dst_node_id=1,
                   message_type="evaluate")  # fmt: skip
    assert summary_record(good, 15) == GOOD_SUMMARY
    record = MetricRecord({**GOOD_SUMMARY, **bad})
    reply = Message(RecordDict({RecordKey.METRICS: record}), dst_node_id=1, message_type="evaluate")
    with pytest.raises(ReplyError) as err:
        summary_record(reply, 15)
    assert expected in str(err.value), (what, str(err.value))


def test_final_evaluation_records_a_bad_summary_as_failed_and_keeps_the_others(
    tmp_path: Path,
) -> None:
    def answer(msg: Message) -> Message:
        record = dict(GOOD_SUMMARY)
        if msg.metadata.dst_node_id == 3:
            record["auc"] = float("inf")
        return Message(RecordDict({RecordKey.METRICS: MetricRecord(record)}), reply_to=msg)

    fed = _federation(tmp_path, answer)
    splits = {"site-1": "test", "site-2": "test", "site-3": "test"}
    out = fed.evaluate(fed.initial_arrays(), splits, "global")
    assert sorted(out) == ["site-1", "site-2"] and out["site-1"][0].auc == 0.8
    record = _records(tmp_path)[-1]
    assert record["failed"] == {
        "site-3": "summary rejected: metric 'auc' = inf: must be finite (no NaN or infinity)"
    }


# ---- a model trained at one site: the same screening chain -----------------------------------


def _trained(bigger: bool = False, n: float = 10.0) -> Answer:
    def answer(msg: Message) -> Message:
        sent = msg.content[RecordKey.ARRAYS]
        assert isinstance(sent, ArrayRecord)
        arrays = ArrayRecord({k: Array(v.numpy() + 0.01) for k, v in sent.items()})
        if bigger:
            arrays["padding"] = Array(np.zeros(2**18, np.float32))  # 1 MiB more
        metrics = MetricRecord({"num-examples": n, "train-loss": 0.5})
        content = RecordDict({RecordKey.ARRAYS: arrays, RecordKey.METRICS: metrics})
        return Message(content, reply_to=msg)

    return answer


ALONE_CASES: list[tuple[str, str, Answer, dict[str, Any], str]] = [
    ("alone-ok", "a plain model trained at one site (control)", _trained(), {}, ""),
    (
        "alone-oversized",
        "a local-only model over trust.max-update-mb",
        _trained(),
        {"trust.max-update-mb": 0.01},
        "over trust.max-update-mb = 0.01",
    ),
    (
        "alone-over-declared",
        "num-examples = 11 from a site that declared n_train = 10",
        _trained(n=11.0),
        {},
        "num-examples = 11.0: more than the 10 training case(s) the site declared",
    ),
    (
        "alone-nan-metric",
        "a NaN training loss with the local-only model",
        _trained(n=float("nan")),
        {},
        "metric 'num-examples' = nan: must be finite",
    ),
    (
        "alone-unsigned",
        "an unsigned model when trust.sign-updates = true",
        _trained(),
        {"trust.sign-updates": True},
        "signature: unsigned",
    ),
]


@pytest.mark.parametrize(
    ("case", "what", "answer", "extra", "expected"), ALONE_CASES, ids=[c[0] for c in ALONE_CASES]
)
def test_a_model_trained_alone_passes_the_same_screen_as_an_update(
    tmp_path: Path, case: str, what: str, answer: Answer, extra: dict[str, Any], expected: str
) -> None:
    fed = _federation(tmp_path, answer, **{"trust.sign-updates": False, **extra})
    site = fed.sites[0]
    arrays = fed.train_local_only(site, "local-site-1")
    if not expected:
        assert arrays is not None and set(arrays) == set(fed.initial_arrays()), what
        assert (tmp_path / "run" / checkpoint_name("local-site-1")).is_file()
        saved = [e["data"] for e in entries(tmp_path / "run") if e["kind"] == "checkpoint"]
        assert len(saved[-1]["update_sha256"]) == 64  # the digest of what was screened
        return
    assert arrays is None, what
    record = _records(tmp_path)[-1]
    assert record["model"] == "local-site-1" and expected in record["failed"]["site-1"], record


def test_docs_table_lists_every_reply_case() -> None:
    """docs/trust.md's table of bad inputs names every case of this file."""
    text = (ROOT / "docs" / "trust.md").read_text()
    tables: list[list[Any]] = [QUERY_CASES, STATS_CASES, SUMMARY_CASES, ALONE_CASES]
    ids = [c[0] for table in tables for c in table]
    missing = [i for i in ids if f"`{i}`" not in text]
    assert not missing, f"docs/trust.md does not list {missing}"


def test_deployed_statistics_must_be_signed_by_the_sites_key(tmp_path: Path) -> None:
    """``stats-unsigned`` / ``stats-other-key``: a deployed site signs its statistics with
    the challenge of the query (like its identity); a reply signed by another key, or not
    at all, is rejected and the others pooled."""
    from flwr.app import Context

    from client.trust import sign_identity
    from common.keys import ConfigKey
    from common.signing import Keyring, create_key_pair
    from server.site_identity import identity_problem, new_challenge

    keyring = Keyring(tmp_path / "keyring")
    keys = {}
    for n in (1, 2, 3):
        keys[n] = tmp_path / f"site-{n}" / "site_key"
        create_key_pair(keys[n], keyring.site_public(f"site-{n}"), f"site-{n}")
    intruder = tmp_path / "intruder" / "site_key"
    create_key_pair(intruder, tmp_path / "intruder.pub", "intruder")
    cfg = _cfg(tmp_path, **{"hooks.use": "nyul", "trust.keys-dir": str(keyring.folder)})
    challenge = new_challenge()
    replies = []
    for n, reply in zip((1, 2, 3), _stats_replies(_stats_answer({})), strict=True):
        query = ConfigRecord(
            {ConfigKey.SITE_CHALLENGE.value: challenge, "trust.keys-dir": str(keyring.folder)}
        )
        asked = Message(RecordDict({RecordKey.CONFIG: query}), dst_node_id=n, message_type="query")
        key = {1: keys[1], 2: intruder, 3: None}[n]  # site-2's reply signed by another key
        if key is not None:
            ctx = Context(run_id=1, node_id=n, node_config={"signing-key": str(key)},
                          state=RecordDict(), run_config={})  # fmt: skip
            sign_identity(asked, reply, ctx)
        replies.append(reply)

    def identity(reply: Message, info: ConfigRecord) -> str | None:
        return identity_problem(cfg, challenge, reply.metadata.src_node_id, info)

    stats, rejected = screen_statistics(
        replies, lambda r: f"site-{r.metadata.src_node_id}", DECLARED, HookSet(cfg), identity
    )
    assert sorted(stats) == ["site-1"]
    assert "not signed by site-2's registered key" in rejected["site-2"]
    assert "without signing its identity" in rejected["site-3"]
