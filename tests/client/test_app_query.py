"""The ClientApp's query reply: who the site is and how its images were acquired (aggregates)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import query as query_handler
from common.config import RunConfig
from server.sites import FederationError, parse_acquisition
from tests.dicom_series import make_mixed_site


def _query(site: Path, cfg: RunConfig, **policy: Any) -> dict[str, Any]:
    msg = Message(
        RecordDict({"config": ConfigRecord(cfg.to_flat())}),
        dst_node_id=0,
        message_type=MessageType.QUERY,
    )
    ctx = Context(
        run_id=1,
        node_id=0,
        node_config={"site-dir": str(site), **{f"policy.{k}": v for k, v in policy.items()}},
        state=RecordDict(),
        run_config={},
    )
    reply = query_handler(msg, ctx)
    assert set(reply.content.keys()) == {"site"}
    return dict(reply.content["site"])


@pytest.mark.usefixtures("flower_task")
def test_query_reply_carries_the_acquisition_summary(tmp_path: Path) -> None:
    site = make_mixed_site(tmp_path, n_pairs=3)
    cfg = RunConfig().replace({"data.channels": "ct", "data.spatial-dims": 3})
    info = _query(site, cfg, **{"min-cell": 3})  # a site that lets groups of 3 cases leave
    assert info["name"] == "site-dicom" and info["n-train"] == 6
    assert all(isinstance(v, str | int | float) for v in info.values())  # ConfigRecord values
    acq = json.loads(str(info["acquisition"]))
    assert acq == {
        "n_cases": 6,
        "vendor": {"GE MEDICAL SYSTEMS": 3},
        "scanner_model": {"Revolution CT": 3},
        "kernel": {"STANDARD": 3},
        "slice_thickness_mm": {"n": 3, "min": 2.0, "median": 2.0, "max": 2.0},
        "kvp": {"n": 3, "min": 120.0, "median": 120.0, "max": 120.0},
        "contrast_delay_s": {"ct": {"n": 3, "min": 35.5, "median": 35.5, "max": 35.5}},
    }
    # the server keeps it as SiteInfo.acquisition
    assert parse_acquisition(info["acquisition"], "site-dicom") == acq
    # under the default policy (min-cell 5) nothing describing 3 cases leaves the site
    assert json.loads(str(_query(site, cfg)["acquisition"])) == {"n_cases": 6}


@pytest.mark.usefixtures("flower_task")
def test_acquisition_summary_has_no_per_case_value(site_factory: Callable[..., Path]) -> None:
    """Sites of 6 and 30 cases send summaries of the same shape: counts and ranges only."""
    shapes = []
    for name, n in (("small", 6), ("large", 30)):
        acq = json.loads(str(_query(site_factory(name, n_cases=n), RunConfig())["acquisition"]))
        assert acq == {"n_cases": n, "vendor": {"test-vendor": n}}
        shapes.append(sorted(acq))
    assert shapes[0] == shapes[1]


def test_server_rejects_a_malformed_summary_and_accepts_none() -> None:
    assert parse_acquisition(None, "a") == {} and parse_acquisition("", "a") == {}
    with pytest.raises(FederationError, match="site a sent an acquisition summary"):
        parse_acquisition("{not json", "a")
    with pytest.raises(FederationError, match="not an object"):
        parse_acquisition("[1, 2]", "a")
