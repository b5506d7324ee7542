"""A poisoned site (simulations.attacks) against the server's defences: the issue's
acceptance test, "a poisoned site (update scaled x100, or sign-flipped) with robust
aggregation keeps test AUC within 0.02 of the clean run".

What is compared: the AUC of the final global model on the test split of each *honest*
site (site-b..site-e; the poisoned hospital's own test cases are left out), averaged
over those four sites, read from RUN_DIR/evaluations.json. The clean run is the model a
normal run gives: FedAvg, no attack. Every other run poisons site-a and nothing else.

The setup, chosen after measuring several (docs/trust.md, "Poisoned sites"): five sites
(Krum tolerates f = 1 only with n >= 2f + 3 = 5) of 30 phantom cases each (20 train,
10 test), 3 rounds of 10 local epochs with batches of 8. With 2 rounds of 3 epochs the
models were still far from converged and the AUCs of runs that differ only in which
sites' updates were averaged moved by 0.05-0.15 (FedAvg on four sites against five:
0.91 against 0.98); in this setup every honest model reaches the same plateau, so a
difference measures the attack, not the training noise. Runs are deterministic by
seed (updates are aggregated in site order), so the figures repeat exactly.

The clean AUC sits at the ceiling (1.00 at every honest site: the phantom is easy once
learned), so the bound says "as good at every honest site", and the test can fail
because the attack bites: the same x100 site under plain FedAvg with the norm check off
collapses the model (its scores become NaN at every site, or at least its AUC falls far
below the clean run's). Robust aggregation must stay within 0.02 of the clean run with
the norm check off, so that it alone defends. A sign-flipped site under plain FedAvg
only shrinks the mean step; whether that shows in the final AUC depends on the seeds,
so it is not asserted (docs/trust.md gives the figures).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from client.app import app as clean_client
from common.config import RunConfig
from server.final_evaluation import EvaluationsFailedError
from server.records import read_evaluations, read_rounds
from simulations.attacks import AttackError, poison_mod, poisoned_client
from simulations.federated import run_federated
from tests.conftest import make_site

SITES = ("site-a", "site-b", "site-c", "site-d", "site-e")
POISONED = SITES[0]
HONEST = SITES[1:]
TOLERANCE = 0.02  # the bound on |AUC(defended) - AUC(clean)|
DAMAGE = 0.1  # undefended, the attack must cost clearly more than the tolerance
SETTINGS: dict[str, Any] = {
    "data.roi-size": 32,
    "data.context-mm": 0.0,
    "federation.num-rounds": 3,
    "train.local-epochs": 10,
    "train.batch-size": 8,
    "train.amp": False,
    "eval.every-round": False,  # only the final model is compared
    "eval.min-cases": 10,
    "eval.min-per-class": 5,
}
NO_NORM_CHECK = {"trust.norm-z": 0}  # robust aggregation alone must defend
ROBUST: dict[str, dict[str, Any]] = {
    "fedmedian": {"federation.strategy": "fedmedian"},
    "fedtrimmedavg": {"federation.strategy": "fedtrimmedavg", "federation.trim-beta": 0.2},
    "krum": {"federation.strategy": "krum", "federation.krum-byzantine": 1},
}
ATTACKS = {"x100": ("scale", 100.0), "sign-flip": ("sign-flip", 1.0)}


# ---- the mod on hand-made messages ---------------------------------------------------------

RECEIVED = {"conv.weight": np.full((2, 3), 0.5), "fc.bias": np.array([1.0, -1.0])}
UPDATE = {"conv.weight": np.full((2, 3), 0.01), "fc.bias": np.array([0.02, -0.03])}


def _record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()})


def _message(kind: str = MessageType.TRAIN) -> Message:
    content = RecordDict({"arrays": _record(RECEIVED), "config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=0, message_type=kind)


def _handler(site: str, update: dict[str, np.ndarray] = UPDATE) -> Callable[..., Message]:
    """Stands in for the ClientApp's handlers: ``site`` replies with ``received + update``."""

    def handler(msg: Message, ctx: Context) -> Message:
        received = cast(ArrayRecord, msg.content["arrays"])
        content = RecordDict(
            {
                "arrays": _record({k: received[k].numpy() + u for k, u in update.items()}),
                "metrics": MetricRecord({"num-examples": 12}),
                "site": ConfigRecord({"name": site}),
            }
        )
        return Message(content, reply_to=msg)

    return handler


def _context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def _sent_update(reply: Message) -> dict[str, np.ndarray]:
    arrays = cast(ArrayRecord, reply.content["arrays"])
    return {k: arrays[k].numpy().astype(np.float64) - RECEIVED[k] for k in arrays}


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize(("kind", "factor"), [("scale", 100.0), ("sign-flip", -1.0)])
def test_the_named_site_sends_the_poisoned_update(kind: str, factor: float) -> None:
    reply = poison_mod(POISONED, kind, 100.0)(_message(), _context(), _handler(POISONED))
    sent = _sent_update(reply)
    assert list(sent) == list(UPDATE)
    for key, u in UPDATE.items():
        np.testing.assert_allclose(sent[key], factor * u, rtol=1e-4, atol=1e-6)
    assert cast(ArrayRecord, reply.content["arrays"])["fc.bias"].dtype == "float32"


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize(
    ("site", "kind"), [("site-b", MessageType.TRAIN), (POISONED, MessageType.EVALUATE)]
)
def test_other_sites_and_other_messages_pass_untouched(site: str, kind: str) -> None:
    reply = poison_mod(POISONED, "scale")(_message(kind), _context(), _handler(site))
    for key, u in _sent_update(reply).items():
        np.testing.assert_allclose(u, UPDATE[key], atol=1e-6)


@pytest.mark.usefixtures("flower_task")
def test_a_site_keeping_layers_local_is_poisoned_on_what_it_sends() -> None:
    part = {"conv.weight": UPDATE["conv.weight"]}  # fc.bias stays at the site (a hook)
    mod = poison_mod(POISONED, "sign-flip")
    sent = _sent_update(mod(_message(), _context(), _handler(POISONED, part)))
    assert list(sent) == ["conv.weight"]
    np.testing.assert_allclose(sent["conv.weight"], -part["conv.weight"], atol=1e-6)


@pytest.mark.usefixtures("flower_task")
def test_a_compressed_update_is_refused_naming_the_setting() -> None:
    def compressed(msg: Message, ctx: Context) -> Message:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"packed": Array(np.zeros(8, dtype=np.int8))}),
                "scales": ArrayRecord({"packed": Array(np.ones(1, dtype=np.float32))}),
                "metrics": MetricRecord({"num-examples": 12}),
                "site": ConfigRecord({"name": POISONED}),
            }
        )
        return Message(content, reply_to=msg)

    with pytest.raises(AttackError, match="federation.compression = 'none'"):
        poison_mod(POISONED, "scale")(_message(), _context(), compressed)


def test_an_unknown_kind_names_the_valid_kinds() -> None:
    with pytest.raises(AttackError, match="'scale', 'sign-flip'"):
        poison_mod(POISONED, "label-flip")


# ---- federations with a poisoned site --------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five phantom hospitals, shared by every run of this module."""
    root = tmp_path_factory.mktemp("poisoning")
    for i, name in enumerate(SITES):
        make_site(root / "sites", name, n_cases=30, seed=11 + i)
    return root


def _run(root: Path, name: str, overrides: dict[str, Any], client: ClientApp) -> Path:
    run_dir = root / name
    cfg = RunConfig().replace(
        {
            **SETTINGS,
            "data.site-root": str(root / "sites"),
            "data.cache-dir": str(root / "cache"),  # preprocess each case once for all runs
            "output.run-dir": str(run_dir),
            **overrides,
        }
    )
    run_federated(cfg, client=client)
    return run_dir


def _honest_auc(run_dir: Path) -> float | None:
    """Mean test AUC of the final global model over the honest sites; None when one of
    them could not score it (a collapsed model's scores are NaN)."""
    aucs = {
        e["site"]: e["summary"].get("auc")
        for e in read_evaluations(run_dir)
        if e["model"] == "global" and e["split"] == "test"
    }
    honest = [aucs.get(site) for site in HONEST]
    if any(a is None for a in honest):
        return None
    return float(np.mean(cast(list[float], honest)))


def _train_rounds(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_rounds(run_dir) if r["phase"] == "train"]


@pytest.fixture(scope="module")
def clean(root: Path) -> float:
    """The honest-site AUC of a normal run: FedAvg, default norm check, no attack."""
    run_dir = _run(root, "clean", {}, clean_client)
    assert all(not r["rejected"] for r in _train_rounds(run_dir))
    auc = _honest_auc(run_dir)
    assert auc is not None and auc >= 0.9, auc  # the federation learned the task
    return auc


@pytest.mark.slow
def test_fedavg_without_defences_is_broken_by_the_boosted_site(root: Path, clean: float) -> None:
    client = poisoned_client(POISONED, "scale", 100.0)
    try:
        run_dir = _run(root, "fedavg-x100", NO_NORM_CHECK, client)
    except EvaluationsFailedError as e:
        # collapsed: no site could score the model, and the run says so instead of finishing
        # (``dp-all-evaluations-failed``); the records show why
        assert "every final evaluation of global failed" in str(e)
        run_dir = root / "fedavg-x100"
        assert all(not r["rejected"] for r in _train_rounds(run_dir))  # nothing stopped it
        final = read_rounds(run_dir)[-1]
        assert final["phase"] == "final-evaluate" and set(final["failed"]) >= set(HONEST)
        assert all("NaN" in reason for reason in final["failed"].values())
        return
    assert all(not r["rejected"] for r in _train_rounds(run_dir))  # nothing stopped it
    damaged = _honest_auc(run_dir)
    assert damaged is not None and damaged < clean - DAMAGE, (damaged, clean)


@pytest.mark.slow
@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("strategy", list(ROBUST))
def test_robust_aggregation_keeps_auc_within_tolerance_of_the_clean_run(
    root: Path, clean: float, strategy: str, attack: str
) -> None:
    kind, scale = ATTACKS[attack]
    run_dir = _run(
        root,
        f"{strategy}-{attack}",
        {**ROBUST[strategy], **NO_NORM_CHECK},
        poisoned_client(POISONED, kind, scale),
    )
    rounds = _train_rounds(run_dir)
    # the poisoned update reached the strategy every round: only the aggregation defended
    assert [sorted(r["sites"]) for r in rounds] == [list(SITES)] * SETTINGS["federation.num-rounds"]
    defended = _honest_auc(run_dir)
    assert defended is not None and abs(defended - clean) <= TOLERANCE, (defended, clean)


@pytest.mark.slow
def test_the_norm_check_rejects_the_boosted_site_under_fedavg(root: Path, clean: float) -> None:
    run_dir = _run(root, "fedavg-x100-norm-check", {}, poisoned_client(POISONED, "scale", 100.0))
    rounds = _train_rounds(run_dir)
    assert len(rounds) == SETTINGS["federation.num-rounds"]
    for r in rounds:
        assert set(r["rejected"]) == {POISONED}, r["rejected"]
        assert "is an outlier" in r["rejected"][POISONED]
        assert sorted(r["sites"]) == list(HONEST) and r["applied"]
    defended = _honest_auc(run_dir)
    assert defended is not None and abs(defended - clean) <= TOLERANCE, (defended, clean)
