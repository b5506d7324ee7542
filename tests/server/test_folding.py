"""One-pass folding (``server.folding``) through the round aggregator: each update's bytes
are read once, the mean matches a float64 weighted mean, bad and outlying updates are
taken out again, and the bits do not depend on the arrival order.

Blocks are shrunk to 2,048 values (``small_blocks``) so that small tensors span several
blocks; one test runs the real block size."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl
from hypothesis import given
from hypothesis import strategies as st

from common.array_views import array_view
from common.compression import BLOCK, PACKED, compress_update, decode, n_blocks, pack
from common.config import RunConfig
from common.keys import Compression
from server import fold_threads, folding, validation
from server.aggregation import RoundAggregator
from server.folding import Op, UpdateRejected
from server.round_screen import RoundScreen
from server.trust import ServerTrust
from server.validation import norm_outliers

pytestmark = pytest.mark.usefixtures("flower_task", "small_blocks")

# conv: within one block; fc.weight: four blocks, the last one partial; step: 0-d
SHAPES = {"conv.weight": (8, 3, 5, 5), "fc.weight": (7, 1000), "fc.bias": (7,), "step": ()}
SITES = ["site-a", "site-b", "site-c", "site-d", "site-e"]
METHODS = [Compression.NONE, Compression.FP16, Compression.INT8]
Updates = dict[str, tuple[dict[str, np.ndarray], float]]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folding, "BLOCK_VALUES", 2048)  # a multiple of the int8 BLOCK


def _base(shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _updates(seed: int = 1, sites: list[str] = SITES, scale: dict[str, float] | None = None,
             shapes: dict[str, tuple[int, ...]] = SHAPES) -> Updates:  # fmt: skip
    """Each site's trained weights (global + noise x its ``scale``) and example count."""
    rng = np.random.default_rng(seed)
    base, scale = _base(shapes), scale or {}
    return {
        site: (
            {k: _noisy(v, rng, 0.05 * scale.get(site, 1.0)) for k, v in base.items()},
            float(rng.integers(10, 200)),
        )
        for site in sites
    }


def _noisy(values: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    return np.asarray(values + rng.normal(scale=scale, size=values.shape), dtype=np.float32)


def _reply(tensors: dict[str, np.ndarray], n: float, method: str = Compression.NONE,
           nan_at: tuple[str, int] | None = None) -> Message:  # fmt: skip
    """The reply a site sends: its weights, or its packed compressed update; ``nan_at``
    (tensor, flat index) makes that value NaN (int8: the scale of its block)."""
    scales: dict[str, np.ndarray] = {}
    if method != Compression.NONE:
        codes, per_tensor, _ = compress_update(tensors, _base(), method)
        flat, flat_scales = pack(codes, per_tensor, list(SHAPES))
        tensors = {PACKED: flat}
        scales = {} if flat_scales is None else {PACKED: flat_scales}
    if nan_at is not None:
        key, index = nan_at
        before = list(SHAPES)[: list(SHAPES).index(key)]
        if method == Compression.NONE:
            tensors = {k: v.copy() for k, v in tensors.items()}
            tensors[key].reshape(-1)[index] = np.nan
        elif method == Compression.FP16:
            tensors[PACKED][sum(math.prod(SHAPES[k]) for k in before) + index] = np.nan
        else:
            offset = sum(n_blocks(math.prod(SHAPES[k])) for k in before) + index // BLOCK
            scales[PACKED][offset] = np.nan
    record = ArrayRecord({k: Array(v) for k, v in tensors.items()})
    content = RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": n})})
    if scales:
        content["scales"] = ArrayRecord({k: Array(v) for k, v in scales.items()})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def _sent_to(tensors: dict[str, np.ndarray], method: str) -> dict[str, np.ndarray]:
    """What the server folds for a site: its weights, or its decoded update."""
    if method == Compression.NONE:
        return tensors
    codes, scales, _ = compress_update(tensors, _base(), method)
    return {k: decode(codes[k], scales.get(k), method) for k in tensors}


def _expected(updates: Updates, method: str = Compression.NONE) -> dict[str, np.ndarray]:
    """The float64 weighted mean of the models the sites sent."""
    total = sum(n for _, n in updates.values())
    out: dict[str, np.ndarray] = {}
    for key, ref in _base().items():
        terms = [_sent_to(t, method)[key].astype(np.float64) * n for t, n in updates.values()]
        mean = np.sum(terms, axis=0).reshape(ref.shape) / total  # 0-d codes travel as (1,)
        out[key] = mean + ref if method != Compression.NONE else mean
    return out


def _round(updates: Updates, arrival: list[str], method: str = Compression.NONE,
           defer: bool = False, bad: dict[str, tuple[str, int]] | None = None,
           exclude: Callable[[RoundAggregator], list[str]] = lambda _: [],
           **kwargs: Any) -> tuple[ArrayRecord | None, RoundAggregator]:  # fmt: skip
    """One FedAvg round with replies arriving in ``arrival``; ``bad`` replies (a NaN at
    tensor, index) are rejected and skipped, as ``RoundScreen`` does; ``exclude`` picks
    outliers."""
    reference = ArrayRecord({k: Array(v) for k, v in _base().items()})
    aggregator = RoundAggregator(fl.FedAvg(), reference, sorted(updates), method, defer=defer,
                                 **kwargs)  # fmt: skip
    for site in arrival:
        try:
            aggregator.accept(site, _reply(*updates[site], method, (bad or {}).get(site)))
        except UpdateRejected:
            aggregator.skip(site)
    aggregator.exclude(exclude(aggregator))
    sent = Message(RecordDict({"arrays": reference}), dst_node_id=1, message_type=MessageType.TRAIN)
    return aggregator.result(1, [sent]), aggregator


def _close(result: ArrayRecord | None, expected: dict[str, np.ndarray], rel: float) -> None:
    """Largest difference at most ``rel`` times the largest value."""
    assert result is not None
    for key, values in expected.items():
        got = result[key].numpy().astype(np.float64)
        assert got.shape == values.shape
        assert np.abs(got - values).max() <= rel * max(np.abs(values).max(), 1e-30), key


def _bits(result: ArrayRecord | None) -> dict[str, bytes]:
    assert result is not None
    return {k: bytes(v.data) for k, v in result.items()}


@given(
    n_sites=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(METHODS),
    defer=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_the_one_pass_mean_is_the_float64_weighted_mean(
    n_sites: int, seed: int, method: str, defer: bool, order: Any
) -> None:
    updates = _updates(seed, SITES[:n_sites])
    arrival = list(updates)
    order.shuffle(arrival)
    result, aggregator = _round(updates, arrival, method, defer)
    _close(result, _expected(updates, method), 1e-6)
    assert aggregator.mean.count == n_sites


def test_the_norms_are_those_of_the_updates(tmp_path: Path) -> None:
    updates = _updates()
    for method in METHODS:
        _, aggregator = _round(updates, SITES[::-1], method, track_norms=True, park_root=tmp_path)
        for site, (tensors, _) in updates.items():
            sent = _sent_to(tensors, method)
            if method == Compression.NONE:
                sent = {k: v.astype(np.float64) - _base()[k] for k, v in sent.items()}
            norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in
                                 sent.values()))  # fmt: skip
            assert aggregator.norms[site] == pytest.approx(norm, rel=1e-5), (method, site)


class _Spy:
    """Records every kernel pass: which tensor, what it did, and what it read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        real = folding.fold_blocks

        def spy(src: folding.Source, *args: Any, **kwargs: Any) -> tuple[float, int | None]:
            op = args[2] if len(args) > 2 else kwargs["op"]
            self.calls.append({"key": src.key, "op": op, "values": src.values,
                               "measure": kwargs.get("measure", True),
                               "copied": kwargs.get("sink") is not None})  # fmt: skip
            return real(src, *args, **kwargs)

        monkeypatch.setattr(folding, "fold_blocks", spy)

    def take(self) -> list[dict[str, Any]]:
        calls, self.calls = self.calls, []
        return calls


def _reads(call: dict[str, Any], message: Message) -> bool:
    """Whether a pass read the bytes of ``message``."""
    views = [array_view(a) for r in message.content.values() if isinstance(r, ArrayRecord)
             for a in r.values()]  # fmt: skip
    return any(np.shares_memory(call["values"], v) for v in views)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("defer", [False, True], ids=["streamed", "norm-rule"])
def test_each_update_is_read_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, method: str, defer: bool
) -> None:
    """In its turn: one pass per tensor that checks, measures, folds (and copies, with the
    norm rule on). Early: one pass that checks, measures and parks; in its turn the parked
    file is folded, never the message again."""
    updates = _updates()
    spy = _Spy(monkeypatch)
    reference = ArrayRecord({k: Array(v) for k, v in _base().items()})
    aggregator = RoundAggregator(fl.FedAvg(), reference, SITES, method, tmp_path, defer)
    messages = {s: _reply(t, n, method) for s, (t, n) in updates.items()}
    passes: dict[str, list[dict[str, Any]]] = {}
    for site in ["site-a", "site-c", "site-b"]:  # c is early: parked until b drains it
        aggregator.accept(site, messages[site])
        calls = spy.take()
        passes[site], passes["site-c folded"] = calls[: len(SHAPES)], calls[len(SHAPES) :]
    for site in ["site-a", "site-b", "site-c"]:  # one pass per tensor, over the message
        assert [c["key"] for c in passes[site]] == list(SHAPES)
        assert all(_reads(c, messages[site]) and c["measure"] for c in passes[site])
    for site in ["site-a", "site-b"]:  # in their turn: checked, measured, folded (copied)
        assert all(c["op"] in (Op.FIRST, Op.ADD) and c["copied"] is defer for c in passes[site])
    assert all(c["op"] is Op.NONE and c["copied"] for c in passes["site-c"])  # parked
    folded = passes["site-c folded"]  # from the parked file: the message is not read again
    assert [c["key"] for c in folded] == list(SHAPES)
    assert all(c["op"] is Op.ADD and not c["measure"] for c in folded)
    assert not any(_reads(c, messages["site-c"]) or c["copied"] for c in folded)


@pytest.mark.parametrize("method", METHODS)
def test_a_nan_update_is_rejected_named_and_the_others_kept(method: str) -> None:
    """site-b's NaN sits in the third block of fc.weight: conv.weight and two blocks were
    added before it was found, and are subtracted again."""
    updates = _updates()
    reference = ArrayRecord({k: Array(v) for k, v in _base().items()})
    aggregator = RoundAggregator(fl.FedAvg(), reference, SITES, method)
    aggregator.accept("site-a", _reply(*updates["site-a"], method))
    with pytest.raises(UpdateRejected) as caught:
        aggregator.accept("site-b", _reply(*updates["site-b"], method, ("fc.weight", 5000)))
    assert (caught.value.site, caught.value.tensor) == ("site-b", "fc.weight")
    assert str(caught.value) == (  # int8: the NaN makes its block's scale NaN
        "tensor 'fc.weight': block scales are not finite"
        if method == Compression.INT8
        else "tensor 'fc.weight' contains NaN or Inf"
    )
    assert caught.value.at == (1, 4096)  # tensor 1, its third block
    rest = {s: u for s, u in updates.items() if s != "site-b"}
    bad = {"site-b": ("fc.weight", 5000)}
    in_turn, aggregator = _round(updates, SITES, method, bad=bad)
    assert aggregator.mean.count == 4 and "site-b" not in aggregator.norms
    _close(in_turn, _expected(rest, method), 1e-6)
    early, _ = _round(updates, SITES[::-1], method, bad=bad)  # b parked, then replayed
    assert _bits(early) == _bits(in_turn)


def test_a_bad_first_update_leaves_no_trace() -> None:
    """Rejected while it was the first term: the sums were its alone and are dropped, so
    the round is bit for bit the round without it."""
    updates = _updates()
    with_bad, _ = _round(updates, SITES, bad={"site-a": ("fc.weight", 3000)})
    rest = {s: u for s, u in updates.items() if s != "site-a"}
    without, _ = _round(rest, SITES[1:])
    assert _bits(with_bad) == _bits(without)


def _outliers(aggregator: RoundAggregator) -> list[str]:
    return sorted(norm_outliers(aggregator.norms, 3.5, 3.0))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arrival", [SITES, SITES[::-1]], ids=["in-turn", "early"])
def test_an_excluded_outlier_is_subtracted_from_the_folded_sum(
    method: str, arrival: list[str], tmp_path: Path
) -> None:
    """site-c's update is 40 times the others: folded in its turn, then the norm rule
    excludes it and it is subtracted. Against the mean of the others folded from scratch:
    within 1e-6 of its size (the rounding the module docstring bounds)."""
    updates = _updates(scale={"site-c": 40.0})
    result, aggregator = _round(updates, arrival, method, defer=True, exclude=_outliers,
                                park_root=tmp_path)  # fmt: skip
    assert aggregator.excluded == {"site-c"} and aggregator.mean.count == 4
    rest = {s: u for s, u in updates.items() if s != "site-c"}
    scratch, _ = _round(rest, sorted(rest), method)
    assert scratch is not None
    _close(result, {k: v.numpy().astype(np.float64) for k, v in scratch.items()}, 1e-6)
    _close(result, _expected(rest, method), 2e-6)
    assert list(tmp_path.iterdir()) == []  # the copies are deleted with the round


def test_the_round_screen_judges_norms_after_folding(tmp_path: Path) -> None:
    """The whole round as ``server.rounds`` runs it with the norm rule on (the default):
    the outlier is rejected by name, subtracted, and the others' mean applied."""
    cfg = RunConfig().replace({"output.run-dir": str(tmp_path), "trust.sign-updates": False})
    updates = _updates(scale={"site-c": 40.0})
    shared = ArrayRecord({k: Array(v) for k, v in _base().items()})
    aggregator = RoundAggregator(fl.FedAvg(), shared, SITES, park_root=tmp_path, defer=True)
    trust = ServerTrust(cfg, tmp_path, "run-1")
    screen = RoundScreen(cfg, trust, aggregator, shared, SITES, 1, "global")
    for site in ["site-d", "site-a", "site-c", "site-b", "site-e"]:
        screen.on_reply(_reply(*updates[site]), site)
    new = screen.result([])
    assert "is an outlier" in screen.rejected["site-c"] and aggregator.excluded == {"site-c"}
    assert set(screen.round_record(True, None, 0.0)["norms"]) == set(SITES)
    _close(new, _expected({s: u for s, u in updates.items() if s != "site-c"}), 2e-6)


@pytest.mark.parametrize("strategy", [fl.FedAvg, fl.FedMedian], ids=["streamed", "hold-all"])
def test_the_round_reads_values_once_and_still_rejects_a_nan(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, strategy: type[fl.Strategy]
) -> None:
    """Screening in a round checks structure, size and signature but leaves the values to
    the aggregator, so each update's bytes are read once; a NaN is still rejected with the
    tensor named, whether the update is folded (FedAvg) or held (FedMedian, no norms)."""
    checked: list[int] = []
    real = validation._finite

    def finite(values: np.ndarray) -> bool:
        checked.append(values.size)
        return real(values)

    monkeypatch.setattr(validation, "_finite", finite)
    cfg = RunConfig().replace({"output.run-dir": str(tmp_path), "trust.sign-updates": False,
                               "trust.norm-z": 0.0})  # fmt: skip
    updates = _updates()
    shared = ArrayRecord({k: Array(v) for k, v in _base().items()})
    aggregator = RoundAggregator(strategy(), shared, SITES, park_root=tmp_path)
    screen = RoundScreen(cfg, ServerTrust(cfg, tmp_path, "run-1"), aggregator, shared, SITES, 1,
                         "global")  # fmt: skip
    for site in SITES:
        nan_at = ("fc.weight", 7) if site == "site-b" else None
        screen.on_reply(_reply(*updates[site], nan_at=nan_at), site)
    assert checked == []  # no value was read by screening
    assert screen.rejected == {"site-b": "tensor 'fc.weight' contains NaN or Inf"}
    assert sorted(screen.accepted) == [s for s in SITES if s != "site-b"]
    new = screen.result([])
    rest = {s: u for s, u in updates.items() if s != "site-b"}
    if strategy is fl.FedAvg:
        _close(new, _expected(rest), 2e-6)
    else:
        assert new is not None and all(np.isfinite(v.numpy()).all() for v in new.values())


def test_an_outlier_still_waiting_is_never_folded() -> None:
    """site-b never replies: c, d, e wait behind it; the excluded e is dropped unfolded,
    and the result is bit for bit the round without it."""
    updates = _updates(scale={"site-e": 40.0})
    arrival = ["site-e", "site-a", "site-d", "site-c"]
    result, aggregator = _round(updates, arrival, defer=True, exclude=_outliers)
    assert aggregator.excluded == set() and aggregator.mean.count == 3
    rest = {s: u for s, u in updates.items() if s != "site-e"}
    without, _ = _round(rest, ["site-a", "site-c", "site-d"])
    assert _bits(result) == _bits(without)


def test_excluding_a_folded_update_needs_its_copy() -> None:
    updates = _updates()
    reference = ArrayRecord({k: Array(v) for k, v in _base().items()})
    aggregator = RoundAggregator(fl.FedAvg(), reference, SITES)
    aggregator.accept("site-a", _reply(*updates["site-a"]))
    with pytest.raises(ValueError, match="defer=True"):
        aggregator.exclude(["site-a"])


@pytest.mark.parametrize("defer", [False, True], ids=["streamed", "norm-rule"])
def test_the_weight_is_capped_at_the_declared_cases_when_parked(defer: bool) -> None:
    """b claims 1000 examples, declared 30, and arrives first (parked): (10 + 90) / 40."""
    updates = {"site-a": ({"w": np.full(5000, 1.0, np.float32)}, 10.0),
               "site-b": ({"w": np.full(5000, 3.0, np.float32)}, 1000.0)}  # fmt: skip
    reference = ArrayRecord({"w": Array(np.zeros(5000, np.float32))})
    aggregator = RoundAggregator(fl.FedAvg(), reference, ["site-a", "site-b"], defer=defer,
                                 declared={"site-a": 10, "site-b": 30})  # fmt: skip
    for site in ["site-b", "site-a"]:
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(updates[site][0]["w"])}),
                "metrics": MetricRecord({"num-examples": updates[site][1]}),
            }
        )
        aggregator.accept(site, Message(content, dst_node_id=1, message_type=MessageType.TRAIN))
    assert aggregator.parked == 1 and aggregator.mean.total == 40.0
    result = aggregator.result(1, [])
    assert result is not None
    np.testing.assert_allclose(result["w"].numpy(), 2.5, rtol=1e-6)


def _orders() -> Iterator[list[str]]:
    yield SITES
    yield SITES[::-1]
    yield ["site-c", "site-a", "site-e", "site-b", "site-d"]
    yield ["site-b", "site-d", "site-a", "site-e", "site-c"]


@pytest.mark.parametrize("method", METHODS)
def test_the_bits_do_not_depend_on_the_arrival_order(method: str) -> None:
    """With an outlier excluded and a bad update rejected part-way, too."""
    updates = _updates(scale={"site-d": 40.0})
    bad = {"site-b": ("fc.weight", 2500)}
    runs = [
        _bits(_round(updates, order, method, defer=True, bad=bad, exclude=_outliers)[0])
        for order in _orders()
    ]
    assert all(run == runs[0] for run in runs[1:])


def test_the_kernel_buffers_are_no_larger_than_the_largest_tensor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small model's round does not carry two whole blocks (8 MiB) of decode and
    difference buffers: each is as long as its largest tensor; a big model's, one block."""
    monkeypatch.undo()
    small = folding.RunningMean(
        {"w": np.zeros((30, 40), np.float32), "b": np.zeros(30, np.float32)}
    )
    assert [t.numel() for t in small._scratch] == [1200, 1200]
    big = folding.RunningMean({"w": np.zeros(3 * folding.BLOCK_VALUES, np.float32)})
    assert [t.numel() for t in big._scratch] == [folding.BLOCK_VALUES] * 2


def test_the_real_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # back to BLOCK_VALUES, 1,048,576 values: fc.weight spans 3 blocks
    assert folding.BLOCK_VALUES == 1_048_576
    shapes = {"fc.weight": (2500, 1000), "fc.bias": (2500,)}
    updates = _updates(sites=SITES[:3], shapes=shapes)
    reference = ArrayRecord({k: Array(v) for k, v in _base(shapes).items()})
    aggregator = RoundAggregator(fl.FedAvg(), reference, SITES[:3], track_norms=True)
    for site in SITES[:3][::-1]:
        aggregator.accept(site, _reply(*updates[site]))
    result = aggregator.result(1, [])
    assert result is not None
    total = sum(n for _, n in updates.values())
    for key in shapes:
        mean = sum(t[key].astype(np.float64) * n for t, n in updates.values()) / total
        np.testing.assert_allclose(result[key].numpy(), mean, rtol=0, atol=2e-6)


@pytest.mark.parametrize("method", [Compression.NONE, Compression.INT8])
def test_bytes_that_disagree_with_their_record_are_rejected_not_folded(
    tmp_path: Path, method: str
) -> None:
    """A rogue site can sign anything: an array whose record says the global model's dtype
    and shape (all screening reads in a round) but whose ``.npy`` bytes hold fewer values,
    or claim more than they carry. Each is a named rejection before any of it is folded;
    the round goes on and its result is the other sites' mean."""
    cfg = RunConfig().replace({"output.run-dir": str(tmp_path), "trust.sign-updates": False,
                               "trust.norm-z": 0.0, "federation.compression": method})  # fmt: skip
    updates = _updates()
    shared = ArrayRecord({k: Array(v) for k, v in _base().items()})
    aggregator = RoundAggregator(fl.FedAvg(), shared, SITES, method, park_root=tmp_path)
    screen = RoundScreen(cfg, ServerTrust(cfg, tmp_path, "run-1"), aggregator, shared, SITES, 1,
                         "global")  # fmt: skip
    lies = {"site-b": "short", "site-d": "truncated"}
    for site in SITES:
        reply = _reply(*updates[site], method=method)
        if site in lies:
            record = cast(ArrayRecord, reply.content["arrays"])
            key = next(iter(record))
            real = record[key]
            values = array_view(real).reshape(-1)
            if lies[site] == "short":  # a valid .npy of half the values
                data = Array(np.ascontiguousarray(values[: values.size // 2])).data
            else:  # the header of all of them, the bytes of half
                data = real.data[: len(real.data) - values.nbytes // 2]
            record[key] = Array(dtype=real.dtype, shape=real.shape, stype=real.stype, data=data)
        screen.on_reply(reply, site)
    assert sorted(screen.rejected) == ["site-b", "site-d"]
    assert all("unreadable update" in why for why in screen.rejected.values()), screen.rejected
    new = screen.result([])
    assert new is not None and aggregator.mean.count == len(SITES) - 2
    if method == Compression.NONE:
        rest = {s: u for s, u in updates.items() if s not in lies}
        _close(new, _expected(rest), 2e-6)


@pytest.mark.parametrize(
    ("loadavg", "expected"),
    [
        ("0.52 0.40 0.31 1/312 4711\n", 4),  # only this thread runs: every core is free
        ("3.10 2.90 2.00 3/312 4711\n", 2),  # two other tasks run: two cores left
        ("9.00 9.00 9.00 12/312 4711\n", 1),  # more than the cores: one thread, never 0
        ("garbage\n", 8),  # the system does not say: torch's own count
    ],
)
def test_a_fold_uses_only_the_cores_nothing_else_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loadavg: str, expected: int
) -> None:
    """A fold beside busy cores (a simulation's sites training) waits on its own threads:
    it takes torch's count only where that many cores are free (/proc/loadavg's running
    tasks, this one among them)."""
    path = tmp_path / "loadavg"
    path.write_text(loadavg)
    assert fold_threads.pool_size(8, loadavg=path, cores=4) == expected
    assert fold_threads.pool_size(2, loadavg=path, cores=4) == min(2, expected)
    assert fold_threads.pool_size(8, loadavg=tmp_path / "absent", cores=4) == 8
    if expected == 2:  # two of the running tasks are this process's own threads
        assert fold_threads.pool_size(8, own=2, loadavg=path, cores=4) == 4
        assert fold_threads.pool_size(8, own=5, loadavg=path, cores=4) == 4  # at most all
    # by default the cores this process may use: its container's CPU quota (2 CPUs)
    monkeypatch.setattr(fold_threads, "process_cpus", lambda: 2)
    assert fold_threads.pool_size(8, loadavg=path) == (8 if expected == 8 else max(1, expected - 2))
    assert fold_threads.FoldThreads().limit <= 2


def test_a_fold_just_after_another_does_not_count_its_own_spinning_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch's OpenMP threads keep running for milliseconds after an operation: the next
    update's fold, within ``SPIN_S``, counts them as this process's, not as another task."""
    asked: list[int] = []

    def pool(limit: int, own: int = 0, *_: Any) -> int:
        asked.append(own)
        return 2

    monkeypatch.setattr(fold_threads, "pool_size", pool)
    monkeypatch.setattr(fold_threads, "SPIN_S", 3600.0)
    updates = _updates(sites=SITES[:3])
    reference = ArrayRecord({k: Array(v) for k, v in _base().items()})
    aggregator = RoundAggregator(fl.FedAvg(), reference, SITES[:3])
    aggregator.accept("site-a", _reply(*updates["site-a"]))
    aggregator.accept("site-b", _reply(*updates["site-b"]))
    monkeypatch.setattr(fold_threads, "SPIN_S", 0.0)
    aggregator.accept("site-c", _reply(*updates["site-c"]))
    assert asked == [0, 1, 0]


def test_the_norms_and_the_bits_do_not_depend_on_the_thread_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A threaded sum of squares of a million values differs in its last bits from a
    one-thread one; the fold's does not, so a fold on one thread (a busy machine) and on
    two (an idle one) give the same norms and the same mean, a rejected update taken out
    part-way included; torch's thread count is the caller's again afterwards."""
    import torch

    monkeypatch.undo()  # the real block size: fc.weight is two blocks
    shapes = {"fc.weight": (1100, 1000), "fc.bias": (1100,)}
    updates = _updates(sites=SITES[:4], shapes=shapes)
    tensors = {k: v.copy() for k, v in updates["site-d"][0].items()}
    tensors["fc.weight"].reshape(-1)[1_050_000] = np.nan  # in the second block
    bad = _reply(tensors, updates["site-d"][1])
    before = torch.get_num_threads()
    runs = []
    try:
        for threads, pool in ((1, None), (2, None), (2, 1)):
            monkeypatch.setattr(fold_threads, "pool_size", lambda limit, *_, p=pool: p or limit)
            torch.set_num_threads(threads)
            reference = ArrayRecord({k: Array(v) for k, v in _base(shapes).items()})
            aggregator = RoundAggregator(fl.FedAvg(), reference, SITES[:4], track_norms=True)
            for site in SITES[:3]:
                aggregator.accept(site, _reply(*updates[site]))
            with pytest.raises(UpdateRejected, match="NaN"):
                aggregator.accept("site-d", bad)
            aggregator.skip("site-d")
            assert torch.get_num_threads() == threads
            runs.append((dict(aggregator.norms), _bits(aggregator.result(1, []))))
    finally:
        torch.set_num_threads(before)
    assert runs[0][0] == runs[1][0] == runs[2][0]
    assert runs[0][1] == runs[1][1] == runs[2][1]


@pytest.mark.parametrize("n", [1, 7, 32_767, 32_768, 1_000_003])
def test_a_blocks_sum_of_squares_is_the_exact_sum_on_any_thread_count(
    n: int,
) -> None:
    """Against the float64 sum of the float64 squares (``math.fsum``, exactly rounded),
    on one thread and on two; sizes on each side of the row split, and one whose last
    values are left over from the rows."""
    import torch

    values = np.random.default_rng(n).normal(size=n).astype(np.float32)
    exact = math.fsum(float(v) ** 2 for v in values.astype(np.float64))
    before = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            got.append(fold_threads.sum_of_squares(torch.from_numpy(values)))
    finally:
        torch.set_num_threads(before)
    assert len(set(got)) == 1
    assert got[0] == pytest.approx(exact, rel=1e-5)


def test_torch_threads_sets_and_restores_the_count_only_where_it_can_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch's native thread pool keeps its first size (and warns at every change): there
    the fold leaves the count alone."""
    import torch

    before = torch.get_num_threads()
    target = 1 if before > 1 else 2
    with fold_threads.torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), fold_threads.torch_threads(target):
        raise RuntimeError("a fold that fails")
    assert torch.get_num_threads() == before
    monkeypatch.setattr(fold_threads, "_settable_threads", lambda: False)
    with fold_threads.torch_threads(target):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [1000, 1_000_003])
def test_a_sum_of_squares_that_overflows_float32_is_taken_in_float64(n: int) -> None:
    """Finite values of 1e20 square to infinity in float32: the sum is still the finite
    float64 one (n x 1e40, to float64 rounding), and NaN stays NaN (the update is then
    rejected)."""
    import torch

    values = torch.full((n,), 1e20, dtype=torch.float32)
    assert fold_threads.sum_of_squares(values) == pytest.approx(n * float(values[0]) ** 2)
    values[n // 2] = float("nan")
    assert math.isnan(fold_threads.sum_of_squares(values))
