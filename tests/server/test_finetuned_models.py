"""Fine-tuned models in the holdout design: one per training site, scored everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import RunConfig
from common.keys import Share
from common.summary import SiteSummary
from server.designs import finetuned_evaluations
from server.sites import SiteInfo, default_splits


@dataclass
class StubFederation:
    """Records what the design asks of the federation."""

    cfg: RunConfig
    sites: list[SiteInfo]
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def trainers(self) -> list[SiteInfo]:
        return [s for s in self.sites if s.role == "train"]

    def finetune(self, site: SiteInfo, arrays: Any, base: str, model: str) -> Any:
        assert model == f"finetuned-{site.name}"
        self.calls.append(("finetune", site.name, arrays, base))
        return None if site.name == "c" else f"weights-{site.name}"  # c fails: recorded, skipped

    def evaluate(
        self, arrays: Any, splits: dict[str, str], model: str, share: str
    ) -> dict[str, tuple[SiteSummary, str]]:
        self.calls.append(("evaluate", arrays, model, share))
        return {s: (SiteSummary(n=1, n_pos=0, n_neg=1, insufficient=True), "none") for s in splits}


def _site(name: str, role: str) -> SiteInfo:
    return SiteInfo(0, name, role, 10, 5, "sha")


def test_each_training_site_fine_tunes_the_global_model_and_it_is_scored_everywhere() -> None:
    sites = [_site("a", "train"), _site("b", "train"), _site("c", "train"), _site("x", "external")]
    splits = default_splits(sites)
    # the operating threshold has its own test (test_threshold_choice.py)
    fixed = RunConfig().replace({"eval.threshold-rule": "fixed"})
    off = StubFederation(fixed, sites)
    assert finetuned_evaluations(off, "global-weights", "global", splits) == []  # type: ignore[arg-type]
    assert off.calls == []
    fed = StubFederation(fixed.replace({"hooks.finetune-epochs": 3}), sites)
    evals = finetuned_evaluations(fed, "global-weights", "global", splits)  # type: ignore[arg-type]
    assert [c[:2] for c in fed.calls if c[0] == "finetune"] == [
        ("finetune", "a"),
        ("finetune", "b"),
        ("finetune", "c"),
    ]
    assert all(c[2:] == ("global-weights", "global") for c in fed.calls if c[0] == "finetune")
    scored = [c for c in fed.calls if c[0] == "evaluate"]
    assert [(c[1], c[2], c[3]) for c in scored] == [
        ("weights-a", "finetuned-a", Share.ALL),
        ("weights-b", "finetuned-b", Share.ALL),
    ]
    roles = {(e.model, e.site): (e.role, e.split) for e in evals}
    assert roles[("finetuned-a", "a")] == ("internal", "test")
    assert roles[("finetuned-a", "b")] == ("external", "test")
    assert roles[("finetuned-a", "x")] == ("external", "all")
    assert len(evals) == 8  # two fine-tuned models x four sites; c's failure adds none
