"""What one site costs per round: its training throughput and the bytes of its update.

``client_throughput``: images/s of hepafed's ``train_local`` and of the whole
ClientApp job (``site_train``: data from the cache, model, training) against
``plain_train``, a plain PyTorch loop on the same model, tensors and settings
(augmentation off, as the plain loop has none); repeated, after one warm-up.

``update_bytes``: bytes of the update one site sends for the default model, as
Flower serialises it, uncompressed and with fp16 and int8 compression.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from simulations.bench_measure import spread

# ---- client training throughput ----------------------------------------------------------


def plain_train(model: Any, images: Any, masks: Any, labels: Any, cfg: Any, epochs: int) -> int:
    """A plain PyTorch training loop (what a Flower tutorial's ClientApp does): the images
    trained on."""
    import torch

    from common.tasks import loss_function, targets

    model.train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    criterion = loss_function(cfg.task)
    generator = torch.Generator().manual_seed(cfg.seed)
    bs, seen = cfg.train.batch_size, 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for lo in range(0, len(images), bs):
            idx = order[lo : lo + bs]
            if len(idx) < 2:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images[idx]), targets(cfg.task, labels[idx], masks[idx]))
            loss.backward()
            optimizer.step()
            seen += len(idx)
    return seen


def client_throughput(cfg: Any, site_dir: Path, repeats: int) -> dict[str, Any]:
    """images/s of a plain loop, of ``train_local`` and of the whole ``site_train`` job."""
    from client.site import open_site, site_train
    from client.trainer import train_local
    from common.device import select_compute
    from common.keys import Split
    from common.models import build_model
    from common.weights import to_arrays

    cfg = cfg.replace({"data.augment": False})  # the plain loop has no augmentation
    compute = select_compute(cfg.train.amp)
    site = open_site({"site-dir": str(site_dir)}, cfg)
    data = site.split(Split.TRAIN, cfg)  # warms the preprocessing cache
    epochs = cfg.train.local_epochs
    plain, loop, job = [], [], []
    plain_train(build_model(cfg), data.images, data.masks, data.labels, cfg, 1)  # warm-up
    for r in range(repeats):
        model = build_model(cfg)
        t = time.perf_counter()
        seen = plain_train(model, data.images, data.masks, data.labels, cfg, epochs)
        plain.append(seen / (time.perf_counter() - t))
        model = build_model(cfg)
        result = train_local(model, data, cfg, compute, seed=cfg.seed + r)
        loop.append(result.num_examples / result.seconds)
        received = to_arrays(build_model(cfg))  # the weights as the message brings them
        t = time.perf_counter()
        site_train(site, received, cfg, r + 1, compute)
        job.append(result.num_examples / (time.perf_counter() - t))
    return {
        "site": site.name,
        "cases": len(data),
        "epochs": epochs,
        "batch_size": cfg.train.batch_size,
        "augment": cfg.data.augment,
        "device": str(compute.device),
        "amp": compute.uses_amp,
        "plain_images_per_s": spread(plain),
        "train_local_images_per_s": spread(loop),
        "site_train_images_per_s": spread(job),
    }


# ---- bytes per round ------------------------------------------------------------------------


def update_bytes(cfg: Any) -> list[dict[str, Any]]:
    """Bytes of one site's update for the default model, per compression."""
    from flwr.app import Array

    from common.compression import compress_update, pack
    from common.keys import Compression
    from common.models import build_model
    from common.weights import shared_state

    received = {k: v.numpy() for k, v in shared_state(build_model(cfg)).items()}
    rng = np.random.default_rng(0)
    trained = {
        k: v + rng.normal(scale=1e-3, size=v.shape).astype(np.float32) for k, v in received.items()
    }
    plain = sum(len(Array(v).data) for v in trained.values())
    rows = [{"compression": "none", "bytes": plain, "ratio": 1.0}]
    for method in (Compression.FP16, Compression.INT8):
        codes, scales, _ = compress_update(trained, received, method)
        flat, flat_scales = pack(codes, scales, list(received))  # what the ClientApp sends
        n = len(Array(flat).data) + (0 if flat_scales is None else len(Array(flat_scales).data))
        rows.append({"compression": method.value, "bytes": n, "ratio": n / plain})
    return rows
