"""Streaming aggregation and update compression, against Flower's own aggregation.

Reference: Flower's ``aggregate_arrayrecords`` and its strategies' ``aggregate_train``
(the stock path every Flower ServerApp uses); a streamed FedAvg must give the same
weighted mean up to float32 rounding, and the server optimisers the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.array_views import _plain_header, array_view
from common.compression import BLOCK, PACKED, compress_update, decode, encode, pack, unpack
from common.keys import Compression
from server.aggregation import Mode, RoundAggregator, reply_update
from server.folding import RunningMean, Update, UpdateRejected
from server.validation import update_problem

pytestmark = pytest.mark.usefixtures("flower_task")

SHAPES = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "fc.weight": (2, 700), "bn.mean": (8,)}
SITES = ["site-a", "site-b", "site-c", "site-d", "site-e"]


def _global(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in tensors.items()})


def _message(
    tensors: dict[str, np.ndarray], n: float, scales: dict[str, np.ndarray] | None = None
) -> Message:
    content = RecordDict({"arrays": _record(tensors), "metrics": MetricRecord({"num-examples": n})})
    if scales:
        content["scales"] = _record(scales)
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def _updates(seed: int = 1) -> dict[str, tuple[dict[str, np.ndarray], float]]:
    rng = np.random.default_rng(seed)
    base = _global()
    return {
        site: (
            {
                k: (v + rng.normal(scale=0.05, size=v.shape)).astype(np.float32)
                for k, v in base.items()
            },
            float(rng.integers(10, 200)),
        )
        for site in SITES
    }


@pytest.mark.parametrize(
    "values",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        np.array(3.5, dtype=np.float32),
        np.arange(10, dtype=np.int8),
        np.linspace(-1, 1, 9, dtype=np.float16),
        np.zeros((0, 4), np.float32),
    ],
)
def test_array_view_reads_flowers_bytes_without_a_copy(values: np.ndarray) -> None:
    array = Array(values)
    view = array_view(array)
    np.testing.assert_array_equal(view, array.numpy())
    assert view.dtype == array.numpy().dtype and view.shape == values.shape
    if values.size:
        assert not view.flags.owndata and not view.flags.writeable  # a view of the bytes
    assert _plain_header(array.data) is not None  # NumPy's own header: the fast path


def _npy(text: str, version: int = 1, values: int = 5) -> bytes:
    """``.npy`` bytes with the header dict ``text``, padded as NumPy pads it, and 5 float32
    values: the header a rogue site could sign and send."""
    size = 2 if version == 1 else 4
    body = text.encode("latin1") + b" "
    body += b" " * (-(10 + size - 2 + len(body) + 1) % 64) + b"\n"
    head = b"\x93NUMPY" + bytes([version, 0]) + len(body).to_bytes(size, "little")
    return head + body + np.arange(values, dtype=np.float32).tobytes()


def _plain(shape: str, descr: str = "<f4") -> str:
    return f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"


HOSTILE_HEADERS = {
    "past 2^63 values": (_plain("(100000000000000000000000,)"), "needs more values"),
    "wraps to 0 in int64": (_plain("(4294967296, 4294967296, 4)"), "needs more values"),
    "one value too many": (_plain("(6,)"), "needs more values"),
    "an unknown dtype code": (_plain("(5,)", "<x4"), "unreadable"),
    "a float of 3 bytes": (_plain("(5,)", "<f3"), "unreadable"),
    "a size below C's": (_plain("(-9223372036854775809,)"), "non-negative"),
    "a negative size": (_plain("(-5,)"), "non-negative"),
    "a size that is True": (_plain("(True,)"), "non-negative"),
    "65 dimensions": (_plain("(" + "1, " * 64 + "1)"), "64 or fewer"),
    "nesting past the parser": ("{'x': " + "-" * 3900 + "1}", "unreadable|header"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_a_hostile_header_is_a_named_rejection_not_a_failed_round(case: str) -> None:
    """Every header a writer of ``.npy`` files does not make is a ValueError, which the
    aggregator names as its site's rejection: never an OverflowError, TypeError or
    RecursionError out of NumPy, which the round did not expect (a shape past 2^63 values
    and an unknown dtype code each ended the round before). A negative size is refused,
    not read as "all the bytes"."""
    text, message = HOSTILE_HEADERS[case]
    array = Array(dtype="float32", shape=(5,), stype="numpy.ndarray", data=_npy(text))
    with pytest.raises(ValueError, match=message):
        array_view(array)
    content = RecordDict({"arrays": ArrayRecord({"w": array}),
                          "metrics": MetricRecord({"num-examples": 3.0})})  # fmt: skip
    reply = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    with pytest.raises(UpdateRejected, match="unreadable update: tensor 'w'"):
        reply_update("site-a", reply)


def test_a_header_of_80000_dimensions_is_refused_at_once() -> None:
    """A version 2 header may be as long as the reply: 80,000 dimensions (800 kB) are
    refused by their header's length, before any size is read (their product took
    seconds, 160,000 took 23 s); and the helper's plain header reads as NumPy's does."""
    text = _plain("(" + "99999999, " * 80_000 + "1)")
    with pytest.raises(ValueError, match="expected 800116 bytes got 4084"):
        array_view(Array(dtype="float32", shape=(5,), stype="numpy.ndarray",
                         data=_npy(text, version=2)))  # fmt: skip
    plain = Array(dtype="float32", shape=(5,), stype="numpy.ndarray", data=_npy(_plain("(5,)")))
    assert _plain_header(plain.data) is not None
    np.testing.assert_array_equal(array_view(plain), np.arange(5, dtype=np.float32))


def test_dtype_names_are_numpys_and_their_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dtype_name`` (what a reply's record is checked against, per tensor) says what
    ``str(dtype)`` and Flower's ``Array.dtype`` say, a byte-swapped one included; past
    ``_KEEP`` kinds nothing more is remembered, so a site sending ever new dtypes cannot
    grow the server's memory, and the names stay right."""
    from common import array_views

    kinds = ["float32", "float16", "int8", ">f4", "<f8", "uint8", "bool", "complex64"]
    for kind in kinds:
        dtype = np.dtype(kind)
        assert array_views.dtype_name(dtype) == str(dtype) == Array(np.zeros(2, dtype)).dtype
    monkeypatch.setattr(array_views, "_NAMES", {})
    monkeypatch.setattr(array_views, "_KEEP", 3)
    assert [array_views.dtype_name(np.dtype(k)) for k in kinds] == [str(np.dtype(k)) for k in kinds]
    assert len(array_views._NAMES) == 3


@pytest.mark.parametrize(
    "values",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.array(3.5, dtype=np.float32),
        np.zeros((0, 4), np.float32),
        np.arange(7, dtype=np.int64),
        np.arange(5, dtype=">f4"),
        np.linspace(-1, 1, 9, dtype=np.float16),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    ],
)
def test_numpy_array_makes_flowers_own_bytes(values: np.ndarray) -> None:
    """The aggregate's arrays (``numpy_array``, one copy) are byte for byte what Flower's
    ``Array(ndarray)`` makes: the model's hash does not depend on which made it."""
    from common.array_views import numpy_array

    ours, flowers = numpy_array(values), Array(values)
    assert ours.data == flowers.data and isinstance(ours.data, bytes)
    assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
    np.testing.assert_array_equal(array_view(ours), values)


def test_tensor_views_write_the_same_checkpoint_without_a_copy(tmp_path: Path) -> None:
    """``tensor_views`` (what a checkpoint is written from): the same tensors as Flower's
    ``to_torch_state_dict``, saved and loaded back equal, writable once loaded; plain
    arrays are viewed in place, a big-endian or Fortran-order one is copied."""
    import torch

    from common.array_views import tensor_views

    arrays = ArrayRecord({
        "w": Array(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
        "h": Array(np.linspace(-1, 1, 9, dtype=np.float16)),
        "f": Array(np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))),
        "s": Array(np.array(2.5, np.float32)),
    })  # fmt: skip
    views, flower = tensor_views(arrays), arrays.to_torch_state_dict()
    assert list(views) == list(flower)
    swapped = tensor_views(ArrayRecord({"b": Array(np.arange(5, dtype=">f4"))}))["b"]
    assert torch.equal(swapped, torch.arange(5, dtype=torch.float32))  # Flower's refuses it
    for key, tensor in views.items():
        assert torch.equal(tensor, flower[key]) and tensor.dtype == flower[key].dtype
    data = np.frombuffer(arrays["w"].data, np.uint8)
    start = data.ctypes.data
    assert start <= views["w"].data_ptr() < start + data.size  # in the message's bytes
    torch.save({"model": views}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt")["model"]
    for key, tensor in loaded.items():
        assert torch.equal(tensor, flower[key])
    loaded["w"].add_(1)  # its own memory now


def test_any_other_npy_header_goes_to_numpys_parser() -> None:
    data = Array(np.arange(5, dtype=np.float32)).data.replace(b"(5,)", b"(5) ")  # shape 5
    assert _plain_header(data) is None
    with pytest.raises(ValueError, match="shape"):
        array_view(Array(dtype="float32", shape=(5,), stype="numpy.ndarray", data=data))


def test_streamed_mean_equals_flowers_aggregate_arrayrecords() -> None:
    updates = _updates()
    mean = RunningMean(_global())
    for site, (tensors, n) in updates.items():
        mean.add(Update(site, n, tensors))
    ours = mean.result()
    assert ours is not None
    stock = aggregate_arrayrecords(
        [_message(t, n).content for t, n in updates.values()], "num-examples"
    )
    total = sum(n for _, n in updates.values())
    for key in SHAPES:
        expected = sum(t[key].astype(np.float64) * n for t, n in updates.values()) / total
        np.testing.assert_allclose(ours[key].numpy(), expected, rtol=0, atol=2e-6)
        np.testing.assert_allclose(ours[key].numpy(), stock[key].numpy(), rtol=0, atol=2e-6)
        assert ours[key].numpy().dtype == np.float32


def _prime(strategy: fl.Strategy, reference: ArrayRecord) -> None:
    """What the strategy's configure_train keeps of the global model."""
    if isinstance(strategy, fl.FedAdam | fl.FedYogi):
        strategy.current_arrays = {k: v.numpy() for k, v in reference.items()}
    elif isinstance(strategy, fl.FedAvgM):
        strategy.current_arrays = reference


def _aggregate(
    strategy: fl.Strategy,
    arrival: list[str],
    updates: dict[str, tuple[dict[str, np.ndarray], float]],
    tmp_path: Path,
    skip: tuple[str, ...] = (),
) -> tuple[ArrayRecord | None, RoundAggregator]:
    reference = _record(_global())
    sent = [
        Message(RecordDict({"arrays": reference}), dst_node_id=1, message_type=MessageType.TRAIN)
    ]
    _prime(strategy, reference)
    aggregator = RoundAggregator(strategy, reference, sorted(updates), park_root=tmp_path)
    for site in arrival:
        if site in skip:
            aggregator.skip(site)
        else:
            tensors, n = updates[site]
            aggregator.accept(site, _message(tensors, n))
    return aggregator.result(1, sent), aggregator


def test_arrival_order_changes_nothing_and_early_replies_wait_on_disk(tmp_path: Path) -> None:
    updates = _updates()
    in_order, first = _aggregate(fl.FedAvg(), SITES, updates, tmp_path)
    backwards, second = _aggregate(fl.FedAvg(), SITES[::-1], updates, tmp_path)
    assert first.mode is Mode.MEAN and first.parked == 0
    assert second.parked == 4  # every site but the first in name order had to wait
    assert in_order is not None and backwards is not None
    for key in SHAPES:  # bit for bit: the sum is always taken in site-name order
        assert in_order[key].data == backwards[key].data
    assert list(tmp_path.iterdir()) == []  # parked updates are deleted after the round


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_a_parked_update_is_resident_a_few_blocks_at_a_time_while_it_is_folded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """site-b arrives first and waits on disk; site-a's arrival makes it due. Read back
    memory-mapped, its pages leave the process every ``DROP_VALUES`` values once folded
    (``server.mapped_pages.drop_pages``), so the mapped file in the resident set (``RssFile``) grows
    by about 16 MiB while its 32 MiB tensor is folded, not by the whole update; and the
    mean is the same to the bit as in arrival order."""
    from server import folding

    shapes = {"big": (8 * 2**20,), "small": (2**20,)}  # 32 MiB and 4 MiB of float32
    rng = np.random.default_rng(4)
    reference = _record({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    updates = {site: ({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}, n)
               for site, n in (("site-a", 3.0), ("site-b", 5.0))}  # fmt: skip

    def file_mb() -> float:
        with open("/proc/self/status") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))
        return kb / 1024

    seen: list[float] = []
    drop = folding.drop_pages

    def watched(*args: Any) -> None:
        seen.append(file_mb())  # the most held: just before pages are let go
        drop(*args)

    monkeypatch.setattr(folding, "drop_pages", watched)
    results = []
    for arrival in (["site-a", "site-b"], ["site-b", "site-a"]):
        aggregator = RoundAggregator(fl.FedAvg(), reference, sorted(updates), park_root=tmp_path)
        aggregator.accept(arrival[0], _message(*updates[arrival[0]]))
        before, seen[:] = file_mb(), []
        aggregator.accept(arrival[1], _message(*updates[arrival[1]]))
        results.append(aggregator.result(1, []))
    assert len(seen) == 3  # the big tensor's two halves, the small one: only when parked
    grown = max(seen) - before
    assert grown < 20, grown  # 16 MiB and page rounding; the whole update: 36
    first, second = results
    assert first is not None and second is not None
    assert all(first[k].data == second[k].data for k in shapes)


def test_sites_that_wait_again_after_a_drain_get_their_own_folders(tmp_path: Path) -> None:
    updates = _updates()
    # c and b wait, a drains them, then e waits (its folder must not reuse c's) until d
    arrival = ["site-c", "site-b", "site-a", "site-e", "site-d"]
    result, aggregator = _aggregate(fl.FedAvg(), arrival, updates, tmp_path)
    expected, _ = _aggregate(fl.FedAvg(), SITES, updates, tmp_path)
    assert aggregator.parked == 3 and result is not None and expected is not None
    for key in SHAPES:
        assert result[key].data == expected[key].data


def test_skipped_and_silent_sites_are_passed_over(tmp_path: Path) -> None:
    updates = _updates()
    # site-b is rejected; site-e never replies (timeout); the others arrive out of order
    result, aggregator = _aggregate(
        fl.FedAvg(), ["site-d", "site-b", "site-c", "site-a"], updates, tmp_path, skip=("site-b",)
    )
    kept = {s: updates[s] for s in ("site-a", "site-c", "site-d")}
    expected, _ = _aggregate(fl.FedAvg(), ["site-a", "site-c", "site-d"], kept, tmp_path)
    assert result is not None and expected is not None
    for key in SHAPES:
        assert result[key].data == expected[key].data
    assert aggregator.mean.count == 3


def test_nothing_accepted_gives_none(tmp_path: Path) -> None:
    result, _ = _aggregate(fl.FedAvg(), SITES, _updates(), tmp_path, skip=tuple(SITES))
    assert result is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: fl.FedAdam(eta=0.1),
        lambda: fl.FedYogi(eta=0.1),
        lambda: fl.FedAvgM(server_learning_rate=0.5, server_momentum=0.9),
    ],
)
def test_server_optimisers_step_from_the_streamed_mean_as_from_all_replies(
    make: Callable[[], fl.Strategy], tmp_path: Path
) -> None:
    updates = _updates()
    streamed, aggregator = _aggregate(make(), SITES[::-1], updates, tmp_path)
    assert aggregator.mode is Mode.MEAN_THEN_STRATEGY
    stock_strategy = make()
    _prime(stock_strategy, _record(_global()))
    stock, _ = stock_strategy.aggregate_train(1, [_message(t, n) for t, n in updates.values()])
    assert streamed is not None and stock is not None
    for key in SHAPES:
        np.testing.assert_allclose(streamed[key].numpy(), stock[key].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: fl.FedAdam(eta=0.1),
        lambda: fl.FedAvgM(server_learning_rate=0.5, server_momentum=0.5),
    ],
)
def test_normalisation_statistics_are_averaged_never_stepped(
    make: Callable[[], fl.Strategy], tmp_path: Path
) -> None:
    """A server optimiser steps the weights only: a BatchNorm running variance is the
    sites' weighted mean. Stepped with momentum, a variance falling round after round
    overshoots below zero (what made FedAvgM's BatchNorm models NaN); the weights are
    stepped exactly as Flower steps them."""
    reference = _record({"w": np.ones(4, np.float32), "bn.running_var": np.ones(4, np.float32)})
    sent = [
        Message(RecordDict({"arrays": reference}), dst_node_id=1, message_type=MessageType.TRAIN)
    ]
    ours, stock = make(), make()
    _prime(ours, reference)
    _prime(stock, _record({k: v.numpy() for k, v in reference.items()}))
    for rnd, value in enumerate((0.4, 0.1, 0.02, 0.01), start=1):
        update = {
            "w": np.full(4, value, np.float32),
            "bn.running_var": np.full(4, value, np.float32),
        }
        aggregator = RoundAggregator(
            ours, reference, ["site-a"], park_root=tmp_path, statistics={"bn.running_var"}
        )
        aggregator.accept("site-a", _message(update, 10))
        result = aggregator.result(rnd, sent)
        expected = stock.aggregate_train(rnd, [_message(update, 10)])[0]
        assert result is not None and expected is not None
        np.testing.assert_allclose(result["bn.running_var"].numpy(), value, rtol=1e-6)
        np.testing.assert_allclose(result["w"].numpy(), expected["w"].numpy(), atol=1e-6)
    assert expected is not None
    assert float(expected["bn.running_var"].numpy()[0]) < 0.0 or isinstance(stock, fl.FedAdam)


def test_robust_strategies_get_every_reply_in_site_order(tmp_path: Path) -> None:
    updates = _updates()
    result, aggregator = _aggregate(fl.FedMedian(), SITES[::-1], updates, tmp_path)
    assert aggregator.mode is Mode.HOLD_ALL and aggregator.parked == 0
    assert result is not None
    for key in SHAPES:
        expected = np.median(np.stack([t[key] for t, _ in updates.values()]), axis=0)
        np.testing.assert_allclose(result[key].numpy(), expected, rtol=0, atol=1e-6)


class _HoldAllFedAvg(fl.FedAvg):
    """FedAvg that is not FedAvg by type: every reply is held, then Flower averages them
    weighted by num-examples (as a DP wrapper around FedAvg does)."""


@pytest.mark.parametrize("make", [fl.FedAvg, _HoldAllFedAvg], ids=["streamed", "hold-all"])
def test_weights_are_capped_at_the_cases_each_site_declared(
    make: Callable[[], fl.Strategy], tmp_path: Path
) -> None:
    """a (1.0, 10 examples) and b (3.0, claims 1000, declared 30): (10 x 1 + 30 x 3) / 40."""
    reference = _record({"w": np.zeros(4, np.float32)})
    sent = [
        Message(RecordDict({"arrays": reference}), dst_node_id=1, message_type=MessageType.TRAIN)
    ]
    strategy = make()
    _prime(strategy, reference)
    declared = {"site-a": 10, "site-b": 30}
    aggregator = RoundAggregator(strategy, reference, ["site-a", "site-b"], park_root=tmp_path,
                                 declared=declared)  # fmt: skip
    assert aggregator.mode is (Mode.MEAN if make is fl.FedAvg else Mode.HOLD_ALL)
    aggregator.accept("site-b", _message({"w": np.full(4, 3.0, np.float32)}, 1000.0))
    aggregator.accept("site-a", _message({"w": np.full(4, 1.0, np.float32)}, 10.0))
    result = aggregator.result(1, sent)
    assert result is not None
    np.testing.assert_allclose(result["w"].numpy(), np.full(4, 2.5), rtol=1e-6)
    uncapped = RoundAggregator(make(), reference, ["site-a", "site-b"], park_root=tmp_path)
    _prime(uncapped.strategy, reference)
    uncapped.accept("site-a", _message({"w": np.full(4, 1.0, np.float32)}, 10.0))
    uncapped.accept("site-b", _message({"w": np.full(4, 3.0, np.float32)}, 1000.0))
    plain = uncapped.result(1, sent)
    assert plain is not None  # what the claim would have bought: (10 + 3000) / 1010
    np.testing.assert_allclose(plain["w"].numpy(), np.full(4, 3010 / 1010), rtol=1e-6)


def test_update_problem_rejects_a_count_over_the_declared_one() -> None:
    reference = _record({"w": np.zeros(4, np.float32)})
    reply = _message({"w": np.ones(4, np.float32)}, 31.0)
    assert update_problem(reply, reference, declared=31) is None
    assert update_problem(reply, reference, declared=30) == (
        "num-examples = 31.0: more than the 30 training case(s) the site declared when it joined"
    )


# ---- compression -------------------------------------------------------------------------


def test_int8_codes_are_within_half_a_step_of_every_value() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=BLOCK * 3 + 17).astype(np.float32)
    values[5] = 40.0  # one outlier coarsens only its own block
    codes, scales = encode(values, Compression.INT8)
    assert codes.dtype == np.int8 and scales is not None and scales.shape == (4,)
    back = decode(codes, scales, Compression.INT8)
    step = np.repeat(scales, BLOCK)[: values.size]
    assert np.all(np.abs(back - values) <= step / 2 * (1 + 1e-6))
    assert scales[0] == pytest.approx(40.0 / 127) and scales[1] < 5.0 / 127
    zeros, zero_scales = encode(np.zeros(10, np.float32), Compression.INT8)
    assert not decode(zeros, zero_scales, Compression.INT8).any()


def test_fp16_is_half_precision_of_the_update() -> None:
    values = np.array([1e-3, -0.25, 3.0], np.float32)
    codes, scales = encode(values, Compression.FP16)
    assert scales is None and codes.dtype == np.float16
    np.testing.assert_allclose(decode(codes, None, Compression.FP16), values, rtol=1e-3)


@pytest.mark.parametrize("method", [Compression.FP16, Compression.INT8])
def test_error_feedback_keeps_the_running_total_of_updates_exact(method: str) -> None:
    # sum of what was sent + the residual still held = sum of the true updates
    rng = np.random.default_rng(4)
    received = {"w": rng.normal(size=(40, 30)).astype(np.float32)}
    residual = None
    sent_total = np.zeros((40, 30))
    true_total = np.zeros((40, 30))
    for _ in range(6):
        trained = {"w": received["w"] + rng.normal(scale=1e-3, size=(40, 30)).astype(np.float32)}
        codes, scales, residual = compress_update(trained, received, method, residual)
        sent_total += decode(codes["w"], scales.get("w"), method)
        true_total += trained["w"] - received["w"]
    assert residual is not None
    np.testing.assert_allclose(sent_total + residual["w"], true_total, rtol=0, atol=1e-8)
    # without feedback the int8 error would be ~6 half-steps; with it, one residual
    assert np.abs(sent_total - true_total).max() <= np.abs(residual["w"]).max() + 1e-8


@pytest.mark.parametrize("method", [Compression.FP16, Compression.INT8])
def test_compressed_round_decodes_to_the_mean_of_the_models(method: str, tmp_path: Path) -> None:
    base = _global()
    reference = _record(base)
    updates = _updates()
    for strategy in (fl.FedAvg(), fl.FedMedian()):
        aggregator = RoundAggregator(strategy, reference, sorted(updates), method, tmp_path)
        models = []
        for site in SITES[::-1]:
            tensors, n = updates[site]
            codes, scales, _ = compress_update(tensors, base, method)
            message = _packed(codes, scales, n)
            assert update_problem(message, reference, method) is None
            aggregator.accept(site, message)
            models.append({k: base[k] + decode(codes[k], scales.get(k), method) for k in base})
        result = aggregator.result(1, [message])
        assert result is not None
        weights = [updates[s][1] for s in SITES[::-1]]
        for key in SHAPES:
            stack = np.stack([m[key] for m in models])
            if isinstance(strategy, fl.FedMedian):
                expected = np.median(stack, axis=0)
            else:
                expected = np.average(stack, axis=0, weights=weights)
            np.testing.assert_allclose(result[key].numpy(), expected, rtol=0, atol=1e-5)


def _packed(
    codes: dict[str, np.ndarray],
    scales: dict[str, np.ndarray],
    n: float,
    codes_flat: np.ndarray | None = None,
    scales_flat: np.ndarray | None = None,
) -> Message:
    """A compressed reply as a site sends it: flat codes (and scales) in the model's order."""
    flat, flat_scales = pack(codes, scales, list(SHAPES))
    flat = flat if codes_flat is None else codes_flat
    flat_scales = flat_scales if scales_flat is None else scales_flat
    return _message({PACKED: flat}, n, None if flat_scales is None else {PACKED: flat_scales})


def test_packed_update_is_two_arrays_of_the_right_length() -> None:
    tensors, _ = _updates()["site-a"]
    codes, scales, _ = compress_update(tensors, _global(), Compression.INT8)
    flat, flat_scales = pack(codes, scales, list(SHAPES))
    sizes = [int(np.prod(s)) for s in SHAPES.values()]
    assert flat.dtype == np.int8 and flat.shape == (sum(sizes),)
    assert flat_scales is not None and flat_scales.shape == (sum(-(-n // BLOCK) for n in sizes),)
    shapes = [(k, s) for k, s in SHAPES.items()]
    for key, delta in unpack(flat, flat_scales, shapes, Compression.INT8):
        np.testing.assert_array_equal(delta, decode(codes[key], scales[key], Compression.INT8))


def test_compressed_replies_are_checked() -> None:
    base = _global()
    reference = _record(base)
    tensors, _ = _updates()["site-a"]
    codes, scales, _ = compress_update(tensors, base, Compression.INT8)
    flat, flat_scales = pack(codes, scales, list(SHAPES))
    assert flat_scales is not None
    assert update_problem(_packed(codes, scales, 5.0), reference, Compression.INT8) is None
    negative = flat_scales.copy()
    negative[3] = -1.0
    cases = {
        "block scales missing": _message({PACKED: flat}, 5.0),
        "expected one array 'hepafed.update'": _message(codes, 5.0, {PACKED: flat_scales}),
        f"int8[{flat.size - 1}], expected int8[{flat.size}]": _packed(
            codes, scales, 5.0, codes_flat=flat[:-1]
        ),
        "'int8' codes are float32": _packed(codes, scales, 5.0, codes_flat=flat.astype(np.float32)),
        f"expected float32[{flat_scales.size}]": _packed(
            codes, scales, 5.0, scales_flat=flat_scales[:-1]
        ),
        "must be finite and >= 0": _packed(codes, scales, 5.0, scales_flat=negative),
    }
    for expected, message in cases.items():
        problem = update_problem(message, reference, Compression.INT8)
        assert problem is not None and expected in problem, (expected, problem)
    half, _, _ = compress_update(tensors, base, Compression.FP16)
    half["fc.weight"][0, 0] = np.inf
    problem = update_problem(_packed(half, {}, 5.0), reference, Compression.FP16)
    assert problem is not None and "NaN or Inf" in problem
    problem = update_problem(_packed(codes, scales, 5.0), reference, Compression.NONE)
    assert problem is not None and "unexpected" in problem
