"""Checks on every update a site sends before it can touch the global model."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from common.keys import MetricKey


def update_problem(reply: Message, reference: ArrayRecord) -> str | None:
    """Why ``reply`` must not be aggregated, or None if it is acceptable.

    Checks: no error, exactly one ArrayRecord and one MetricRecord, the same
    tensor names, shapes and dtypes as the global model, finite values, and a
    positive example count.
    """
    if reply.has_error():
        return f"site reported an error: {reply.error.reason}"
    content = reply.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return (
            f"expected one ArrayRecord and one MetricRecord, got "
            f"{len(content.array_records)} and {len(content.metric_records)}"
        )
    arrays = next(iter(content.array_records.values()))
    metrics = next(iter(content.metric_records.values()))
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
        if not np.isfinite(arr.numpy()).all():
            return f"tensor {key!r} contains NaN or Inf"
    n = metrics.get(MetricKey.NUM_EXAMPLES.value)
    if not isinstance(n, int | float) or not n > 0:
        return f"{MetricKey.NUM_EXAMPLES.value} = {n!r}: must be a positive number"
    return None
