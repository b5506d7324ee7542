"""Fold a site's update into a float32 running sum, reading the update's bytes once.

``server.aggregation`` streams a round's updates into one running sum (its docstring says
in which order, what waits on disk, which strategies); this is the arithmetic. Each tensor
is processed in blocks of ``BLOCK_VALUES`` values (4 MiB of float32) and, while a block is
in cache, the kernel (``fold_blocks``) decodes it (fp16/int8, the values of
``common.compression.decode``); sums its squares (of the decoded update, or of the weights
minus the global model): the update's norm for the norm-outlier rule and the records, and
the finite check, as a block's sum is finite exactly when its values are and no difference
overflows; then, only if the block passed, adds weight x block into the sum; and may copy
the block's bytes to a ``server.spill.Spill`` file (a reply parked until its turn, or a
copy kept until the norm-outlier rule has spoken).

**A rejected update** (NaN, infinity, a norm that overflows) is found at its first bad
block: the blocks already added are subtracted again (re-read: the rare path), and
``UpdateRejected`` names the site and the tensor.

**Taking an update out again is not exact.** Subtracting an update (a norm outlier, or one
rejected part-way) leaves a rounding difference against never having added it: with
``p = weight x value``, ``fl(fl(s + p) - p)`` differs from the sum ``s`` by at most
2^-24 (2|s| + |p|): the mean of the others is off by at most 1.2e-7 of itself plus 6e-8
of ``p`` over the others' total weight. The operations do not depend on the arrival
order, so a rerun still gives the same bits.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from common.array_views import numpy_array
from common.compression import BLOCK, PACKED, n_blocks
from common.keys import Compression
from server.fold_threads import FoldThreads, sum_of_squares
from server.mapped_pages import drop_pages, file_mapping

if TYPE_CHECKING:
    from server.spill import Spill

# 1,048,576 values: 4 MiB of float32, whole int8 scale blocks. A block, its difference from
# the global model and the sum's block stay in the last-level cache between the kernel's
# three operations, and each operation's start (and its threads' hand-off) is paid a
# quarter as often as with 1 MiB blocks: 1.16 x (20 sites) and 1.05 x (100 sites) the
# update bytes folded per second on two cores, the median of 8 paired, interleaved runs.
BLOCK_VALUES = 1024 * BLOCK
DROP_VALUES = 4 * 2**20  # a parked update's pages are let go every 16 MiB of float32
Where = tuple[int, int]  # (tensor index, value offset)


class UpdateRejected(ValueError):
    """An update that passed screening is unusable after all (NaN or infinite values, a norm
    that overflows): the message is the reason; ``site`` and ``tensor`` say where, ``at``
    (tensor index, value offset) the first bad block."""

    def __init__(
        self, reason: str, site: str = "", tensor: str = "", at: Where | None = None
    ) -> None:
        super().__init__(reason)
        self.site, self.tensor, self.at = site, tensor, at


@dataclass
class Update:
    """One site's accepted update: its weight and tensors (views, or a spill file's)."""

    site: str
    weight: float
    arrays: Mapping[str, np.ndarray]
    scales: Mapping[str, np.ndarray] = field(default_factory=dict)


class Op(Enum):
    """What a pass does to the running sum."""

    NONE = "none"  # check and measure only
    FIRST = "first"  # sum = weight x values (the first term: no zero fill)
    ADD = "add"
    SUB = "sub"


@dataclass(frozen=True)
class Source:
    """One tensor of an update as the kernel reads it (``values`` and ``scales`` as NumPy
    arrays, the same memory as tensors: ``Source.of`` makes them)."""

    key: str
    values: np.ndarray  # flat, C-contiguous: weights, or fp16/int8 codes
    scales: np.ndarray | None = None  # int8: this tensor's block scales
    reference: torch.Tensor | None = None  # flat global weights: the norm is of values - these
    tensor: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # ``values``
    scale_tensor: torch.Tensor | None = None  # ``scales``

    @classmethod
    def of(cls, key: str, values: np.ndarray, scales: np.ndarray | None = None,
           reference: torch.Tensor | None = None) -> Source:  # fmt: skip
        """``values`` (and ``scales``) with their tensor views; call it where the warning
        about read-only arrays is off (``quiet_views``)."""
        scale_tensor = None if scales is None else torch.from_numpy(np.asarray(scales))
        return cls(key, values, scales, reference, torch.from_numpy(values), scale_tensor)


@contextmanager
def quiet_views() -> Iterator[None]:
    """Read-only NumPy views become tensors without torch's warning that the array is not
    writable (they are only read). Entering costs microseconds: once per update, not per
    tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def as_tensor(values: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``values``' memory; it is only read (the views are read-only)."""
    with quiet_views():
        return torch.from_numpy(values)


def fold_blocks(
    src: Source,
    method: str,
    scratch: tuple[torch.Tensor, torch.Tensor],
    op: Op,
    weight: float = 0.0,
    acc: torch.Tensor | None = None,
    *,
    measure: bool = True,
    sink: Spill | None = None,
    stop: int | None = None,
) -> tuple[float, int | None]:
    """One pass over ``src``'s values ``[0, stop)``, block by block: decode, sum of squares
    (``measure``), ``op`` into the flat running sum ``acc``, copy to ``sink``.

    Returns the sum of squares and None, or, at the first block whose sum of squares is
    not finite, what was summed before it and the block's offset (nothing of that block
    or after it was added or copied). torch, as the rest of the server: its threads, one
    fused multiply-add per block."""
    decoded, tmp = scratch
    n = src.values.size if stop is None else stop
    values, scales, reference = src.tensor, src.scale_tensor, src.reference
    plain = values.dtype == torch.float32  # weights as they are: no decoding
    alpha = -weight if op is Op.SUB else weight
    sums = None if op is Op.NONE else acc
    total = 0.0
    mapping, dropped = file_mapping(src.values), 0  # a parked update's file: read once
    for start in range(0, n, BLOCK_VALUES):
        if mapping is not None and start - dropped >= DROP_VALUES:
            drop_pages(mapping, src.values[dropped:start])
            dropped = start
        end = min(start + BLOCK_VALUES, n)
        block = values[start:end]
        if not plain:
            block = _decode(block, scales, start, method, decoded)
        if measure:
            diff = block
            if reference is not None:
                diff = torch.sub(block, reference[start:end], out=tmp[: end - start])
            part = sum_of_squares(diff)
            if not math.isfinite(part):
                return total, start
            total += part
        if sums is not None:
            if op is Op.FIRST:
                torch.mul(block, weight, out=sums[start:end])
            else:  # acc += / -= weight x values, element by element
                sums[start:end].add_(block, alpha=alpha)
        if sink is not None:
            sink.write(src.values[start:end])
    if mapping is not None:
        drop_pages(mapping, src.values[dropped:n])
    return total, None


def _decode(
    raw: torch.Tensor, scales: torch.Tensor | None, start: int, method: str, out: torch.Tensor
) -> torch.Tensor:
    """The float32 values of one block of codes (``raw`` itself for float32 weights): the
    same values as ``common.compression.decode`` (one IEEE product per int8 code)."""
    m = raw.numel()
    if method == Compression.INT8:
        if scales is None:
            raise ValueError("int8 codes need their block scales")
        full, first = m // BLOCK * BLOCK, start // BLOCK
        part = scales[first : first + n_blocks(m)]
        torch.mul(
            raw[:full].view(-1, BLOCK), part[: full // BLOCK, None], out=out[:full].view(-1, BLOCK)
        )
        if full < m:
            torch.mul(raw[full:], part[-1], out=out[full:m])
        return out[:m]
    if raw.dtype == torch.float32:
        return raw
    return out[:m].copy_(raw)


class RunningMean:
    """The weighted mean of updates, folded in one at a time (float32 running sum).

    ``reference`` is the global model the sites received (read when used). With ``norms``
    each update's norm is taken against it (full weights: the norm of weights minus the
    reference); without, only the update's own values are checked. With compression the
    folded tensors are decoded updates, and the mean is added to ``reference``.
    """

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        compression: str = Compression.NONE,
        norms: bool = True,
    ) -> None:
        self.reference = reference
        self.compression, self.norms = compression, norms
        self.sums: dict[str, np.ndarray] = {}  # key -> flat float32 sum, model order
        self.total = 0.0
        self.count = 0
        # decoding and difference buffers: one block, or the largest tensor if smaller
        size = min(BLOCK_VALUES, max((math.prod(r.shape) for r in reference.values()),
                                     default=1))  # fmt: skip
        self._scratch = (torch.empty(size), torch.empty(size))
        self._threads = FoldThreads()  # each fold's threads: free cores (server.fold_threads)
        self._flats: dict[str, torch.Tensor] | None = None  # the reference, flat (when read)
        self._sum_tensors: dict[str, torch.Tensor] = {}  # the sums as tensors (same memory)

    def add(self, update: Update, sink: Spill | None = None) -> float:
        """Check, measure and fold ``update`` in one pass; its norm. UpdateRejected if a
        block fails the check, with the sum left as if it had not been added (see the
        module docstring on rounding)."""
        norm = self._checked(update, Op.ADD if self.count else Op.FIRST, sink)
        self.total += update.weight
        self.count += 1
        return norm

    def measure(self, update: Update, sink: Spill | None = None) -> float:
        """Check ``update`` and return its norm without folding it (a parked update, whose
        bytes ``sink`` copies as they are read; a held update of a robust strategy)."""
        return self._checked(update, Op.NONE, sink)

    def fold_checked(self, update: Update) -> None:
        """Fold an update that was checked and measured when it was parked (no checks)."""
        self._pass(update, Op.ADD if self.count else Op.FIRST, self.sources(update), None)
        self.total += update.weight
        self.count += 1

    def subtract(self, update: Update) -> None:
        """Take a folded ``update`` out again (a norm outlier); see the module docstring."""
        self._pass(update, Op.SUB, self.sources(update), None)
        self.total -= update.weight
        self.count -= 1

    def replay(self, update: Update, at: Where) -> None:
        """What ``add`` does to the sum for an update rejected at ``at``, for one that was
        parked and rejected then: the same operations in the same place in the order, so
        the bits do not depend on whether it arrived early."""
        if self.count:
            sources = self.sources(update)
            self._pass(update, Op.ADD, sources, at)
            self._pass(update, Op.SUB, sources, at)

    def result(self) -> ArrayRecord | None:
        """The mean in the reference's dtypes (sums are released tensor by tensor); None
        if nothing was folded."""
        if not self.count:
            return None
        out: OrderedDict[str, Array] = OrderedDict()
        for key, ref in self.reference.items():
            self._sum_tensors.pop(key, None)
            acc = self.sums.pop(key).reshape(ref.shape)  # the sums are C-ordered
            np.divide(acc, np.float32(self.total), out=acc)
            if self.compression != Compression.NONE:
                np.add(acc, ref, out=acc, casting="unsafe")
            out[key] = numpy_array(acc.astype(ref.dtype, copy=False))
            del acc
        return ArrayRecord(out)

    def sources(self, update: Update) -> list[Source]:
        """Each tensor of ``update`` as the kernel reads it, in the global model's order;
        UpdateRejected if the tensors do not fit the model (screening checks this first)."""
        flats = self._flat_reference()
        shapes = {k: r.shape for k, r in self.reference.items()}
        if self.compression == Compression.NONE:
            out = []
            with quiet_views():  # once per update: entering it costs as much as a tensor's view
                for key, shape in shapes.items():
                    values = update.arrays.get(key)
                    if values is None or values.shape != shape:
                        got = "missing" if values is None else f"{list(values.shape)}"
                        raise UpdateRejected(f"tensor {key!r} is {got}, expected {list(shape)}",
                                             update.site, key)  # fmt: skip
                    ref = flats[key] if self.norms else None
                    flat = np.ascontiguousarray(values).reshape(-1)
                    out.append(Source.of(key, flat, None, ref))
            return out
        codes = np.ascontiguousarray(update.arrays[PACKED]).reshape(-1)
        scales = update.scales.get(PACKED)
        sizes = [math.prod(s) for s in shapes.values()]
        if codes.size != sum(sizes):
            raise UpdateRejected(f"{codes.size} codes for a model of {sum(sizes)} values",
                                 update.site, PACKED)  # fmt: skip
        out, offset, block = [], 0, 0
        with quiet_views():
            for key, size in zip(shapes, sizes, strict=True):
                part = (None if scales is None
                        else np.asarray(scales)[block : block + n_blocks(size)])  # fmt: skip
                out.append(Source.of(key, codes[offset : offset + size], part))
                offset, block = offset + size, block + n_blocks(size)
        return out

    # ---- internals ---------------------------------------------------------------------

    def _flat_reference(self) -> dict[str, torch.Tensor]:
        """The global model's tensors, flat (made once: every update of the round reads
        them)."""
        if self._flats is None:
            with quiet_views():
                self._flats = {k: torch.from_numpy(np.ascontiguousarray(r).reshape(-1))
                               for k, r in self.reference.items()}  # fmt: skip
        return self._flats

    def _sum(self, key: str, op: Op) -> torch.Tensor:
        """The running sum of ``key`` as a tensor (a new one for the first term)."""
        if op is Op.FIRST:  # NumPy-allocated, so memory profilers see it; no zero fill
            self.sums[key] = np.empty(math.prod(self.reference[key].shape), np.float32)
            self._sum_tensors[key] = torch.from_numpy(self.sums[key])
        return self._sum_tensors[key]

    def _checked(self, update: Update, op: Op, sink: Spill | None) -> float:
        """One checked pass of ``op`` over ``update`` (copied to ``sink``); its norm."""
        sources = self.sources(update)
        self._plan(sink, update)
        total = 0.0
        with self._threads.fold():
            for i, src in enumerate(sources):
                if sink is not None and (self.compression == Compression.NONE or i == 0):
                    sink.begin(i)  # this tensor's entry, or (compressed) the one of all codes
                acc = None if op is Op.NONE else self._sum(src.key, op)
                part, bad = fold_blocks(src, self.compression, self._scratch, op,
                                        update.weight, acc, sink=sink)  # fmt: skip
                total += part
                if bad is not None:
                    if op is not Op.NONE:
                        self._undo(update, sources, (i, bad))
                    raise self._rejection(update, src, bad, i)
        return math.sqrt(total)

    def _pass(self, update: Update, op: Op, sources: list[Source], at: Where | None) -> None:
        """``op`` over every tensor, or over the values before ``at``."""
        with self._threads.fold():
            for i, src in enumerate(sources):
                if at is not None and i > at[0]:
                    break
                stop = at[1] if at is not None and i == at[0] else None
                fold_blocks(src, self.compression, self._scratch, op, update.weight,
                            self._sum(src.key, op), measure=False, stop=stop)  # fmt: skip

    def _undo(self, update: Update, sources: list[Source], at: Where) -> None:
        if self.count:
            self._pass(update, Op.SUB, sources, at)
        else:  # it was the first term: the sums were its alone
            self.sums.clear()
            self._sum_tensors.clear()

    def _plan(self, sink: Spill | None, update: Update) -> None:
        """Lay out ``sink`` for every tensor of ``update`` (even if it is rejected part-way:
        a parked bad update is replayed up to where it failed), and write the scales."""
        if sink is None:
            return
        if self.compression == Compression.NONE:
            arrays = {k: update.arrays[k] for k in self.reference}
            sink.plan([("arrays", k, a.dtype, a.shape) for k, a in arrays.items()])
            return
        scales = update.scales.get(PACKED)
        codes = update.arrays[PACKED]
        entries = [("arrays", PACKED, codes.dtype, codes.shape)]
        if scales is not None:
            entries.append(("scales", PACKED, scales.dtype, scales.shape))
        sink.plan(entries)
        if scales is not None:
            sink.begin(1)
            sink.write(np.ascontiguousarray(scales).reshape(-1))

    def _rejection(self, update: Update, src: Source, start: int, i: int) -> UpdateRejected:
        """The reason a block failed the check (re-reads that block)."""
        raw = src.values[start : start + BLOCK_VALUES]
        if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
            reason = f"tensor {src.key!r} contains NaN or Inf"
        elif src.scales is not None and not np.isfinite(src.scales).all():
            reason = f"tensor {src.key!r}: block scales are not finite"
        else:
            reason = "update norm is not finite (inf): values overflow"
        return UpdateRejected(reason, update.site, src.key, (i, start))
