"""Contracts of the built-in hooks, on hand-made tensors and tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.config import RunConfig
from common.device import select_compute
from common.hooks import HookError, HookSet
from common.hooks.harmonize import Nyul, Percentile, ZScore, piecewise_linear
from common.hooks.proximal import proximal_term
from common.hooks.tta import BNAdapt, Tent, binary_entropy, reestimate_statistics
from common.models import build_model

CPU = select_compute(prefer="cpu")


def site_images(seed: int, scale: float, offset: float, n: int = 20) -> torch.Tensor:
    """Windowed-scale images whose foreground intensities a scanner has rescaled."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 2, 16, 16, generator=g) * 0.5 + 0.2  # foreground in (0.2, 0.7)
    images = (base * scale + offset).clamp(0.0, 1.0)
    images[:, :, :2, :] = 0.0  # padding / air: outside the window, never counted
    return images


def fg_percentiles(
    images: torch.Tensor, mask: torch.Tensor, c: int, pcts: list[float]
) -> list[float]:
    values = images[:, c][mask[:, c]].double().numpy()
    return [float(v) for v in np.percentile(values, pcts)]


def test_nyul_maps_every_sites_landmarks_onto_the_shared_scale() -> None:
    cfg = RunConfig().replace({"data.channels": "arterial,portal"})  # the images' 2 channels
    hook = Nyul(cfg)
    pcts = list(cfg.hooks.landmarks)
    sites = {"a": site_images(1, 1.0, 0.0, 30), "b": site_images(2, 0.8, 0.15, 10)}
    fitted = {k: hook.fit(v) for k, v in sites.items()}
    # only landmark vectors leave a site: one per channel, one value per percentile
    assert set(fitted["a"]) == {"landmarks-0", "landmarks-1"}
    assert all(len(v) == len(pcts) for v in fitted["a"].values())
    shared = hook.combine([(30.0, fitted["a"]), (10.0, fitted["b"])])
    expected = (
        30 * np.array(fitted["a"]["landmarks-1"]) + 10 * np.array(fitted["b"]["landmarks-1"])
    ) / 40
    np.testing.assert_allclose(shared["landmarks-1"], expected, rtol=1e-12)
    for name, images in sites.items():
        mask = (images > 0) & (images < 1)
        mapped = hook.preprocess(images, fitted[name], shared)
        for c in range(2):
            np.testing.assert_allclose(
                fg_percentiles(mapped, mask, c, pcts), shared[f"landmarks-{c}"], atol=2e-3
            )
    with pytest.raises(HookError, match="no standard scale"):
        hook.preprocess(sites["a"], fitted["a"], {})
    marks = fitted["a"]["landmarks-0"]
    bad = {
        "reversed": list(reversed(marks)),
        "NaN": [float("nan"), *marks[1:]],
        "short": marks[:-1],
    }
    for problem in bad.values():
        with pytest.raises(HookError, match="landmarks-0"):
            hook.combine([(1.0, {**fitted["a"], "landmarks-0": problem})])
    with pytest.raises(HookError, match=r"weight \(n_cases\) is 0.0"):
        hook.combine([(0.0, fitted["a"])])
    flat = {**shared, "landmarks-0": [0.5] * len(pcts)}
    with pytest.raises(HookError, match="shared scale for channel 0"):
        hook.preprocess(sites["a"], fitted["a"], flat)


def test_piecewise_linear_extrapolates_with_the_end_slopes() -> None:
    source, target = np.array([0.2, 0.4, 0.8]), np.array([0.0, 1.0, 2.0])
    out = piecewise_linear(np.array([0.1, 0.3, 0.6, 1.0]), source, target)
    np.testing.assert_allclose(out, [-0.5, 0.5, 1.5, 2.5])


def test_zscore_and_percentile_standardise_each_channel_of_a_site() -> None:
    images = site_images(3, 0.9, 0.05)
    mask = (images > 0) & (images < 1)
    z = ZScore(RunConfig())
    out = z.preprocess(images, z.fit(images), {})
    for c in range(2):
        values = out[:, c][mask[:, c]].double()
        assert float(values.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(values.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    p = Percentile(RunConfig())
    out = p.preprocess(images, p.fit(images), {})
    for c in range(2):
        lo, hi = fg_percentiles(out, mask, c, [1.0, 99.0])
        assert lo == pytest.approx(0.0, abs=1e-5) and hi == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(HookError, match="inside the intensity window"):
        z.fit(torch.zeros(2, 2, 8, 8))


def test_the_proximal_term_is_zero_at_mu_zero_and_pulls_toward_the_global_weights() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert proximal_term(model, reference, 0.0) is None
    at_start = proximal_term(model, reference, 0.5)
    assert at_start is not None and float(at_start.detach()) == 0.0
    with torch.no_grad():
        model.weight += 1.0  # drift: 3 weights moved by 1
    term = proximal_term(model, reference, 0.5)
    assert term is not None and float(term.detach()) == pytest.approx(0.5 / 2 * 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = float((model.weight - reference["weight"]).norm().detach())
    optimizer.zero_grad()
    term.backward()
    optimizer.step()
    after = float((model.weight - reference["weight"]).norm().detach())
    assert after == pytest.approx(before * 0.75)  # w <- w - lr * mu * (w - w_g)


def _bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
    )


def test_bn_adapt_replaces_running_statistics_by_the_sites_batch_average() -> None:
    torch.manual_seed(1)
    model = _bn_net().eval()
    images = site_images(4, 1.0, 0.1, n=16)
    reestimate_statistics(model, images, CPU, batch_size=8)
    conv, bn = model[0], model[1]  # type: ignore[index]
    with torch.no_grad():
        feats = [conv(images[i : i + 8]) for i in (0, 8)]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, variances, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training  # settings restored, eval mode


def test_tent_moves_only_batchnorm_affine_parameters_and_lowers_entropy() -> None:
    cfg = RunConfig().replace(
        {"hooks.tent-steps": 20, "hooks.tent-lr": 0.01, "train.batch-size": 16}
    )
    torch.manual_seed(2)
    model = _bn_net()
    images = site_images(5, 1.0, 0.0, n=16)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def entropy() -> float:
        model.train()
        with torch.no_grad():
            value = float(binary_entropy(model(images)))
        model.eval()
        return value

    start = entropy()
    model.load_state_dict(before)
    Tent(cfg).adapt(model, images, CPU)
    after = model.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"])  # conv frozen
    assert torch.equal(after["5.weight"], before["5.weight"])  # classifier frozen
    assert not torch.equal(after["1.weight"], before["1.weight"])  # BN affine adapted
    assert all(p.requires_grad for p in model.parameters())  # trainability restored
    assert entropy() < start


def test_test_time_hooks_take_only_images() -> None:
    import inspect

    for cls in (BNAdapt, Tent):
        params = list(inspect.signature(cls.adapt).parameters)
        assert params == ["self", "model", "images", "compute"]
    hooks = HookSet(RunConfig().replace({"hooks.use": "bn-adapt,tent"}))
    model = build_model(RunConfig().replace({"data.roi-size": 32, "data.context-mm": 0.0}))
    assert hooks.adapt(model, torch.rand(6, 3, 32, 32), CPU) == "bn-adapt+tent"


def test_nyul_combine_refuses_statistics_that_would_poison_the_scale() -> None:
    """One site's statistics decide the shared scale with its weight: an infinite or NaN
    weight, landmarks for other channels, or absurd values are refused by name, and an
    overflowing weighted mean is never returned."""
    cfg = RunConfig().replace({"data.channels": "arterial,portal"})
    hook = Nyul(cfg)
    good = hook.fit(site_images(1, 1.0, 0.0, 30))
    alone = hook.combine([(7.0, good)])  # one site: the scale is its own landmarks
    for key in good:
        np.testing.assert_allclose(alone[key], good[key], rtol=1e-15)
    for weight in (float("inf"), float("nan"), -3.0):
        with pytest.raises(HookError, match=r"weight \(n_cases\) is"):
            hook.combine([(weight, good)])
    with pytest.raises(HookError, match=r"are not \['landmarks-0', 'landmarks-1'\]"):
        hook.combine([(1.0, {"landmarks-0": good["landmarks-0"]})])  # a channel missing
    with pytest.raises(HookError, match="are not"):
        hook.combine([(1.0, {**good, "landmarks-7": good["landmarks-0"]})])
    huge = [v * 1e300 for v in good["landmarks-0"]]  # finite, increasing, absurd
    with pytest.raises(HookError, match=r"landmarks-0 has a value beyond \+-1e\+06"):
        hook.combine([(1.0, {**good, "landmarks-0": huge})])
    # two finite weights whose sum overflows: the mean would be NaN, the scale refused
    with pytest.raises(HookError, match="combined scale is not finite"):
        hook.combine([(1.7e308, good), (1.7e308, good)])
