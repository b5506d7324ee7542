"""Aggregate a round's updates as they arrive, in memory that does not grow with sites.

Stock Flower collects every reply of a round and then averages them
(``aggregate_arrayrecords``): the ServerApp holds N updates at once, and each
tensor is deserialised into a fresh copy and multiplied into another. Here,
for the strategies whose aggregate is the weighted mean (FedAvg, and the
server optimisers that start from it: FedAvgM, FedAdam, FedYogi), each reply
is folded into one float32 running sum the moment it arrives and then dropped:
the server holds the global model, the running sum and one reply, whatever
the number of sites. Tensors are read straight from the message bytes (no
copy), and each update's bytes are read once: checked, measured (its norm) and
added block by block while the block is in cache (``server.folding``).

**Order.** Floating-point sums depend on the order of the terms, and replies
arrive in whatever order sites finish. Updates are therefore folded in site
name order: a reply that arrives before its turn is parked on disk (in the
run folder, deleted after the round; checked and measured as it is written)
and folded when its turn comes, so a rerun gives the same model bit for bit and
memory stays bounded.

**Norm outliers** (``trust.norm-z``) are judged once every norm of the round is
known, but nothing waits for that: each update is folded in its turn, and with
the rule on (``defer``) a copy of it is written to the run folder as it is read.
An update the rule excludes is then subtracted from the sum again, with its
weight from the total: this leaves a rounding difference against never having
added it (about 1e-7 of the mean; bounded in ``server.folding``).

**Robust strategies** (FedMedian, FedTrimmedAvg, Krum, or a strategy a hook
wraps in something other than ``ProximalStrategy``) need every update at once
by their nature; they get all accepted replies, in site order, as before.

**Weights** are the example counts sites report, capped at the training cases each
site declared when it joined (``declared``): screening rejects a larger count
(``server.validation``), and the cap holds here too, in the streamed and the
hold-all paths alike, whoever calls the aggregator.

**Compressed updates** (``common.compression``) are decoded block by block
during the fold: the running sum is then of updates, and the result is the
global weights plus their weighted mean, the same model as averaging weights.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedYogi, Strategy

from common.array_views import RecordViews, array_view, dtype_name, records
from common.compression import PACKED, unpack
from common.hooks.proximal import ProximalStrategy
from common.keys import Compression, MetricKey, RecordKey
from server.folding import RunningMean, Update
from server.folding import UpdateRejected as UpdateRejected  # where callers catch it
from server.spill import Spill


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


def reply_update(site: str, reply: Message, cap: float | None = None) -> Update:
    """The update ``reply`` carries, as views of its bytes; its weight is at most ``cap``
    (the site's declared cases)."""
    content = reply.content
    arrays = cast(ArrayRecord, content[RecordKey.ARRAYS])
    scales = records(content, ArrayRecord).get(RecordKey.SCALES, ArrayRecord())
    return Update(site, reply_weight(reply, cap), _views(site, arrays), _views(site, scales))


def _views(site: str, record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays as views of their bytes, each holding what its record says
    (screening in a round compares only the record's dtype and shape with the global
    model's; the bytes are the site's, and a rogue site signs whatever it sends). Any
    disagreement is UpdateRejected before a value is folded."""
    out = {}
    for key, array in record.items():
        try:
            view = array_view(array)
        except ValueError as e:
            raise UpdateRejected(f"unreadable update: tensor {key!r}: {e}", site, key) from e
        if dtype_name(view.dtype) != array.dtype or view.shape != tuple(array.shape):
            raise UpdateRejected(
                f"unreadable update: tensor {key!r} holds {view.dtype}{list(view.shape)}, "
                f"its record says {array.dtype}{list(array.shape)}",
                site,
                key,
            )
        out[key] = view
    return out


def reply_weight(reply: Message, cap: float | None = None) -> float:
    """A reply's FedAvg weight: its num-examples, at most ``cap`` when given."""
    metrics = next(iter(records(reply.content, MetricRecord).values()))
    weight = float(cast(float, metrics[MetricKey.NUM_EXAMPLES.value]))
    return weight if cap is None else min(weight, float(cap))


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
        statistics: Iterable[str] = (),
    ) -> None:
        self.strategy, self.reference, self.compression = strategy, reference, compression
        # normalisation statistics (BatchNorm running mean and variance): the sites' weighted
        # mean, never a server optimiser's step (momentum can take a variance below zero)
        self.statistics = frozenset(statistics)
        self.mode = aggregation_mode(strategy)
        # defer: the norm-outlier rule judges the round once every norm is in; updates are
        # still folded in their turn, and a copy of each waits on disk in case it is excluded
        self.defer = defer
        self.track_norms = track_norms or defer  # norms of weights minus the global model
        self.norms: dict[str, float] = {}  # L2 norm of each accepted site's update
        self.declared = dict(declared or {})  # site -> training cases: its weight's cap
        self.mean = RunningMean(RecordViews(reference), compression, self.track_norms)
        self.order = list(order)
        self.next = 0  # index in ``order`` of the next site to fold
        self.waiting: dict[str, Spill | None] = {}  # arrived before their turn (None: skipped)
        self.rejected_at: dict[str, tuple[int, int]] = {}  # parked, then found bad: see accept
        self.folded: set[str] = set()
        self.copies: dict[str, Spill] = {}  # defer: folded updates, on disk until the result
        self.excluded: set[str] = set()  # folded, then excluded: subtracted in ``result``
        self.held: dict[str, Message] = {}  # HOLD_ALL: accepted replies
        self.parked = 0  # how many updates had to wait on disk (for the round record)
        self._files = 0
        self._park_root = park_root
        self._park_dir: Path | None = None

    def accept(self, site: str, reply: Message) -> None:
        """Take ``site``'s screened update, reading its bytes once: checked, measured and
        folded in its turn, or checked, measured and parked until then (a robust strategy's:
        checked and held). UpdateRejected (nothing taken) if a value is not finite or its
        norm overflows: this is the values' check, which screening leaves to the fold.

        A parked update found bad is kept on disk: in its turn the sum goes through what
        a direct fold of it would have done (part added, then subtracted), so the bits do
        not depend on the arrival order."""
        update = reply_update(site, reply, self.declared.get(site))
        if self.mode is Mode.HOLD_ALL:  # checked (and measured) here too: screening leaves
            norm = self.mean.measure(update)  # the values to the aggregator
            if self.track_norms:
                self.norms[site] = norm
            self.held[site] = self._capped(site, reply)
            return
        due = site == self._due()
        spill = self._spill() if self.defer or not due else None
        try:
            norm = self.mean.add(update, spill) if due else self.mean.measure(update, spill)
        except UpdateRejected as e:
            if spill is not None and not due and e.at is not None:
                self.waiting[site] = spill.finish(site, update.weight)
                self.rejected_at[site] = e.at
            elif spill is not None:
                spill.discard()
            raise
        if self.track_norms:
            self.norms[site] = norm
        if spill is not None:
            spill.finish(site, update.weight)
        if due:
            self._folded(site, spill)
            self.next += 1
            self._drain()
        else:
            self.waiting[site] = spill
            self.parked += 1

    def skip(self, site: str) -> None:
        """``site`` contributes nothing this round (error, rejected update)."""
        if self.mode is not Mode.HOLD_ALL:
            if site not in self.rejected_at:
                self.waiting[site] = None
            self._drain()

    def exclude(self, sites: Iterable[str]) -> None:
        """Drop accepted updates after all (norm outliers), before ``result``: one still
        waiting is never folded; one folded is subtracted again in ``result`` (``defer``
        kept a copy of it)."""
        for site in sites:
            self.held.pop(site, None)
            if site in self.waiting:
                self.waiting[site] = None
            elif site in self.folded:
                if site not in self.copies:
                    raise ValueError(
                        f"cannot exclude {site}: its update was folded without a copy "
                        "(build the RoundAggregator with defer=True to exclude after folding)"
                    )
                self.excluded.add(site)

    def result(self, server_round: int, sent: list[Message]) -> ArrayRecord | None:
        """The new shared weights, or None if no update was accepted; cleans up parked files."""
        try:
            if self.mode is Mode.HOLD_ALL:
                if not self.held:
                    return None
                replies = [self._weights_reply(self.held[s]) for s in sorted(self.held)]
                return self.strategy.aggregate_train(server_round, replies)[0]
            for site in self.order[self.next :]:  # sites that never replied are passed over
                if site in self.waiting:
                    self._fold_waiting(site)
            self.next = len(self.order)
            for site in sorted(self.excluded):  # after every fold, so in a fixed place
                self.mean.subtract(self.copies[site].read())
            mean = self.mean.result()
            if mean is None or self.mode is Mode.MEAN:
                return mean
            # the server optimisers step from the weighted mean: hand it over as one reply
            metrics = MetricRecord({MetricKey.NUM_EXAMPLES.value: self.mean.total})
            content = RecordDict({RecordKey.ARRAYS: mean, RecordKey.METRICS: metrics})
            averaged = {k: mean[k] for k in self.statistics if k in mean}
            stepped = self.strategy.aggregate_train(
                server_round, [Message(content, reply_to=sent[0])]
            )[0]
            if stepped is not None:  # in place: FedAvgM/FedAdam keep this record as theirs
                for key, array in averaged.items():
                    stepped[key] = array
            return stepped
        finally:
            self.waiting.clear()
            self.copies.clear()
            if self._park_dir is not None:
                shutil.rmtree(self._park_dir, ignore_errors=True)

    # ---- internals ---------------------------------------------------------------------

    def _due(self) -> str | None:
        return self.order[self.next] if self.next < len(self.order) else None

    def _drain(self) -> None:
        while (site := self._due()) is not None and site in self.waiting:
            self._fold_waiting(site)
            self.next += 1

    def _fold_waiting(self, site: str) -> None:
        """Fold a parked update (checked when it was parked), or replay a bad one."""
        spill = self.waiting.pop(site)
        at = self.rejected_at.pop(site, None)
        if spill is None:
            return
        if at is not None:
            self.mean.replay(spill.read(), at)
            return
        self.mean.fold_checked(spill.read())
        self._folded(site, spill if self.defer else None)  # its parked file is its copy

    def _folded(self, site: str, copy: Spill | None) -> None:
        self.folded.add(site)
        if copy is not None:
            self.copies[site] = copy

    def _spill(self) -> Spill:
        path = self._folder() / f"{self._files}.update"
        self._files += 1
        return Spill(path)

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
        update = reply_update("", reply)
        shapes = [(k, tuple(r.shape)) for k, r in self.reference.items()]
        scales = update.scales.get(PACKED)
        weights: OrderedDict[str, Array] = OrderedDict()
        for key, delta in unpack(np.asarray(update.arrays[PACKED]), scales, shapes,
                                 self.compression):  # fmt: skip
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
