"""The val count a site declares when it joins: parsed like n-train and n-test, 0 from a
site that sends none, part of the declared cases, and carried into ``sites_joined``."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from common.config import RunConfig
from common.keys import RecordKey, SiteKey
from server.reply_checks import ReplyError
from server.report.model_joined import SiteJoined
from server.sites import SiteInfo, site_from_reply

pytestmark = pytest.mark.usefixtures("flower_task")

FIELDS: dict[str, Any] = {
    SiteKey.NAME.value: "site-a",
    SiteKey.N_TRAIN.value: 10,
    SiteKey.N_TEST.value: 5,
    SiteKey.MANIFEST_SHA256.value: "ab" * 32,
}


def _site(**changes: Any) -> SiteInfo:
    fields = {k: v for k, v in {**FIELDS, **changes}.items() if v is not None}
    query = Message(RecordDict(), dst_node_id=7, message_type=MessageType.QUERY)
    reply = Message(RecordDict({RecordKey.SITE: ConfigRecord(fields)}), reply_to=query)
    return site_from_reply(reply, RunConfig())


def test_a_site_declares_its_val_cases() -> None:
    site = _site(**{SiteKey.N_VAL.value: 3})
    assert (site.n_train, site.n_val, site.n_test) == (10, 3, 5)
    assert site.declared_cases == 18  # no acquisition summary: train + val + test


def test_a_site_older_than_the_val_split_has_none() -> None:
    site = _site()
    assert site.n_val == 0 and site.declared_cases == 15


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-1, "n-val = -1: must be >= 0"),
        (2.5, "n-val = 2.5: must be a whole number"),
        ("3", "n-val = '3': must be a whole number"),
        (10**12, "n-val = 1000000000000: more than the 1e+07 cases a site can hold"),
    ],
)
def test_an_unbelievable_val_count_is_refused(value: object, expected: str) -> None:
    with pytest.raises(ReplyError, match=expected.replace("+", r"\+").replace(".", r"\.")):
        _site(**{SiteKey.N_VAL.value: value})


def test_the_acquisition_count_must_cover_val_too() -> None:
    acquisition = json.dumps({"n_cases": 16})
    with pytest.raises(ReplyError, match=r"must be >= 18 \(n-train \+ n-val \+ n-test = 18\)"):
        _site(**{SiteKey.N_VAL.value: 3, SiteKey.ACQUISITION.value: acquisition})
    site = _site(**{SiteKey.N_VAL.value: 3, SiteKey.ACQUISITION.value: json.dumps({"n_cases": 18})})
    assert site.declared_cases == 18


def test_sites_joined_rows_carry_n_val_and_older_rows_stay_valid() -> None:
    acquisition = json.dumps({"n_cases": 18})
    site = _site(**{SiteKey.N_VAL.value: 3, SiteKey.ACQUISITION.value: acquisition})
    row = {**asdict(site), "node_id": "7"}  # as the report builder writes it
    assert SiteJoined.model_validate(row).n_val == 3
    del row["n_val"]
    assert SiteJoined.model_validate(row).n_val is None
