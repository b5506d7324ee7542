"""Which cases each site scores at the end of a run."""

from __future__ import annotations

from server.sites import SiteInfo, default_splits


def site(name: str, role: str, n_test: int) -> SiteInfo:
    return SiteInfo(node_id=1, name=name, role=role, n_train=10, n_test=n_test, manifest_sha256="")


def test_training_sites_score_their_test_split_and_external_sites_every_case() -> None:
    sites = [
        site("a", "train", 12),
        site("b", "train", 0),  # nothing held out: nothing to score
        site("e", "external", 30),
        site("f", "external", 0),  # its manifest put every case in train: still scored
    ]
    assert default_splits(sites) == {"a": "test", "e": "all", "f": "all"}
