"""Checks on every update a site sends before it can touch the global model."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from common.array_views import array_view, records
from common.compression import CODE_DTYPE, PACKED, packed_sizes
from common.config import RunConfig
from common.keys import Compression, MetricKey, RecordKey
from server.folding import as_tensor
from server.reply_checks import MAX_CASES, count_problem, metrics_problem
from server.trust import ServerTrust

log = logging.getLogger("hepafed.progress")


def update_problem(
    reply: Message,
    reference: ArrayRecord,
    compression: str = Compression.NONE,
    declared: int | None = None,
    values: bool = True,
) -> str | None:
    """Why ``reply`` must not be aggregated, or None if it is acceptable.

    Checks: no error, exactly one weights ArrayRecord and one MetricRecord whose
    values are all finite numbers, the same tensor names and shapes as the global
    model, the dtype the round's ``compression`` sends (the global model's own
    without it), int8 block scales that fit their codes, finite values, and an
    example count that is a whole number from 1 to ``declared`` (the training cases
    the site declared when it joined; ``MAX_CASES`` when unknown). A larger count is
    rejected, not capped: it would buy the site more weight in the mean.

    ``values=False`` leaves out the finite check of the tensors' values (every other check
    stays): for a caller that hands the update to ``server.aggregation.RoundAggregator``,
    which checks every value in the same pass that folds it, so the bytes are read once.
    """
    if reply.has_error():
        return f"site reported an error: {reply.error.reason}"
    content = reply.content
    array_records = records(content, ArrayRecord)
    metric_records = records(content, MetricRecord)
    scales = array_records.get(RecordKey.SCALES)
    n_arrays = 1 + (scales is not None)
    if RecordKey.ARRAYS not in array_records or len(array_records) != n_arrays:
        return (
            f"expected the ArrayRecord {RecordKey.ARRAYS.value!r}"
            f"{' and its scales' if scales is not None else ''}, "
            f"got {sorted(array_records)}"
        )
    if len(metric_records) != 1:
        return f"expected one MetricRecord, got {len(metric_records)}"
    arrays = array_records[RecordKey.ARRAYS]
    metrics = next(iter(metric_records.values()))
    problem = metrics_problem(metrics)
    if problem is not None:
        return problem
    wants_scales = compression == Compression.INT8
    if wants_scales != (scales is not None):
        state = "missing" if wants_scales else "unexpected"
        return f"'{compression}' compression: block scales {state}"
    problem = (
        _weights_problem(arrays, reference, values)
        if compression == Compression.NONE
        else _packed_problem(arrays, scales, reference, compression, values)
    )
    if problem is not None:
        return problem
    key = MetricKey.NUM_EXAMPLES.value
    n = metrics.get(key)
    if isinstance(n, bool) or not isinstance(n, int | float) or not n > 0:
        return f"{key} = {n!r}: must be a positive number"
    if declared is None:
        return count_problem(key, n, MAX_CASES, minimum=1)
    name = f"the {declared} training case(s) the site declared when it joined"
    return count_problem(key, n, declared, minimum=1, limit_name=name)


def _weights_problem(arrays: ArrayRecord, reference: ArrayRecord, values: bool) -> str | None:
    """Float weights: the global model's names, shapes and dtypes, finite (``values``)."""
    if set(arrays) != set(reference):
        missing = sorted(set(reference) - set(arrays))[:3]
        extra = sorted(set(arrays) - set(reference))[:3]
        return f"tensor names differ from the global model (missing {missing}, extra {extra})"
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != ref.dtype:
            return (
                f"tensor {key!r} is {arr.dtype}{list(arr.shape)}, "
                f"expected {ref.dtype}{list(ref.shape)}"
            )
        if values and not _finite(array_view(arr)):
            return f"tensor {key!r} contains NaN or Inf"
    return None


def _packed_problem(
    arrays: ArrayRecord,
    scales: ArrayRecord | None,
    reference: ArrayRecord,
    compression: str,
    values: bool,
) -> str | None:
    """A compressed update (``common.compression``): one flat array of codes of the right
    dtype and length, finite (``values``); for int8 one flat array of float32 scales >= 0
    (always checked: they are small)."""
    n_codes, n_scales = packed_sizes([tuple(r.shape) for r in reference.values()], compression)
    dtype = str(CODE_DTYPE[compression])
    if set(arrays) != {PACKED}:
        return f"'{compression}' compression: expected one array {PACKED!r}, got {sorted(arrays)}"
    codes = arrays[PACKED]
    if codes.dtype != dtype or tuple(codes.shape) != (n_codes,):
        return (
            f"'{compression}' codes are {codes.dtype}{list(codes.shape)}, "
            f"expected {dtype}[{n_codes}] (every tensor of the global model, flat)"
        )
    if values and not _finite(array_view(codes)):
        return f"'{compression}' codes contain NaN or Inf"
    if scales is not None:
        if set(scales) != {PACKED}:
            return f"block scales: expected one array {PACKED!r}, got {sorted(scales)}"
        scale = array_view(scales[PACKED])
        if scale.dtype != np.float32 or scale.shape != (n_scales,):
            return (
                f"block scales are {scale.dtype}{list(scale.shape)}, expected float32[{n_scales}]"
            )
        if not _finite(scale) or (scale < 0).any():
            return "block scales must be finite and >= 0"
    return None


def screen_update(
    reply: Message,
    reference: ArrayRecord,
    cfg: RunConfig,
    trust: ServerTrust,
    site: str,
    server_round: int,
    model: str,
    digest: str,
    declared: int | None = None,
    compression: str | None = None,
    values: bool = True,
) -> str | None:
    """Every check one update passes before the server uses it, cheapest first: its
    structure, values and example count (``update_problem``; ``declared``: the site's
    training cases), its size, and its signature. ``compression`` defaults to the
    round's (``federation.compression``); a model trained whole at one site is sent
    uncompressed. This is the one screening chain for every update the server accepts,
    federated or trained alone; a reply it cannot even read is rejected, never raised.
    ``values=False``: the values' finite check is left to the aggregator's fold (see
    ``update_problem``)."""
    try:
        return (
            update_problem(
                reply,
                reference,
                cfg.federation.compression if compression is None else compression,
                declared,
                values,
            )
            or reply_size_problem(reply, cfg.trust.max_update_mb)
            or trust.update_problem(reply, site, server_round, model, reference, digest)
        )
    except Exception as e:  # a trust boundary: whatever the bytes are, the run goes on
        log.debug("update from %s could not be read", site, exc_info=True)
        return f"unreadable update: {type(e).__name__}: {e}"


MIN_SITES_FOR_NORMS = 3  # a robust z-score needs a median and a spread


def norm_rule_applies(max_z: float, n_sites: int) -> bool:
    """Whether the norm-outlier rule (``norm_outliers``) judges a round of ``n_sites``
    updates: it is on (``trust.norm-z`` > 0) and there are enough sites for a spread."""
    return max_z > 0 and n_sites >= MIN_SITES_FOR_NORMS


REPLY_OVERHEAD_BYTES = 16 * 2**20  # what a reply holds besides its tensors' bytes, at most


def reply_budget(cfg: RunConfig) -> int:
    """The bytes the server pulls of one reply before it stops (``server.pull``): the
    largest update ``trust.max-update-mb`` accepts, and ``REPLY_OVERHEAD_BYTES`` for the
    rest of a reply (its records' metadata, ``.npy`` headers, the packing index, which
    ``common.packing`` caps at 16 MB, and metrics). ``reply_size_problem`` still judges the
    update's exact size once it is in."""
    return int(cfg.trust.max_update_mb * 2**20) + REPLY_OVERHEAD_BYTES


def reply_size_problem(reply: Message, max_mb: float) -> str | None:
    """Why ``reply`` is too large to accept (its tensors' bytes), or None."""
    size = sum(
        len(array.data) for record in records(reply.content, ArrayRecord).values()
        for array in record.values()
    )  # fmt: skip
    if size > max_mb * 2**20:
        return f"update is {size / 2**20:.1f} MiB, over trust.max-update-mb = {max_mb:g}"
    return None


def norm_outliers(norms: Mapping[str, float], max_z: float, min_ratio: float) -> dict[str, str]:
    """Sites whose update norm is an outlier among ``norms``, with the reason.

    An outlier has a modified z-score ``0.6745 (x - median) / MAD`` above ``max_z``
    (Iglewicz & Hoaglin 1993, who recommend 3.5) *and* a norm at least
    ``min_ratio`` times the median: with a handful of sites the MAD can be tiny,
    and an honest site with more data (more local steps, a larger update) must not
    be thrown out for it. Only unusually large updates are flagged: a small one
    cannot dominate a mean. Needs at least ``MIN_SITES_FOR_NORMS`` sites; with
    ``max_z = 0`` the check is off.
    """
    if not norm_rule_applies(max_z, len(norms)):
        return {}
    values = np.array(list(norms.values()), dtype=np.float64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    out: dict[str, str] = {}
    for site, norm in norms.items():
        if not np.isfinite(norm):
            out[site] = "update norm is not finite"
            continue
        z = np.inf if mad == 0 else 0.6745 * (norm - median) / mad
        if z > max_z and norm >= min_ratio * median:
            out[site] = (
                f"update norm {norm:.4g} is an outlier (robust z = {z:.1f} > trust.norm-z = "
                f"{max_z:g}; {norm / median if median else np.inf:.1f}x the median {median:.4g})"
            )
    return out


def _finite(values: np.ndarray) -> bool:
    """Every value finite. Fast path: a float32 sum (vectorised, all threads) is finite
    whenever every term is (NaN and infinities propagate); only when it is not, the values
    are checked one by one, so an overflowing sum of finite values is not mistaken."""
    if not np.issubdtype(values.dtype, np.floating):
        return True
    fast = values.dtype in (np.float16, np.float32) and values.size
    if fast and bool(torch.isfinite(as_tensor(values).sum(dtype=torch.float32))):
        return True
    return bool(np.isfinite(values).all())
