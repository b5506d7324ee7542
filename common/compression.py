"""Update compression: what a site sends back after a federated round.

With ``federation.compression = "none"`` a site sends its trained weights as
float32, as every Flower app does. With ``fp16`` or ``int8`` it sends the
*update* (trained weights minus the global weights it received) encoded:

- ``fp16``: the update in half precision (half the bytes);
- ``int8``: the update quantised to signed bytes in blocks of ``BLOCK``
  values, each block scaled by its own largest magnitude (``max|x| / 127``,
  round to nearest); the float32 block scales travel beside the codes
  (a quarter of the bytes, plus 0.1 %).

Both use **error feedback** (Seide et al., 2014, "1-bit SGD"; Karimireddy et
al., 2019, "Error feedback fixes SignSGD"): what the encoding lost in one round
is kept at the site and added to the next round's update before encoding, so
quantisation errors do not accumulate in the global model.

On the wire the codes of all tensors travel as one flat array (``PACKED``), in
the order of the global model's tensors, and for int8 the block scales as
another (each tensor has its own blocks): two ``.npy`` headers per update
instead of one per tensor, so the bytes are really a half or a quarter. The
server decodes tensor by tensor while it aggregates (``server.aggregation``):
``global + decode(codes, scales)`` is the site's model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from common.keys import Compression

BLOCK = 1024  # int8: values per scale; 4 bytes of scale per 1024 codes
INT8_MAX = 127

CODE_DTYPE: dict[str, np.dtype] = {
    Compression.NONE: np.dtype(np.float32),
    Compression.FP16: np.dtype(np.float16),
    Compression.INT8: np.dtype(np.int8),
}


PACKED = "hepafed.update"  # the one key of a compressed update's ArrayRecord (and its scales)


class CompressionError(ValueError):
    """An encoded update is inconsistent (wrong dtype, missing or mis-sized scales)."""


def n_blocks(size: int) -> int:
    return -(-size // BLOCK)


def encode(update: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``update`` (float32) as codes of the same shape and, for int8, its block scales."""
    values = np.ascontiguousarray(update, dtype=np.float32)
    if method == Compression.FP16:
        return values.astype(np.float16), None
    if method != Compression.INT8:
        raise CompressionError(f"unknown compression {method!r}")
    flat = values.reshape(-1)
    pad = n_blocks(flat.size) * BLOCK - flat.size
    blocks = np.pad(flat, (0, pad)).reshape(-1, BLOCK)
    scales = np.abs(blocks).max(axis=1) / INT8_MAX
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.clip(np.rint(blocks / safe[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes.reshape(-1)[: flat.size].reshape(values.shape), scales.astype(np.float32)


def decode(codes: np.ndarray, scales: np.ndarray | None, method: str) -> np.ndarray:
    """The float32 update that ``codes`` (and ``scales``) stand for."""
    if codes.dtype != CODE_DTYPE.get(method):
        raise CompressionError(
            f"codes are {codes.dtype}, {method!r} compression sends {CODE_DTYPE.get(method)}"
        )
    if method == Compression.FP16:
        return codes.astype(np.float32)
    if scales is None or scales.dtype != np.float32 or scales.shape != (n_blocks(codes.size),):
        got = None if scales is None else f"{scales.dtype}{list(scales.shape)}"
        raise CompressionError(
            f"int8 codes of {codes.size} values need float32[{n_blocks(codes.size)}] "
            f"block scales, got {got}"
        )
    if not np.isfinite(scales).all() or (scales < 0).any():
        raise CompressionError("int8 block scales must be finite and >= 0")
    flat = codes.reshape(-1)
    out = np.empty(flat.size, dtype=np.float32)
    full = flat.size // BLOCK * BLOCK
    np.multiply(
        flat[:full].reshape(-1, BLOCK),
        scales[: full // BLOCK, None],
        out=out[:full].reshape(-1, BLOCK),
    )
    if full < flat.size:
        np.multiply(flat[full:], scales[-1], out=out[full:])
    return out.reshape(codes.shape)


def compress_update(
    trained: Mapping[str, np.ndarray],
    received: Mapping[str, np.ndarray],
    method: str,
    residual: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Encode ``trained - received`` (+ the carried ``residual``) per tensor.

    Returns the codes, the int8 block scales (empty for fp16) and the new
    residual: what this encoding lost, to be added next round (error feedback).
    """
    codes: dict[str, np.ndarray] = {}
    scales: dict[str, np.ndarray] = {}
    carry: dict[str, np.ndarray] = {}
    for key, weights in trained.items():
        update = np.asarray(weights, dtype=np.float32) - np.asarray(received[key], np.float32)
        if residual is not None and key in residual:
            update = update + residual[key]
        code, scale = encode(update, method)
        codes[key] = code
        if scale is not None:
            scales[key] = scale
        carry[key] = update - decode(code, scale, method)
    return codes, scales, carry


def pack(
    codes: Mapping[str, np.ndarray], scales: Mapping[str, np.ndarray], order: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The codes of every tensor in ``order`` as one flat array, and their scales as another
    (None without scales)."""
    flat = np.concatenate([codes[k].reshape(-1) for k in order]) if order else np.zeros(0)
    if not scales:
        return flat, None
    return flat, np.concatenate([scales[k] for k in order]).astype(np.float32, copy=False)


def packed_sizes(shapes: Sequence[tuple[int, ...]], method: str) -> tuple[int, int]:
    """How many codes and block scales an update of tensors of ``shapes`` carries."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    blocks = sum(n_blocks(n) for n in sizes) if method == Compression.INT8 else 0
    return sum(sizes), blocks


def unpack(
    flat: np.ndarray,
    scales: np.ndarray | None,
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    method: str,
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, decoded float32 update) per tensor of ``shapes`` (views into ``flat`` until
    decoded); sizes are checked by the server's validation first."""
    offset = block = 0
    for key, shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        codes = flat[offset : offset + size].reshape(shape)
        part = None
        if scales is not None:
            part = scales[block : block + n_blocks(size)]
            block += n_blocks(size)
        offset += size
        yield key, decode(codes, part, method)
