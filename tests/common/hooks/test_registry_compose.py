"""Hook names, user hooks by import path, and the documented composition order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import nn

from common.config import ConfigError, RunConfig
from common.hooks import BUILTIN, Hook, HookError, HookPoint, HookSet, Statistics
from common.hooks.normalization import FedBN, SiloBN
from common.hooks.proximal import ProximalStrategy
from common.models import build_model
from server.method_runs import describe_method, method_config, training_signature


class Shift(Hook):
    """A user hook: adds a constant at PREPROCESS and wraps the strategy."""

    name: ClassVar[str] = "shift"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.PREPROCESS, HookPoint.AGGREGATION)

    def fit(self, images: torch.Tensor) -> Statistics:
        return {"mean": [float(images.mean())]}

    def preprocess(
        self, images: torch.Tensor, fitted: Statistics, shared: Statistics
    ) -> torch.Tensor:
        return images + 1.0

    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        return Wrapped(strategy, "shift")


class Double(Hook):
    name: ClassVar[str] = "double"
    points: ClassVar[tuple[HookPoint, ...]] = (
        HookPoint.PREPROCESS,
        HookPoint.AGGREGATION,
        HookPoint.OBJECTIVE,
    )

    def preprocess(
        self, images: torch.Tensor, fitted: Statistics, shared: Statistics
    ) -> torch.Tensor:
        return images * 2.0

    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        return Wrapped(strategy, "double")

    def penalty(
        self, model: nn.Module, reference: Mapping[str, torch.Tensor], config: Mapping[str, Any]
    ) -> torch.Tensor | None:
        return torch.tensor(2.0)


class Wrapped(ProximalStrategy):
    """Records which hook wrapped it (ProximalStrategy forwards every call)."""

    def __init__(self, inner: Strategy, tag: str) -> None:
        super().__init__(inner, 0.0)
        self.tag = tag


class NotAHook:
    pass


HERE = __name__


def test_unknown_hook_name_is_a_config_error_listing_the_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig().replace({"hooks.use": "fedbm"})
    text = str(err.value)
    assert "'fedbm'" in text
    for name in BUILTIN:
        assert name in text
    with pytest.raises(ConfigError, match="names a hook twice"):
        RunConfig().replace({"hooks.use": "fedbn,fedbn"})
    with pytest.raises(ConfigError, match="cannot import"):
        RunConfig().replace({"hooks.use": "no_such_module_xyz:Hook"})
    with pytest.raises(ConfigError, match="not a subclass"):
        RunConfig().replace({"hooks.use": f"{HERE}:NotAHook"})
    with pytest.raises(ConfigError, match="hooks.landmarks"):
        RunConfig().replace({"hooks.landmarks": "50,10"})


def test_built_in_names_and_points() -> None:
    assert sorted(BUILTIN) == [
        "bn-adapt",
        "fedbn",
        "fedprox",
        "nyul",
        "percentile",
        "silobn",
        "tent",
        "zscore",
    ]
    assert BUILTIN["fedprox"].points == (HookPoint.OBJECTIVE, HookPoint.AGGREGATION)
    assert BUILTIN["tent"].points == (HookPoint.TEST_TIME,)


def test_user_hooks_by_import_path_compose_in_list_order() -> None:
    cfg = RunConfig().replace({"hooks.use": f"{HERE}:Shift,{HERE}:Double"})
    hooks = HookSet(cfg)
    images = torch.zeros(2, 1, 4, 4)
    fitted = hooks.fit(images, {})
    # PREPROCESS in list order: (0 + 1) * 2, not 0 * 2 + 1
    assert torch.equal(hooks.preprocess(images, fitted, {}), torch.full_like(images, 2.0))
    # AGGREGATION: the first hook's wrapper is innermost
    outer = hooks.wrap_strategy(FedAvg())
    assert isinstance(outer, Wrapped) and outer.tag == "double"
    assert isinstance(outer.inner, Wrapped) and outer.inner.tag == "shift"
    assert isinstance(outer.inner.inner, FedAvg)
    reversed_cfg = RunConfig().replace({"hooks.use": f"{HERE}:Double,{HERE}:Shift"})
    reversed_hooks = HookSet(reversed_cfg)
    fitted = reversed_hooks.fit(images, {})
    assert torch.equal(reversed_hooks.preprocess(images, fitted, {}), torch.ones_like(images))
    # OBJECTIVE: penalties are summed (Double's 2 plus FedProx's term, zero at the reference)
    model = nn.Linear(2, 1)
    ref = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with_prox = HookSet(
        RunConfig().replace({"hooks.use": f"{HERE}:Double,fedprox"}), {"proximal-mu": 1.0}
    )
    total = with_prox.penalty(model, ref, {"proximal-mu": 1.0})
    assert total is not None and float(total.detach()) == pytest.approx(2.0)


def test_sharing_keys_are_the_union_and_fedbn_covers_silobn() -> None:
    model = build_model(RunConfig())
    fedbn = HookSet(RunConfig().replace({"hooks.use": "fedbn"})).local_keys(model)
    silobn = HookSet(RunConfig().replace({"hooks.use": "silobn"})).local_keys(model)
    both = HookSet(RunConfig().replace({"hooks.use": "silobn,fedbn"})).local_keys(model)
    assert silobn < fedbn and both == fedbn
    assert {k.rsplit(".", 1)[1] for k in silobn} == {"running_mean", "running_var"}
    assert {k.rsplit(".", 1)[1] for k in fedbn} == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
    }
    assert FedBN(RunConfig()).local_keys(model) == fedbn
    assert SiloBN(RunConfig()).local_keys(model) == silobn


@pytest.mark.parametrize("hook", ["fedbn", "silobn", "bn-adapt", "tent"])
def test_batchnorm_hooks_refuse_a_network_without_batchnorm(hook: str) -> None:
    cfg = RunConfig().replace({"task": "lesion-segmentation", "hooks.use": hook})
    model = build_model(cfg)  # MONAI UNet: InstanceNorm without running statistics
    with pytest.raises(HookError, match="BatchNorm"):
        HookSet(cfg).check_model(model)


def test_a_flower_fedprox_key_alone_turns_the_proximal_term_on() -> None:
    assert HookSet(RunConfig()).at(HookPoint.OBJECTIVE) == []
    hooks = HookSet(RunConfig(), ConfigRecord({"proximal-mu": 0.5}))
    assert [h.name for h in hooks.at(HookPoint.OBJECTIVE)] == ["fedprox"]


class SharingToo(Hook):
    name: ClassVar[str] = "sharing-too"
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.PREPROCESS,)
    shares_statistics: ClassVar[bool] = True


class ShiftAgain(Shift):
    """A user hook reusing a built-in hook's name."""

    name: ClassVar[str] = "zscore"


def test_at_most_one_hook_shares_statistics_and_names_are_unique() -> None:
    HookSet(RunConfig().replace({"hooks.use": "zscore,nyul"}))
    with pytest.raises(ConfigError, match="at most one"):
        RunConfig().replace({"hooks.use": f"nyul,{HERE}:SharingToo"})
    with pytest.raises(ConfigError, match="a name of its own"):
        RunConfig().replace({"hooks.use": f"{HERE}:ShiftAgain"})
    with pytest.raises(ConfigError, match="a name of its own"):
        RunConfig().replace({"hooks.use": f"{HERE}:Nameless"})


class Nameless(Hook):
    points: ClassVar[tuple[HookPoint, ...]] = (HookPoint.TEST_TIME,)


def test_pooled_statistics_depend_on_every_preprocess_hook_up_to_the_sharing_one() -> None:
    def key(use: str) -> tuple[str, ...]:
        return HookSet(RunConfig().replace({"hooks.use": use})).statistics_key()

    assert key("zscore") == () and key("fedbn") == ()
    assert key("nyul") != key("percentile,nyul")
    assert key("percentile,nyul") == key("percentile,nyul,bn-adapt")
    assert key("nyul,zscore") == key("nyul")


def test_methods_parse_and_share_training_when_only_scoring_differs() -> None:
    cfg = RunConfig()
    assert method_config(cfg, "fedavg") == cfg
    assert method_config(cfg, "fedbn+tent").hooks.use == ("fedbn", "tent")
    assert method_config(cfg, "fedadam").federation.strategy == "fedadam"
    assert method_config(cfg, "finetune").hooks.finetune_epochs == 2
    tuned = cfg.replace({"hooks.finetune-epochs": 3})
    assert method_config(tuned, "finetune").hooks.finetune_epochs == 3
    assert method_config(tuned, "fedavg").hooks.finetune_epochs == 0  # never the baseline
    sig = training_signature
    assert sig(method_config(cfg, "bn-adapt")) == sig(cfg) == sig(method_config(cfg, "finetune"))
    assert sig(method_config(cfg, "fedbn+tent")) == sig(method_config(cfg, "fedbn"))
    assert sig(method_config(cfg, "fedbn")) != sig(cfg)
    with pytest.raises(ConfigError, match="unknown hook 'fedbm'"):
        method_config(cfg, "fedbm")
    # a channel subset: its own model (trains differently), described against the base
    mri = cfg.replace({"data.channels": "t2,dwi,adc"})
    sub = method_config(mri, "channels=t2:dwi+fedbn")
    assert sub.data.channels == ("t2", "dwi") and sub.hooks.use == ("fedbn",)
    assert sig(method_config(mri, "channels=t2")) != sig(mri)
    assert describe_method(method_config(mri, "channels=t2"), mri) == ["channels t2"]
    assert describe_method(mri, mri) == []
    for bad, why in (("channels=t1", "unknown: t1"), ("channels=t2:t2", "distinct")):
        with pytest.raises(ValueError, match=why):
            method_config(mri, bad)


def test_proximal_strategy_sends_flowers_fedprox_key(flower_task: object) -> None:
    class Grid:
        def get_node_ids(self) -> list[int]:
            return [1, 2]

    arrays = ArrayRecord({"w": torch.zeros(2)})
    hooks = HookSet(RunConfig().replace({"hooks.use": "fedprox", "hooks.prox-mu": 0.25}))
    strategy = hooks.wrap_strategy(FedAvg())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({"a": 1}), Grid()))  # type: ignore[arg-type]
    assert len(messages) == 2
    for msg in messages:
        assert msg.content["config"]["proximal-mu"] == 0.25
        assert msg.content["config"]["a"] == 1
