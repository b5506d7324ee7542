"""Aggregate a round's updates as they arrive, in memory that does not grow with sites.

Stock Flower collects every reply of a round and then averages them
(``aggregate_arrayrecords``): the ServerApp holds N updates at once, and each
tensor is deserialised into a fresh copy and multiplied into another. Here,
for the strategies whose aggregate is the weighted mean (FedAvg, and the
server optimisers that start from it: FedAvgM, FedAdam, FedYogi), each reply
is folded into one float32 running sum the moment it arrives and then dropped:
the server holds the global model, the running sum and one reply, whatever
the number of sites. Tensors are read straight from the message bytes (no
copy) and added with one fused multiply-add per tensor.

**Order.** Floating-point sums depend on the order of the terms, and replies
arrive in whatever order sites finish. Updates are therefore folded in site
name order: a reply that arrives before its turn is parked on disk (in the
run folder, deleted after the round) and folded when its turn comes, so a
rerun gives the same model bit for bit and memory stays bounded.

**Robust strategies** (FedMedian, FedTrimmedAvg, Krum, or a strategy a hook
wraps in something other than ``ProximalStrategy``) need every update at once
by their nature; they get all accepted replies, in site order, as before.

**Weights** are the example counts sites report, capped at the training cases each
site declared when it joined (``declared``): screening rejects a larger count
(``server.validation``), and the cap holds here too, in the streamed and the
hold-all paths alike, whoever calls the aggregator.

**Compressed updates** (``common.compression``) are decoded tensor by tensor
during the fold: the running sum is then of updates, and the result is the
global weights plus their weighted mean, the same model as averaging weights.
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedYogi, Strategy

from common.compression import PACKED, unpack
from common.hooks.proximal import ProximalStrategy
from common.keys import Compression, MetricKey, RecordKey

NUMPY_STYPE = "numpy.ndarray"


class UpdateRejected(ValueError):
    """An update that passed screening turns out unusable while it is folded in
    (e.g. its norm overflows); the message is the rejection reason."""


def array_view(array: Array) -> np.ndarray:
    """The values of a Flower ``Array`` as a read-only NumPy view of its bytes (no copy).

    Flower stores an array as ``.npy`` bytes; ``Array.numpy()`` parses them into a
    new array. Here the header is parsed and the data are viewed in place.
    """
    if array.stype != NUMPY_STYPE:
        return array.numpy()
    header = io.BytesIO(array.data[:4096])  # .npy headers are far shorter
    version = np.lib.format.read_magic(header)
    reader = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = reader(header)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=header.tell())
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord)


def records(content: RecordDict, kind: type[R]) -> dict[str, R]:
    """The records of one kind in a message's content.

    Use this on replies, not ``RecordDict.array_records`` and its siblings: those views
    form a reference cycle with the content, so a reply's tensors outlive it until the
    garbage collector runs, and a round holds several updates instead of one.
    """
    return {k: v for k, v in content.items() if isinstance(v, kind)}


def as_tensor(values: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``values``' memory; it is only read (the views are read-only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        return torch.from_numpy(values)


class Mode(Enum):
    """How a round's updates meet the strategy."""

    MEAN = "mean"  # FedAvg: the streamed weighted mean is the new model
    MEAN_THEN_STRATEGY = "mean-then-strategy"  # FedAvgM/FedAdam/FedYogi: step from the mean
    HOLD_ALL = "hold-all"  # robust strategies: every accepted reply, then the strategy


def aggregation_mode(strategy: Strategy) -> Mode:
    """Whether ``strategy``'s aggregate depends on the updates only through their mean."""
    inner = strategy.inner if isinstance(strategy, ProximalStrategy) else strategy
    if type(inner) is FedAvg:
        return Mode.MEAN
    if type(inner) in (FedAvgM, FedAdam, FedYogi):
        return Mode.MEAN_THEN_STRATEGY
    return Mode.HOLD_ALL


@dataclass
class Update:
    """One site's accepted update: its weight and tensors (views, or parked files)."""

    site: str
    weight: float
    arrays: Mapping[str, np.ndarray]
    scales: Mapping[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, site: str, reply: Message, cap: float | None = None) -> Update:
        """The update ``reply`` carries; its weight is at most ``cap`` (declared cases)."""
        content = reply.content
        arrays = cast(ArrayRecord, content[RecordKey.ARRAYS])
        scales = records(content, ArrayRecord).get(RecordKey.SCALES, ArrayRecord())
        return cls(
            site,
            reply_weight(reply, cap),
            {k: array_view(v) for k, v in arrays.items()},
            {k: array_view(v) for k, v in scales.items()},
        )

    def park(self, folder: Path) -> Update:
        """Write the tensors to ``folder``; the same update, read back lazily from disk."""
        folder.mkdir(parents=True)
        parked: dict[str, dict[str, np.ndarray]] = {"arrays": {}, "scales": {}}
        for part, tensors in (("arrays", self.arrays), ("scales", self.scales)):
            for i, (key, values) in enumerate(tensors.items()):
                path = folder / f"{part}-{i}.npy"
                np.save(path, values, allow_pickle=False)
                parked[part][key] = np.load(path, mmap_mode="r", allow_pickle=False)
        return Update(self.site, self.weight, parked["arrays"], parked["scales"])


def reply_weight(reply: Message, cap: float | None = None) -> float:
    """A reply's FedAvg weight: its num-examples, at most ``cap`` when given."""
    metrics = next(iter(records(reply.content, MetricRecord).values()))
    weight = float(cast(float, metrics[MetricKey.NUM_EXAMPLES.value]))
    return weight if cap is None else min(weight, float(cap))


class RunningMean:
    """The weighted mean of updates, folded in one at a time (float32 running sum).

    With compression the folded tensors are decoded updates, and the mean is
    added to ``reference`` (the global weights the sites received).
    """

    def __init__(self, reference: ArrayRecord, compression: str = Compression.NONE) -> None:
        self.reference = reference
        self.compression = compression
        self.sums: dict[str, torch.Tensor] = {}
        self.total = 0.0
        self.count = 0

    def add(self, update: Update) -> None:
        for key, values in self.tensors(update):
            ref = self.reference[key]
            tensor = as_tensor(np.asarray(values))
            acc = self.sums.get(key)
            if acc is None:  # the first term: one pass, no zero fill; NumPy-allocated, so
                # memory profilers see it
                acc = self.sums[key] = torch.from_numpy(np.empty(tuple(ref.shape), np.float32))
                torch.mul(tensor, update.weight, out=acc)
            else:
                acc.add_(tensor, alpha=update.weight)
        self.total += update.weight
        self.count += 1

    def tensors(self, update: Update) -> Iterable[tuple[str, np.ndarray]]:
        """(key, weights or decoded update) per tensor of the global model."""
        if self.compression == Compression.NONE:
            return ((key, update.arrays[key]) for key in self.reference)
        shapes = [(k, tuple(r.shape)) for k, r in self.reference.items()]
        scales = update.scales.get(PACKED)
        return unpack(
            np.asarray(update.arrays[PACKED]),
            None if scales is None else np.asarray(scales),
            shapes,
            self.compression,
        )

    def result(self) -> ArrayRecord | None:
        """The mean as float32 weights (sums are released tensor by tensor); None if empty."""
        if not self.count:
            return None
        out: OrderedDict[str, Array] = OrderedDict()
        for key, ref in self.reference.items():
            acc = self.sums.pop(key)
            acc.div_(self.total)
            if self.compression != Compression.NONE:
                acc.add_(as_tensor(array_view(ref)))
            out[key] = Array(acc.numpy().astype(ref.dtype, copy=False))
            del acc
        return ArrayRecord(out)


class RoundAggregator:
    """One round's aggregation: updates in, the strategy's new shared weights out.

    ``order`` is every site the round's messages went to, in folding order;
    ``accept`` and ``skip`` may be called in any order, once per site.
    """

    def __init__(
        self,
        strategy: Strategy,
        reference: ArrayRecord,
        order: list[str],
        compression: str = Compression.NONE,
        park_root: Path | None = None,
        defer: bool = False,
        track_norms: bool = False,
        declared: Mapping[str, int] | None = None,
    ) -> None:
        self.strategy, self.reference, self.compression = strategy, reference, compression
        self.mode = aggregation_mode(strategy)
        # defer: fold nothing before every reply is in (norm outliers need all the norms);
        # streamed updates then wait on disk, so memory still does not grow with sites
        self.defer = defer
        self.track_norms = track_norms or defer  # one more pass over each update
        self.norms: dict[str, float] = {}  # L2 norm of each accepted site's update
        self.declared = dict(declared or {})  # site -> training cases: its weight's cap
        self.mean = RunningMean(reference, compression)
        self.order = list(order)
        self.next = 0  # index in ``order`` of the next site to fold
        self.waiting: dict[str, Update | None] = {}  # arrived before their turn (None: skipped)
        self.held: dict[str, Message] = {}  # HOLD_ALL: accepted replies
        self.parked = 0  # how many updates had to wait on disk (for the round record)
        self._park_root = park_root
        self._park_dir: Path | None = None

    def accept(self, site: str, reply: Message) -> None:
        """Take ``site``'s screened update; UpdateRejected (nothing taken) if its norm
        is not finite."""
        update = Update.from_reply(site, reply, self.declared.get(site))
        if self.track_norms:
            norm = self.norm(update)
            if not math.isfinite(norm):
                raise UpdateRejected(f"update norm is not finite ({norm}): values overflow")
            self.norms[site] = norm
        if self.mode is Mode.HOLD_ALL:
            self.held[site] = self._capped(site, reply)
            return
        if site == self._due() and not self.defer:
            self._fold(update)
        else:
            self.waiting[site] = update.park(self._folder() / str(self.parked))
            self.parked += 1

    def skip(self, site: str) -> None:
        """``site`` contributes nothing this round (error, rejected update)."""
        if self.mode is not Mode.HOLD_ALL:
            self.waiting[site] = None
            self._drain()

    def norm(self, update: Update) -> float:
        """The L2 norm of ``update`` minus the global model (of the decoded update when
        compressed), accumulated in float64 over tensors."""
        total = 0.0
        for key, values in self.mean.tensors(update):
            tensor = as_tensor(np.asarray(values)).float()
            if self.compression == Compression.NONE:
                tensor = tensor - as_tensor(array_view(self.reference[key])).float()
            total += float(torch.linalg.vector_norm(tensor, dtype=torch.float64)) ** 2
        return total**0.5

    def exclude(self, sites: Iterable[str]) -> None:
        """Drop accepted updates after all (norm outliers), before ``result``."""
        for site in sites:
            self.held.pop(site, None)
            if site in self.waiting:
                self.waiting[site] = None

    def result(self, server_round: int, sent: list[Message]) -> ArrayRecord | None:
        """The new shared weights, or None if no update was accepted; cleans up parked files."""
        try:
            if self.mode is Mode.HOLD_ALL:
                if not self.held:
                    return None
                replies = [self._weights_reply(self.held[s]) for s in sorted(self.held)]
                return self.strategy.aggregate_train(server_round, replies)[0]
            for site in self.order[self.next :]:  # sites that never replied are passed over
                update = self.waiting.pop(site, None)
                if update is not None:
                    self.mean.add(update)
            self.next = len(self.order)
            mean = self.mean.result()
            if mean is None or self.mode is Mode.MEAN:
                return mean
            # the server optimisers step from the weighted mean: hand it over as one reply
            metrics = MetricRecord({MetricKey.NUM_EXAMPLES.value: self.mean.total})
            content = RecordDict({RecordKey.ARRAYS: mean, RecordKey.METRICS: metrics})
            return self.strategy.aggregate_train(
                server_round, [Message(content, reply_to=sent[0])]
            )[0]
        finally:
            self.waiting.clear()
            if self._park_dir is not None:
                shutil.rmtree(self._park_dir, ignore_errors=True)

    # ---- internals ---------------------------------------------------------------------

    def _due(self) -> str | None:
        return self.order[self.next] if self.next < len(self.order) else None

    def _fold(self, update: Update) -> None:
        self.mean.add(update)
        self.next += 1
        self._drain()

    def _drain(self) -> None:
        if self.defer:
            return
        while (site := self._due()) is not None and site in self.waiting:
            update = self.waiting.pop(site)
            if update is not None:
                self.mean.add(update)
            self.next += 1

    def _folder(self) -> Path:
        if self._park_dir is None:
            if self._park_root is not None:
                self._park_root.mkdir(parents=True, exist_ok=True)
            self._park_dir = Path(tempfile.mkdtemp(prefix=".parked-", dir=self._park_root))
        return self._park_dir

    def _capped(self, site: str, reply: Message) -> Message:
        """``reply`` with its num-examples at most ``site``'s declared cases."""
        cap = self.declared.get(site)
        if cap is None or reply_weight(reply) <= cap:
            return reply
        key = next(k for k, v in reply.content.items() if isinstance(v, MetricRecord))
        metrics = MetricRecord(dict(cast(MetricRecord, reply.content[key])))
        metrics[MetricKey.NUM_EXAMPLES.value] = float(cap)
        reply.content[key] = metrics
        return reply

    def _weights_reply(self, reply: Message) -> Message:
        """A compressed reply as full weights (robust strategies compare whole models)."""
        if self.compression == Compression.NONE:
            return reply
        update = Update.from_reply("", reply)
        weights: OrderedDict[str, Array] = OrderedDict()
        for key, delta in self.mean.tensors(update):
            ref = self.reference[key]
            weights[key] = Array((array_view(ref) + delta).astype(ref.dtype, copy=False))
        reply.content = RecordDict(
            {
                RecordKey.ARRAYS: ArrayRecord(weights),
                RecordKey.METRICS: next(iter(records(reply.content, MetricRecord).values())),
                RecordKey.SITE: records(reply.content, ConfigRecord).get(
                    RecordKey.SITE, ConfigRecord()
                ),
            }
        )
        return reply
