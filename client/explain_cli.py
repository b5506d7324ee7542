"""``hepafed site explain``: Grad-CAM overlays of a run's model on a site's own cases.

For the site's clinicians, written into the site folder (``SITE_DIR/explanations/RUN/``
by default; 0700, every file 0600 and written atomically) and sent nowhere: one PNG per
case (the portal channel, or the first, with the map, the lesion mask's contour in white
and, where the case has one, the liver mask's in magenta), ``explanations.json`` (per
case: id, label, prediction, share of the map in the lesion and the lesion's share of the
image; share of the map in the liver outside the lesion and that region's share of the
image, null without a liver mask) and ``index.html`` (self-contained: relative images, no
script). The model is the run's final checkpoint (``RUN_DIR/checkpoint.pt``) built from
its ``config.json``; the maps are ``client.explain``'s. 2-D runs only.

The checkpoint is loaded with ``weights_only`` (it cannot run code). It carries no
signature of its own: the run's audit trail and report vouch for it by its hash
(``common.signing.state_hash``), which is printed and recorded here; ``--model-sha256``
refuses any other model. A run whose sites score another model than the checkpoint
(preprocessing, local-layer or test-time hooks; normalisation statistics kept local
under differential privacy) is refused rather than explained wrongly.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from client.explain import (
    UPSAMPLING,
    CamMaps,
    ExplainError,
    grad_cam,
    lesion_shares,
    liver_means,
    liver_shares,
    saliency_means,
)
from client.message_config import named_hooks
from common.config import RunConfig
from common.data import SplitTensors, load_split
from common.device import select_compute
from common.files import private_folder, write_atomic
from common.hooks import HookPoint, HookSet
from common.keys import GLOBAL_MODEL, LESION_CLASSES, PrivacyMode, Split, Task, classifies
from common.manifest import read_manifest
from common.models import build_model, model_name
from common.run_files import checkpoint_name, load_checkpoint, read_config
from common.signing import state_hash
from common.weights import load_arrays

EXPLANATIONS = "explanations"  # SITE_DIR/explanations/RUN: the default output folder
INDEX_HTML, INDEX_JSON = "index.html", "explanations.json"
FORMAT = "hepafed-explanations/1"
PNG = re.compile(r"\d{4}-.*\.png")  # the case images this command writes (and replaces)
FILE_MODE = 0o600
LESION_COLOUR, LIVER_COLOUR = "white", "magenta"  # the masks' contours on the figures


@dataclass(frozen=True)
class Explained:
    """What ``explain_site`` wrote: the folder, the number of cases, the model's hash."""

    folder: Path
    cases: int
    model_sha256: str


def run_config(run_dir: Path) -> RunConfig:
    """The run's config (``RUN_DIR/config.json``), refused when this command cannot explain
    it faithfully; caching off (no crops are written anywhere)."""
    flat = dict(read_config(run_dir)["config"])
    code = [h for h in named_hooks(flat) if ":" in h]
    if code:  # parsing the config would import it
        raise ExplainError(f"hooks.use names hook code {code}: site explain imports none")
    cfg = RunConfig.from_flat(flat).replace({"data.cache-dir": ""})
    if not classifies(cfg.task):
        raise ExplainError(f"task = {cfg.task!r}: Grad-CAM explains a classification task")
    if cfg.data.spatial_dims != 2:
        raise ExplainError(
            f"data.spatial-dims = {cfg.data.spatial_dims}: site explain draws 2-D cases only"
        )
    hooks = HookSet(cfg)
    changing = (HookPoint.PREPROCESS, HookPoint.SHARING, HookPoint.TEST_TIME)
    if any(hooks.at(p) for p in changing) or cfg.privacy.mode != PrivacyMode.NONE:
        raise ExplainError(
            f"hooks.use = {list(cfg.hooks.use)}, privacy.mode = {cfg.privacy.mode.value!r}: "
            "the sites score this model after preprocessing, local layers or statistics the "
            "checkpoint does not hold; site explain explains a checkpoint as it is"
        )
    return cfg


def load_model(run_dir: Path, cfg: RunConfig, expected_sha256: str = "") -> tuple[Any, str]:
    """The run's final model and its hash; ``ExplainError`` when ``expected_sha256`` is given
    and differs."""
    path = run_dir / checkpoint_name(GLOBAL_MODEL)
    if not path.is_file():
        raise ExplainError(f"{path}: no final checkpoint in the run folder")
    state = load_checkpoint(path)["model"]
    digest = state_hash(state)
    if expected_sha256 and digest != expected_sha256.lower():
        raise ExplainError(
            f"{path.name}: its model SHA-256 is {digest}, not --model-sha256 {expected_sha256}: "
            "not the model the run's report and audit trail vouch for"
        )
    model = build_model(cfg)
    load_arrays(model, ArrayRecord(dict(state)))
    return model.eval(), digest


def explain_site(
    site_dir: Path,
    run_dir: Path,
    split: str = Split.TEST.value,
    out: Path | None = None,
    max_cases: int | None = None,
    model_sha256: str = "",
    data_root: Path | None = None,
) -> Explained:
    """Write the explanations of ``run_dir``'s final model for ``split`` of ``site_dir``."""
    cfg = run_config(run_dir)
    model, digest = load_model(run_dir, cfg, model_sha256)
    manifest = read_manifest(site_dir, cfg.data.channels, cfg.task, data_root=data_root)
    data = load_split(manifest, split, cfg.data, cfg.task, manifest.name)
    if max_cases is not None:
        data = _first(data, max_cases)
    cams = grad_cam(model, data.images, cfg, select_compute(cfg.train.amp))
    maps, masks = cams.maps.numpy(), data.masks.numpy()
    share, area = lesion_shares(maps, masks)
    livers = None if data.livers is None else data.livers.numpy()
    nan = np.full(len(share), np.nan)
    liver, liver_area = (nan, nan) if livers is None else liver_shares(maps, masks, livers)
    folder = private_folder(out or private_folder(site_dir / EXPLANATIONS) / run_dir.resolve().name)
    channel = cfg.data.channels.index("portal") if "portal" in cfg.data.channels else 0
    cases = []
    for i, case_id in enumerate(data.case_ids):
        row = _case_row(i, case_id, data, cams, cfg.task, share[i], area[i])
        row |= _liver_row(liver[i], liver_area[i])
        row["title"] += _liver_title(row)
        image = data.images[i, channel].numpy()
        liver_mask = None if livers is None or np.isnan(livers[i]).any() else livers[i, 0]
        png = _figure(image, maps[i, 0], masks[i, 0], row["title"], liver_mask)
        write_atomic(folder / row["png"], png, mode=FILE_MODE)
        cases.append(row)
    for stale in folder.iterdir():  # case images of an earlier, longer explanation
        if PNG.fullmatch(stale.name) and stale.name not in {c["png"] for c in cases}:
            stale.unlink()
    doc = {
        "format": FORMAT,
        "run": run_dir.resolve().name,
        "model_sha256": digest,
        "task": cfg.task.value,
        "network": model_name(cfg),
        "split": split,
        "channel": cfg.data.channels[channel],
        "method": "Grad-CAM (monai.visualize.GradCAM), map clipped at 0, not rescaled",
        "target_layer": cams.layer,
        "explained_class": _explained_text(cfg.task),
        "coarse_map_size": list(cams.coarse_size),
        "input_size": list(data.images.shape[2:]),
        "upsampling": UPSAMPLING,
        "display": "radiological: the patient's right on the image's left, anterior at the top",
        "contours": {"lesion": LESION_COLOUR, "liver": LIVER_COLOUR},
        "summary": _summary(share, area, liver, liver_area),
        "cases": [{k: v for k, v in c.items() if k != "title"} for c in cases],
    }
    write_atomic(folder / INDEX_JSON, json.dumps(doc, indent=1) + "\n", mode=FILE_MODE)
    write_atomic(folder / INDEX_HTML, render_index(doc), mode=FILE_MODE)
    return Explained(folder, len(cases), digest)


def render_index(doc: dict[str, Any]) -> str:
    """``index.html`` from the ``explanations.json`` document (Jinja2, autoescaped)."""
    from jinja2 import Environment, StrictUndefined

    text = files("client").joinpath("templates/explanations.html.j2").read_text("utf-8")
    env = Environment(autoescape=True, undefined=StrictUndefined)
    return env.from_string(text).render(doc=doc, percent=_percent)


# ---- internals ---------------------------------------------------------------------------


def _first(data: SplitTensors, n: int) -> SplitTensors:
    livers = None if data.livers is None else data.livers[:n]
    return SplitTensors(
        data.images[:n], data.masks[:n], data.labels[:n], data.case_ids[:n], livers=livers
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _explained_text(task: str) -> str:
    if task == Task.LESION_TYPE:
        return "the predicted lesion type (argmax of the softmax)"
    return "malignant (the single logit, class index 0)"


def _class_name(task: str, k: int) -> str:
    return LESION_CLASSES[k] if task == Task.LESION_TYPE else "malignant"


def _label_text(task: str, label: float) -> str:
    if not np.isfinite(label):
        return "none"
    if task == Task.LESION_TYPE:
        return LESION_CLASSES[int(label)]
    return "malignant" if label >= 0.5 else "benign"


def _case_row(
    i: int, case_id: str, data: SplitTensors, cams: CamMaps, task: str, share: float, area: float
) -> dict[str, Any]:
    """One case of ``explanations.json`` (and its figure's title and file name)."""
    label = float(data.labels[i])
    explained = _class_name(task, cams.classes[i])
    p = float(cams.probability[i])
    lesion = float(share) if np.isfinite(share) else None
    return {
        "case_id": case_id,
        "png": f"{i:04d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', case_id)[:80]}.png",
        "label": _label_text(task, label),
        "explained_class": explained,
        "probability": p,
        "saliency_lesion": lesion,
        "lesion_share": float(area),
        "title": f"{case_id}   label: {_label_text(task, label)}   P({explained}) = {p:.2f}\n"
        f"Grad-CAM in the lesion {_percent(lesion)} (lesion: {_percent(float(area))} of image)",
    }


def _liver_row(share: float, area: float) -> dict[str, Any]:
    """A case's share of the map in the liver outside the lesion and that region's share of
    the image; both None for a case without a liver mask (the share also for a map or a
    lesion mask that gives no lesion share)."""
    return {
        "saliency_liver": float(share) if np.isfinite(share) else None,
        "liver_share": float(area) if np.isfinite(area) else None,
    }


def _liver_title(row: dict[str, Any]) -> str:
    if row["liver_share"] is None:
        return "\nno liver mask"
    return (
        f"\nin the liver outside it {_percent(row['saliency_liver'])} "
        f"(that region: {_percent(row['liver_share'])} of image)"
    )


def _summary(
    share: np.ndarray, area: np.ndarray, liver: np.ndarray, liver_area: np.ndarray
) -> dict[str, Any]:
    """The means a site may send (``client.explain.saliency_means`` and ``liver_means``),
    here for every case."""
    empty = {
        "saliency_lesion": None,
        "saliency_chance": None,
        "saliency_n": 0,
        "saliency_liver": None,
        "saliency_liver_chance": None,
        "saliency_liver_n": 0,
    }
    means = {**saliency_means(share, area, min_cell=1), **liver_means(liver, liver_area, 1)}
    return {**empty, **means, "cases": len(share)}


def _figure(
    image: np.ndarray, cam: np.ndarray, mask: np.ndarray, title: str, liver: np.ndarray | None
) -> bytes:
    """A PNG: the image in grey, the map (relative to the case's maximum) over it, the lesion
    mask's contour (white) and the liver mask's (magenta, where the case has one), named in
    a legend; arrays (X, Y) in RA orientation, drawn radiologically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    def shown(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=float)[::-1, ::-1].T  # rows anterior first, patient right left

    fig = Figure(figsize=(5.0, 5.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(shown(image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    peak = float(cam.max())
    heat = ax.imshow(shown(cam / peak if peak > 0 else cam), cmap="jet", alpha=0.4, vmin=0, vmax=1)
    drawn = []
    for name, region, colour in (("lesion", mask, LESION_COLOUR), ("liver", liver, LIVER_COLOUR)):
        if region is not None and region.any() and not region.all():
            ax.contour(shown(region), levels=[0.5], colors=colour, linewidths=1.2)
            drawn.append(Line2D([], [], color=colour, linewidth=1.2, label=f"{name} mask"))
    if drawn:
        legend = ax.legend(handles=drawn, loc="lower right", fontsize=7, framealpha=0.6)
        legend.get_frame().set_facecolor("black")
        for label in legend.get_texts():
            label.set_color("white")
    fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.04, label="Grad-CAM / case maximum")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
