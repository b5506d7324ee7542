"""Reading Flower's message bytes without copies: an ``Array``'s values as a NumPy view,
a record's arrays as views made once, and the records of one kind in a reply (without
the reference cycle of ``RecordDict``'s own views). Aggregation, screening and privacy
read every update through these."""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

NUMPY_STYPE = "numpy.ndarray"


def array_view(array: Array) -> np.ndarray:
    """The values of a Flower ``Array`` as a read-only NumPy view of its bytes (no copy).

    Flower stores an array as ``.npy`` bytes; ``Array.numpy()`` parses them into a
    new array. Here the header is parsed and the data are viewed in place. The bytes may
    be a rogue site's: anything but a readable header of at most ``MAX_DIMS``
    non-negative sizes whose values the bytes hold is a ValueError.
    """
    if array.stype != NUMPY_STYPE:
        return array.numpy()
    try:
        shape, fortran, dtype, offset = _header(array.data)
    except (TypeError, OverflowError, RecursionError, MemoryError, SyntaxError) as e:
        # an unknown dtype code, a size past C's integers, nesting too deep for NumPy's
        # literal parser: each a header no writer of .npy files makes
        raise ValueError(f"its .npy header is unreadable ({type(e).__name__}: {e})") from e
    if len(shape) > MAX_DIMS or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"its header's shape is not {MAX_DIMS} or fewer non-negative sizes")
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    count = math.prod(shape)  # Python ints: exact (no int64 wrap-around); at most 64 factors
    size = memoryview(array.data).nbytes  # bytes, or a view of a reply's joined buffer
    held = (size - offset) // dtype.itemsize if dtype.itemsize else count
    if count > held:  # a shape past what the bytes hold, however large: a clear ValueError
        raise ValueError(f"its header's shape ({len(shape)} dimensions) needs more values "
                         f"than the bytes hold ({held})")  # fmt: skip
    flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


MAX_DIMS = 64  # NumPy's own limit on an array's dimensions


def _header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of a ``.npy`` header: the plain form
    NumPy writes by a regular expression, any other by NumPy's parser (first 4 kB)."""
    parsed = _plain_header(data)
    if parsed is not None:
        return parsed
    header = io.BytesIO(data[:4096])  # .npy headers are far shorter
    version = np.lib.format.read_magic(header)
    reader = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = reader(header)
    return shape, fortran, dtype, header.tell()


def numpy_array(values: np.ndarray) -> Array:
    """A Flower ``Array`` of ``values``, the same ``.npy`` bytes as ``Array(values)``, made
    with one copy of the values. Flower's (``np.save`` into a ``BytesIO``) copies them in
    16 MiB pieces into a buffer that grows by reallocation: for a 200 MB tensor it held
    1.12 x the tensor at its peak (tracemalloc) and took 1.4 x as long."""
    if values.dtype.hasobject or not values.flags.c_contiguous:
        return Array(values)
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(
            header, np.lib.format.header_data_from_array_1_0(values)
        )
    except ValueError:  # a header past 64 kB (a dtype of thousands of fields): version 2.0
        return Array(values)
    raw = values.reshape(-1).view(np.uint8).data  # the values' bytes, not a copy
    data = b"".join((header.getvalue(), raw))
    return Array(dtype=dtype_name(values.dtype), shape=tuple(values.shape),
                 stype=NUMPY_STYPE, data=data)  # fmt: skip


def tensor_views(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The arrays as tensors viewing their bytes, to be copied from: into a file
    (``torch.save``: a checkpoint of a 110M-parameter model needs no second copy of its
    442 MB) or into a model (``load_state_dict``, at a site). Never write into them: the
    bytes are the message's. An array in a byte order or layout torch cannot view is
    copied."""
    out = {}
    for key, array in arrays.items():
        view = array_view(array)
        if not (view.dtype.isnative and view.flags.c_contiguous):
            view = np.ascontiguousarray(view, dtype=view.dtype.newbyteorder("="))
        with warnings.catch_warnings():  # "The given NumPy array is not writable"
            warnings.simplefilter("ignore", UserWarning)
            out[key] = torch.from_numpy(view)
    return out


# the header NumPy writes for a plain array, e.g. {'descr': '<f4', 'fortran_order': False,
# 'shape': (16, 64), }: dict keys sorted, a shape tuple as Python writes it, space-padded
PLAIN_HEADER = re.compile(
    rb"\{'descr': '([<>|][a-z]\d{1,2})', 'fortran_order': (False|True), "
    rb"'shape': \((|\d+,|\d+(?:, \d+)+)\), \} *\n"
)


def _plain_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """Shape, Fortran order, dtype and data offset of a version 1 or 2 ``.npy`` header in
    the exact form NumPy writes for a plain array, read with one regular expression (NumPy's
    parser, ``ast.literal_eval``, takes ~50 us per tensor); None for anything else."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12 or data[6] not in (1, 2):
        return None
    size = 2 if data[6] == 1 else 4
    start = 8 + size
    end = start + int.from_bytes(data[8:start], "little")
    if end - start > 4096:  # no plain header is this long: NumPy's parser, which refuses it
        return None
    match = PLAIN_HEADER.fullmatch(data, start, end)
    if match is None:
        return None
    shape = tuple(int(n) for n in match[3].split(b",") if n.strip())
    return shape, match[2] == b"True", _dtype(match[1]), end


# a header's descr -> its dtype, a dtype -> its name: a handful per process; a site that
# sends many kinds gets them parsed each time, not a cache that grows
_KEEP = 64
# the kinds models are made of, known from the start: a site's odd kinds cannot crowd them out
_COMMON = ("<f4", "<f2", "<f8", "|i1", "|u1", "<i8", "<i4", "|b1")
_DTYPES: dict[bytes, np.dtype] = {c.encode(): np.dtype(c) for c in _COMMON}
_NAMES: dict[np.dtype, str] = {np.dtype(c): str(np.dtype(c)) for c in _COMMON}


def _dtype(descr: bytes) -> np.dtype:
    known = _DTYPES.get(descr)
    if known is None:
        known = np.dtype(descr.decode())
        if len(_DTYPES) < _KEEP:
            _DTYPES[descr] = known
    return known


def dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)``, as Flower's ``Array.dtype`` writes it (``"float32"``), remembered per
    dtype: NumPy builds the string anew each time, in Python (~10 us), once per tensor of
    every reply."""
    name = _NAMES.get(dtype)
    if name is None:
        name = str(dtype)
        if len(_NAMES) < _KEEP:
            _NAMES[dtype] = name
    return name


class RecordViews(Mapping[str, np.ndarray]):
    """A record's arrays as ``array_view``s, made when first read and again if the record
    is given another array under that key."""

    def __init__(self, record: ArrayRecord) -> None:
        self.record = record
        self._views: dict[str, tuple[Array, np.ndarray]] = {}  # key -> (array, its view)

    def __getitem__(self, key: str) -> np.ndarray:
        array = self.record[key]
        known = self._views.get(key)
        if known is None or known[0] is not array:
            known = self._views[key] = (array, array_view(array))
        return known[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)


R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord)


def records(content: RecordDict, kind: type[R]) -> dict[str, R]:
    """The records of one kind in a message's content.

    Use this on replies, not ``RecordDict.array_records`` and its siblings: those views
    form a reference cycle with the content, so a reply's tensors outlive it until the
    garbage collector runs, and a round holds several updates instead of one.
    """
    return {k: v for k, v in content.items() if isinstance(v, kind)}
