"""The site's policy: what this hospital lets leave it and what it agrees to run.

A deployed site's protections are its own, set under ``[policy]`` in its
``node-config.toml`` (written by ``hepafed site init``; Flower flattens the table
to ``policy.*`` node-config keys) and enforced by the ClientApp whatever the run
config asks: signed models, a privacy floor and budget (with a ledger kept in the
site's ``state-dir`` across runs), minimum counts and the small-cell rule
(``min-cell``), caps on every summary's size, whether Grad-CAM saliency shares may
leave (``saliency``), resource limits, where patient crops are cached, and which hook
code may be imported. A request beyond the policy is a
``PolicyRefusal`` naming the run-config key, the value asked and the site's limit.

A simulated site (no ``site-dir`` in its node config) gets ``simulated_policy``:
one that matches the run, with its state in the run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from client.message_config import named_hooks, run_config
from common.config import ConfigError, RunConfig
from common.files import private_folder as private_folder  # re-exported (client.site, ledger)
from common.files import restrict_tree as restrict_tree
from common.keys import RECALIBRATION_LIMIT, NodeKey, PrivacyMode, RecordKey, choices, classifies

log = logging.getLogger(__name__)

PREFIX = "policy."  # node-config keys of the policy (the [policy] table of node-config.toml)
ANY_HOOK = "*"  # allowed-hooks entry that lets the run name any importable hook
LEDGER_FILE = "dp-ledger.json"
SIMULATED_STATE = "site-state"  # under the run folder: one sub-folder per simulated site
# privacy modes from least to most protective for the site (a floor compares ranks)
PRIVACY_RANK = {
    PrivacyMode.NONE.value: 0,
    PrivacyMode.CENTRAL.value: 1,
    PrivacyMode.CENTRAL_CLIENT_CLIP.value: 2,
    PrivacyMode.LOCAL.value: 3,
}
BYTES_PER_VOXEL = 4  # float32 tensors


class PolicyError(ValueError):
    """The site's policy itself is malformed: an unknown key or a bad value."""


class PolicyRefusal(RuntimeError):
    """The run asks for something beyond this site's policy; the site does not do it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "refused by this site's policy: "
            + "; ".join(problems)
            + ". Change the run config, or ask the site to change its node-config [policy]"
        )


@dataclass(frozen=True)
class SitePolicy:
    """A site's protections; every default is here (``hepafed site init`` writes them)."""

    require_signed_models: bool = True  # refuse a model without the server's valid signature
    min_privacy_mode: str = PrivacyMode.NONE.value  # floor: none < central < c-c-clip < local
    min_noise_multiplier: float = 0.0  # floor of privacy.noise-multiplier under any DP mode
    max_delta: float = 1e-5  # ceiling of privacy.delta under any DP mode
    max_epsilon: float = 0.0  # the site's own local-DP budget across all runs; 0: none
    min_cases: int = 20  # floor of eval.min-cases
    min_per_class: int = 5  # floor of eval.min-per-class
    min_cell: int = 5  # k: no bin, cell or category with fewer cases leaves the site
    max_thresholds: int = 5  # ceiling of len(eval.thresholds) (and test cases / min-cell)
    max_calibration_bins: int = 10
    max_roc_points: int = 51
    max_histogram_bins: int = 32
    max_embedding_dims: int = 8
    max_roi_size: int = 128  # ceiling of data.roi-size
    # a recalibration (eval.recalibration = a, b) only with 1/m <= b <= m and |a| <= m; 0: none.
    # A steep map would turn the recalibrated sums into 2x2 tables at any threshold
    max_recalibration: float = RECALIBRATION_LIMIT
    saliency: bool = True  # send eval.saliency's Grad-CAM shares (means over >= min-cell cases)
    # monitoring answers whole calendar months only: two windows that overlap could be
    # differenced down to a case; true also answers days and ranges (client.monitor_site)
    monitor_any_window: bool = False
    max_memory_mb: float = 8192.0  # ceiling of the estimated size of the site's loaded tensors
    state_dir: str = ""  # the site's own folder for state kept across runs (the DP ledger)
    cache_dir: str = ""  # where this site caches preprocessed crops; "": nowhere
    data_root: str = ""  # a folder outside the site folder that manifest paths may lead to
    dicomweb_secrets: str = ""  # the 0600 file naming the site's PACS (common.dicomweb_secrets)
    allowed_hooks: tuple[str, ...] = ()  # 'module:Class' hooks the site imports ("*": any)

    def __post_init__(self) -> None:
        if self.min_privacy_mode not in PRIVACY_RANK:
            raise PolicyError(
                f"policy.min-privacy-mode = {self.min_privacy_mode!r}: must be one of "
                f"{choices(PrivacyMode)}"
            )
        at_least = {
            "min-cases": (self.min_cases, 1),
            "min-per-class": (self.min_per_class, 1),
            "min-cell": (self.min_cell, 1),
            "max-thresholds": (self.max_thresholds, 1),
            "max-calibration-bins": (self.max_calibration_bins, 2),
            "max-roc-points": (self.max_roc_points, 2),
            "max-histogram-bins": (self.max_histogram_bins, 2),
            "max-embedding-dims": (self.max_embedding_dims, 0),
            "max-roi-size": (self.max_roi_size, 1),
        }
        for key, (value, low) in at_least.items():
            if value < low:
                raise PolicyError(f"{PREFIX}{key} = {value!r}: must be >= {low}")
        if self.min_noise_multiplier < 0 or self.max_epsilon < 0 or self.max_memory_mb <= 0:
            raise PolicyError(
                f"{PREFIX}min-noise-multiplier = {self.min_noise_multiplier!r} and "
                f"{PREFIX}max-epsilon = {self.max_epsilon!r} must be >= 0, "
                f"{PREFIX}max-memory-mb = {self.max_memory_mb!r} > 0"
            )
        if self.max_recalibration != 0 and self.max_recalibration < 1:
            raise PolicyError(
                f"{PREFIX}max-recalibration = {self.max_recalibration!r}: 0 (never) or >= 1"
            )
        if not 0.0 < self.max_delta < 1.0:
            raise PolicyError(f"{PREFIX}max-delta = {self.max_delta!r}: must be in (0, 1)")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SitePolicy:
        """The ``policy.*`` keys of a node config (defaults for the rest); the node config's
        top-level ``allowed-hooks`` counts as ``policy.allowed-hooks``."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        legacy = node_config.get(NodeKey.ALLOWED_HOOKS.value)
        if legacy is not None:
            values["allowed_hooks"] = _hooks(str(legacy))
        for key, value in node_config.items():
            if not key.startswith(PREFIX):
                continue
            attr = key[len(PREFIX) :].replace("-", "_")
            if attr not in types:
                valid = ", ".join(PREFIX + f.name.replace("_", "-") for f in fields(cls))
                raise PolicyError(f"unknown node-config key {key!r}; valid policy keys: {valid}")
            values[attr] = _coerce(key, value, str(types[attr]))
        return cls(**values)

    def to_node_config(self) -> dict[str, bool | int | float | str]:
        """The flat ``policy.*`` node-config entries of this policy (``from_node_config``'s
        inverse)."""
        out: dict[str, bool | int | float | str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[PREFIX + f.name.replace("_", "-")] = (
                ",".join(value) if isinstance(value, tuple) else value
            )
        return out

    # ---- what the run asks ----------------------------------------------------------------

    def request_problems(self, cfg: RunConfig) -> list[str]:
        """Every way the run config asks for more than this policy allows (empty: none)."""
        problems = []
        if self.require_signed_models and not cfg.trust.sign_updates:
            problems.append(
                "trust.sign-updates = false: this site accepts only models signed by the "
                "server (policy.require-signed-models = true)"
            )
        p = cfg.privacy
        if PRIVACY_RANK[p.mode] < PRIVACY_RANK[self.min_privacy_mode]:
            problems.append(
                f"privacy.mode = {p.mode.value!r}: below this site's floor policy.min-privacy-mode "
                f"= {self.min_privacy_mode!r}"
            )
        if p.mode != PrivacyMode.NONE and p.noise_multiplier < self.min_noise_multiplier:
            problems.append(_limit("privacy.noise-multiplier", p.noise_multiplier,
                                   "min-noise-multiplier", self.min_noise_multiplier))  # fmt: skip
        if p.mode != PrivacyMode.NONE and p.delta > self.max_delta:
            problems.append(_limit("privacy.delta", p.delta, "max-delta", self.max_delta))
        ev = cfg.eval
        floors = {
            "eval.min-cases": (ev.min_cases, "min-cases", self.min_cases),
            "eval.min-per-class": (ev.min_per_class, "min-per-class", self.min_per_class),
        }
        problems += [_limit(k, v, pk, lim) for k, (v, pk, lim) in floors.items() if v < lim]
        ceilings = {
            "eval.thresholds": (len(ev.thresholds), "max-thresholds", self.max_thresholds),
            "eval.calibration-bins": (
                ev.calibration_bins, "max-calibration-bins", self.max_calibration_bins),
            "eval.roc-points": (ev.roc_points, "max-roc-points", self.max_roc_points),
            "eval.histogram-bins": (
                ev.histogram_bins, "max-histogram-bins", self.max_histogram_bins),
            "eval.embedding-dims": (
                ev.embedding_dims, "max-embedding-dims", self.max_embedding_dims),
            "data.roi-size": (cfg.data.roi_size, "max-roi-size", self.max_roi_size),
        }  # fmt: skip
        problems += [_limit(k, v, pk, lim) for k, (v, pk, lim) in ceilings.items() if v > lim]
        problems += self.recalibration_problems(ev.recalibration)
        if ev.saliency and not self.saliency and classifies(cfg.task):
            problems.append(
                "eval.saliency = true: this site sends no Grad-CAM saliency shares "
                f"({PREFIX}saliency = false); run with eval.saliency = false"
            )
        problems += self.hook_problems(cfg.hooks.use)
        return problems

    def recalibration_problems(self, recal: tuple[float, ...]) -> list[str]:
        """A recalibration map steeper, flatter or more shifted than this site reports on."""
        if not recal:
            return []
        a, b = recal
        m = self.max_recalibration
        if m == 0 or not (1 / m <= b <= m and abs(a) <= m):
            allowed = "none" if m == 0 else f"1/{m:g} <= b <= {m:g} and |a| <= {m:g}"
            return [
                f"eval.recalibration = ({a:g}, {b:g}): this site reports calibration after a "
                f"recalibration only with {allowed} ({PREFIX}max-recalibration)"
            ]
        return []

    def check_request(self, cfg: RunConfig) -> None:
        """Raise ``PolicyRefusal`` when the run config asks for more than this policy allows."""
        problems = self.request_problems(cfg)
        if problems:
            raise PolicyRefusal(problems)

    def hook_problems(self, hooks: tuple[str, ...] | list[str]) -> list[str]:
        """Hooks named by import path that this site does not agree to import."""
        if ANY_HOOK in self.allowed_hooks:
            return []
        refused = [h for h in hooks if ":" in h and h not in self.allowed_hooks]
        if not refused:
            return []
        return [
            f"hooks.use asks this site to import hook code {refused}; it imports only built-in "
            f"hooks and those in policy.allowed-hooks = {','.join(self.allowed_hooks)!r}"
        ]

    def check_resources(self, cfg: RunConfig, n_cases: int) -> None:
        """Refuse a run whose crops of ``n_cases`` cases would need more memory than allowed."""
        mb = tensor_megabytes(cfg, n_cases)
        if mb > self.max_memory_mb:
            raise PolicyRefusal(
                [
                    f"data.roi-size = {cfg.data.roi_size} (data.spatial-dims = "
                    f"{cfg.data.spatial_dims}, {len(cfg.data.channels)} channel(s)) needs about "
                    f"{mb:.0f} MB for this site's {n_cases} cases; this site's limit is "
                    f"policy.max-memory-mb = {self.max_memory_mb:g}"
                ]
            )

    def check_split(self, cfg: RunConfig, n: int) -> None:
        """Differencing guard: no more 2x2 tables than ``n // min-cell`` for ``n`` cases (a
        split under ``eval.min-cases`` reports counts only, and passes)."""
        most = max(1, n // self.min_cell)
        # calibration after a recalibration counts as one table more: another sum per group
        asked = len(cfg.eval.thresholds) + (1 if cfg.eval.recalibration else 0)
        if n >= cfg.eval.min_cases and asked > most:
            raise PolicyRefusal(
                [
                    f"eval.thresholds (and a recalibration) ask for {asked} tables; with {n} "
                    f"cases and policy.min-cell = {self.min_cell} this site reports at most "
                    f"{most} (cases / min-cell)"
                ]
            )

    # ---- what the site does itself --------------------------------------------------------

    def apply(self, cfg: RunConfig) -> RunConfig:
        """The run config as this site runs it: its own cache folder, whatever the server said."""
        if cfg.data.cache_dir != self.cache_dir:
            if cfg.data.cache_dir:
                log.info("data.cache-dir %r ignored: this site caches in policy.cache-dir %r",
                         cfg.data.cache_dir, self.cache_dir)  # fmt: skip
            cfg = cfg.replace({"data.cache-dir": self.cache_dir})
        return cfg

    def ledger_path(self) -> Path | None:
        """Where this site keeps its local-DP ledger (None: no state folder)."""
        return Path(self.state_dir) / LEDGER_FILE if self.state_dir else None


def is_deployed(node_config: Mapping[str, Any]) -> bool:
    """Whether this node is a deployed site (its node config names its ``site-dir``) rather
    than a simulated one: its policy, and where it keeps state, are then its own."""
    return NodeKey.SITE_DIR.value in node_config


def site_policy(node_config: Mapping[str, Any], run_flat: Mapping[str, Any]) -> SitePolicy:
    """This node's policy: its node config's at a deployed site (``site-dir`` set), else one
    matching the run (``simulated_policy``)."""
    if is_deployed(node_config):
        return SitePolicy.from_node_config(node_config)
    cfg = run_config(run_flat)
    return simulated_policy(cfg, str(node_config.get(NodeKey.PARTITION_ID.value, "")))


def simulated_policy(cfg: RunConfig, node: str = "") -> SitePolicy:
    """A simulated site's policy: the run's own asks (the simulation's user is both server
    and hospital) with the default ``min-cell``, any hook, the run's cache folder, and its
    state (the DP ledger) in ``RUN_DIR/site-state/node-<partition-id>``; a node without a
    partition id (a test's bare Context) keeps no state on disk."""
    d, ev = SitePolicy(), cfg.eval
    state = Path(cfg.output.run_dir) / SIMULATED_STATE / f"node-{node}" if node else ""
    return SitePolicy(
        require_signed_models=cfg.trust.sign_updates,
        max_delta=max(d.max_delta, cfg.privacy.delta),
        min_cases=min(d.min_cases, ev.min_cases),
        min_per_class=min(d.min_per_class, ev.min_per_class),
        min_cell=min(d.min_cell, ev.min_per_class),
        max_thresholds=max(d.max_thresholds, len(ev.thresholds)),
        max_calibration_bins=max(d.max_calibration_bins, ev.calibration_bins),
        max_roc_points=max(d.max_roc_points, ev.roc_points),
        max_histogram_bins=max(d.max_histogram_bins, ev.histogram_bins),
        max_embedding_dims=max(d.max_embedding_dims, ev.embedding_dims),
        max_roi_size=max(d.max_roi_size, cfg.data.roi_size),
        max_memory_mb=float("inf"),
        state_dir=str(state),
        cache_dir=cfg.data.cache_dir,
        allowed_hooks=(ANY_HOOK,),
    )


def tensor_megabytes(cfg: RunConfig, n_cases: int) -> float:
    """Estimated size of ``n_cases`` preprocessed cases (channels + mask, float32), in MB."""
    from common.preprocess import crop_size  # torch and MONAI: not for `hepafed site init`

    voxels = 1
    for side in crop_size(cfg.data, cfg.task):
        voxels *= side
    return n_cases * (len(cfg.data.channels) + 1) * voxels * BYTES_PER_VOXEL / 2**20


def policy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Refuse, before any work, a request beyond this site's policy (an error reply that
    names the key, the value asked and the limit); a refusal raised while working too.

    Every message is checked for hook code the site did not allow (before the run config
    is parsed: parsing imports the hooks it names); training and evaluation messages for
    everything else. A site query (who the site is) is answered under any run config.
    """
    config = msg.content.get(RecordKey.CONFIG)
    if not isinstance(config, ConfigRecord):
        return call_next(msg, context)
    flat = dict(config)
    try:
        if is_deployed(context.node_config):
            # before anything parses the run config, which imports the hooks it names
            named = named_hooks(flat)
            problems = SitePolicy.from_node_config(context.node_config).hook_problems(named)
            if problems:
                raise PolicyRefusal(problems)
        policy = site_policy(context.node_config, flat)
        if msg.metadata.message_type.split(".")[0] in (MessageType.TRAIN, MessageType.EVALUATE):
            policy.check_request(run_config(flat))
        return call_next(msg, context)
    except (PolicyRefusal, PolicyError, ConfigError) as e:
        log.error("policy_mod: %s", e)
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=str(e)), reply_to=msg)


# ---- internals ---------------------------------------------------------------------------


def _limit(key: str, asked: object, policy_key: str, limit: object) -> str:
    return f"{key} = {asked!r}: this site's limit is {PREFIX}{policy_key} = {limit!r}"


def _hooks(text: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in text.split(",") if h.strip())


def _coerce(key: str, value: Any, kind: str) -> Any:
    """A node-config value checked against the policy field's type (ints widen to floats)."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind.startswith("tuple") and isinstance(value, str):
        return _hooks(value)
    expected = "a comma-separated string" if kind.startswith("tuple") else kind
    raise PolicyError(f"node-config {key} = {value!r}: expected {expected}, got "
                      f"{type(value).__name__}")  # fmt: skip
