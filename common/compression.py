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

The server decodes an update tensor by tensor while it aggregates
(``server.aggregation``): ``global + decode(codes, scales)`` is the site's model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.keys import Compression

BLOCK = 1024  # int8: values per scale; 4 bytes of scale per 1024 codes
INT8_MAX = 127

CODE_DTYPE: dict[str, np.dtype] = {
    Compression.NONE: np.dtype(np.float32),
    Compression.FP16: np.dtype(np.float16),
    Compression.INT8: np.dtype(np.int8),
}


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
