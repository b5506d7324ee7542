"""The run config: one typed, frozen view of Flower's flat ``run_config``.

Every default lives in the section dataclasses (``common.config_sections``; the same
values as ``[tool.flwr.app.config]`` in pyproject.toml, which a test keeps in step).
Flower hands apps a flat mapping with dotted keys (``train.lr``); ``RunConfig``
parses it once, checks every type and choice, and rejects unknown keys, so a
typo in ``--run-config`` fails loudly instead of silently using a default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from common.config_sections import (
    DataConfig,
    EvalConfig,
    FederationConfig,
    HooksConfig,
    ModelConfig,
    MonitorConfig,
    OutputConfig,
    PrivacyConfig,
    TrackingConfig,
    TrainConfig,
    TrustConfig,
)
from common.config_values import (
    ConfigError,
    FlatValue,
    check_choice,
    coerce_value,
    flatten_value,
)
from common.keys import (
    BadCasePolicy,
    Compression,
    EvalDesign,
    Intensity,
    LrSchedule,
    Norm,
    OptimizerName,
    PoolingMethod,
    PrivacyMode,
    RoundSelection,
    StrategyName,
    Task,
    TrackingBackend,
    classifies,
)

FlatConfig = dict[str, Any]  # what Flower records accept: str -> bool | int | float | str

__all__ = ["ConfigError", "FlatConfig", "FlatValue", "RunConfig", "valid_keys"]


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs to know, typed and validated."""

    task: Task = Task.MALIGNANCY
    seed: int = 2026
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def __post_init__(self) -> None:
        check_choice("task", self.task, Task)
        if self.task == Task.LESION_TYPE and self.eval.design == EvalDesign.LOSO:
            raise ConfigError(
                "task = 'lesion-type' with eval.design = 'loso': the three-way report "
                "covers the holdout and cross-site designs; use eval.design = 'holdout'"
            )
        check_choice("federation.strategy", self.federation.strategy, StrategyName)
        check_choice("train.optimizer", self.train.optimizer, OptimizerName)
        check_choice("federation.compression", self.federation.compression, Compression)
        positive = {
            "federation.num-rounds": self.federation.num_rounds,
            "federation.min-sites": self.federation.min_sites,
            "federation.round-timeout-s": self.federation.round_timeout_s,
            "train.local-epochs": self.train.local_epochs,
            "train.batch-size": self.train.batch_size,
            "train.lr": self.train.lr,
            "model.width": self.model.width,
            "data.roi-size": self.data.roi_size,
            "data.spacing-mm": self.data.spacing_mm,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} = {value!r}: must be > 0")
        if self.federation.expected_sites < 0 or self.federation.join_grace_s < 0:
            raise ConfigError(
                "federation.expected-sites and federation.join-grace-s must be >= 0, got "
                f"{self.federation.expected_sites!r} and {self.federation.join_grace_s!r}"
            )
        if not 0.0 < self.federation.fraction_train <= 1.0:
            raise ConfigError(
                f"federation.fraction-train = {self.federation.fraction_train!r}: must be in (0, 1]"
            )
        if not 0.0 <= self.federation.trim_beta < 0.5:
            raise ConfigError(
                f"federation.trim-beta = {self.federation.trim_beta!r}: must be in [0, 0.5)"
            )
        check_choice("eval.design", self.eval.design, EvalDesign)
        check_choice("eval.pooling", self.eval.pooling, PoolingMethod)
        if not self.eval.thresholds or not all(0.0 < t < 1.0 for t in self.eval.thresholds):
            raise ConfigError(
                f"eval.thresholds = {self.eval.thresholds!r}: give one or more values in (0, 1)"
            )
        cands = self.eval.threshold_candidates
        if not cands or list(cands) != sorted(set(cands)) or not all(0.0 < t < 1.0 for t in cands):
            raise ConfigError(
                f"eval.threshold-candidates = {','.join(f'{t:g}' for t in cands)!r}: give one "
                "or more strictly increasing values in (0, 1)"
            )
        recal = self.eval.recalibration
        if recal and (len(recal) != 2 or not all(math.isfinite(v) for v in recal) or recal[1] <= 0):
            raise ConfigError(
                f"eval.recalibration = {recal!r}: give the intercept a and a positive slope b "
                "of p' = expit(a + b logit p), or nothing (the server fits them on validation "
                "summaries under eval.recalibrate = 'logistic')"
            )
        if not 0.0 < self.eval.target_sensitivity < 1.0:
            raise ConfigError(
                f"eval.target-sensitivity = {self.eval.target_sensitivity!r}: must be in (0, 1)"
            )
        if not 0.5 <= self.eval.level < 1.0:
            raise ConfigError(f"eval.level = {self.eval.level!r}: must be in [0.5, 1)")
        if not 0.0 <= self.eval.margin < 1.0:
            raise ConfigError(f"eval.margin = {self.eval.margin!r}: must be in [0, 1)")
        at_least = {
            "eval.min-cases": (self.eval.min_cases, 4),
            "eval.min-per-class": (self.eval.min_per_class, 2),
            "eval.calibration-bins": (self.eval.calibration_bins, 2),
            "eval.roc-points": (self.eval.roc_points, 2),
            "eval.histogram-bins": (self.eval.histogram_bins, 2),
            "eval.embedding-dims": (self.eval.embedding_dims, 1),
        }
        for key, (value, low) in at_least.items():
            if value < low:
                raise ConfigError(f"{key} = {value!r}: must be >= {low}")
        if self.data.window_max <= self.data.window_min:
            raise ConfigError(
                f"data.window-max = {self.data.window_max!r} must exceed "
                f"data.window-min = {self.data.window_min!r}"
            )
        check_choice("data.intensity", self.data.intensity, Intensity)
        check_choice("model.norm", self.model.norm, Norm)
        if not 0.0 <= self.data.percentile_low < self.data.percentile_high <= 100.0:
            raise ConfigError(
                f"data.percentile-low = {self.data.percentile_low!r} and data.percentile-high"
                f" = {self.data.percentile_high!r}: need 0 <= low < high <= 100"
            )
        if not 0.0 <= self.data.context_mm <= 1000.0:
            raise ConfigError(f"data.context-mm = {self.data.context_mm!r}: must lie in 0..1000")
        if self.data.acquired_before:
            from common.dates import parse_date

            try:
                parse_date(self.data.acquired_before)
            except ValueError as e:
                raise ConfigError(f"data.acquired-before: {e}") from e
        if self.data.spatial_dims not in (2, 3):
            raise ConfigError(f"data.spatial-dims = {self.data.spatial_dims!r}: must be 2 or 3")
        if not self.data.channels:
            raise ConfigError("data.channels is empty: name at least one image channel")
        self._check_hooks()
        self._check_trust()
        self._check_recipe()
        self._check_selection()
        self._check_tracking()
        self._check_monitor()

    def _check_monitor(self) -> None:
        m = self.monitor
        if m.reference_windows < 2 or not 0.0 < m.false_alarm_rate < 0.5 or m.cusum_k < 0:
            raise ConfigError(
                f"monitor.reference-windows = {m.reference_windows!r} must be >= 2, "
                f"monitor.false-alarm-rate = {m.false_alarm_rate!r} in (0, 0.5) and "
                f"monitor.cusum-k = {m.cusum_k!r} >= 0"
            )
        if self.eval.design is EvalDesign.MONITOR:
            if not m.model_run or not m.windows:
                raise ConfigError(
                    "eval.design = 'monitor' needs monitor.model-run (the training run folder "
                    "whose model is watched) and monitor.windows (e.g. '2024-07..2025-12')"
                )
            if m.replace and not m.reason.strip():
                raise ConfigError("monitor.replace = true needs monitor.reason: why windows change")

    def _check_tracking(self) -> None:
        # whether the backend's package is installed is the server's check
        # (server.tracking.require_backend): a site has no use for it
        check_choice("tracking.backend", self.tracking.backend, TrackingBackend)
        uri = urlsplit(self.tracking.uri)
        if uri.username is not None or uri.password is not None or uri.query or uri.fragment:
            raise ConfigError(
                "tracking.uri holds credentials (or a query, where a token hides): the run "
                "config travels to every site and "
                "into config.json; give the bare URI and set MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the server's environment"
            )
        if not self.tracking.experiment.strip():
            raise ConfigError("tracking.experiment is empty: name the MLflow experiment")

    def _check_selection(self) -> None:
        f = self.federation
        if f.select_round is RoundSelection.BEST_VAL_AUC:
            if f.average_last:
                raise ConfigError(
                    "federation.select-round = 'best-val-auc' picks one round's model; "
                    f"federation.average-last = {f.average_last} averages several: use one"
                )
            if not self.eval.every_round:
                raise ConfigError(
                    "federation.select-round = 'best-val-auc' scores every round's model on "
                    "the val split: it needs eval.every-round = true"
                )
            if not classifies(self.task):
                raise ConfigError(
                    "federation.select-round = 'best-val-auc' needs the AUC of a "
                    f"classification task, not task = {self.task.value!r}"
                )

    def _check_recipe(self) -> None:
        check_choice("train.lr-schedule", self.train.lr_schedule, LrSchedule)
        t, rounds = self.train, self.federation.num_rounds
        ranges = {  # key: (value, lowest, highest allowed)
            "train.lr-min-factor": (t.lr_min_factor, 0, 1),
            "train.warmup-rounds": (t.warmup_rounds, 0, float("inf")),
            "train.grad-clip": (t.grad_clip, 0, float("inf")),
            "federation.average-last": (self.federation.average_last, 0, rounds),
        }
        for key, (value, low, high) in ranges.items():
            if not low <= value <= high:
                raise ConfigError(
                    f"{key} = {value!r}: must be in [{low}, {high}] "
                    f"(federation.num-rounds = {rounds})"
                )

    @staticmethod
    def _check_hook_names(use: tuple[str, ...]) -> None:
        from common.hooks.registry import UnknownHookError, hook_class

        classes = []
        for name in use:
            try:
                classes.append(hook_class(name))
            except UnknownHookError as e:
                raise ConfigError(f"hooks.use: {e}") from e
        names = [cls.name for cls in classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"hooks.use = {','.join(use)!r} names a hook twice")
        sharing = [cls.name for cls in classes if cls.shares_statistics]
        if len(sharing) > 1:
            raise ConfigError(
                f"hooks.use: {sharing} all share statistics with the server; use at most one"
            )

    def _check_trust(self) -> None:
        check_choice("data.on-bad-case", self.data.on_bad_case, BadCasePolicy)
        check_choice("privacy.mode", self.privacy.mode, PrivacyMode)
        t, p = self.trust, self.privacy
        if t.norm_z < 0 or t.max_update_mb <= 0 or t.norm_ratio < 1:
            raise ConfigError(
                f"trust.norm-z = {t.norm_z!r} must be >= 0 (0: off) and "
                f"trust.max-update-mb = {t.max_update_mb!r} > 0, trust.norm-ratio = "
                f"{t.norm_ratio!r} >= 1"
            )
        if p.clip_norm <= 0 or p.noise_multiplier < 0 or p.max_epsilon < 0:
            raise ConfigError(
                f"privacy.clip-norm = {p.clip_norm!r} must be > 0, privacy.noise-multiplier = "
                f"{p.noise_multiplier!r} and privacy.max-epsilon = {p.max_epsilon!r} >= 0"
            )
        if not 0.0 < p.delta < 1.0:
            raise ConfigError(f"privacy.delta = {p.delta!r}: must be in (0, 1)")
        if p.mode != PrivacyMode.NONE and self.federation.compression != Compression.NONE:
            raise ConfigError(
                f"privacy.mode = {p.mode.value!r} needs federation.compression = 'none' (the "
                f"noise is calibrated to float32 updates), got "
                f"{self.federation.compression.value!r}"
            )

    def _check_hooks(self) -> None:
        h = self.hooks
        if h.use:  # (the registry imports torch: not for a config without hooks)
            self._check_hook_names(h.use)
        marks = h.landmarks
        if (
            len(marks) < 2
            or list(marks) != sorted(set(marks))
            or not 0 < marks[0] < marks[-1] < 100
        ):
            raise ConfigError(
                f"hooks.landmarks = {','.join(f'{m:g}' for m in marks)!r}: give at least two "
                "strictly increasing percentiles inside (0, 100)"
            )
        if h.prox_mu < 0 or h.tent_lr <= 0 or h.tent_steps < 0 or h.finetune_epochs < 0:
            raise ConfigError(
                "hooks.prox-mu, hooks.tent-steps and hooks.finetune-epochs must be >= 0 and "
                f"hooks.tent-lr > 0; got {h.prox_mu!r}, {h.tent_steps!r}, "
                f"{h.finetune_epochs!r}, {h.tent_lr!r}"
            )

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> RunConfig:
        """Parse Flower's flat run config; missing keys take their default."""
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        valid = valid_keys()
        for key, value in flat.items():
            if key not in valid:
                raise ConfigError(
                    f"unknown run-config key {key!r}; valid keys: {', '.join(sorted(valid))}"
                )
            section, _, name = key.rpartition(".")
            attr = name.replace("-", "_")
            if section:
                section_cls = _section_type(section)
                sections.setdefault(section, {})[attr] = coerce_value(
                    key, value, _field_type(section_cls, attr)
                )
            else:
                top[attr] = coerce_value(key, value, _field_type(cls, attr))
        for section, values in sections.items():
            top[section] = _section_type(section)(**values)
        return cls(**top)

    def to_flat(self) -> FlatConfig:
        """The inverse of ``from_flat``: what travels in a Flower ConfigRecord."""
        flat: FlatConfig = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for sub in fields(value):
                    key = f"{f.name}.{sub.name.replace('_', '-')}"
                    flat[key] = flatten_value(getattr(value, sub.name))
            else:
                flat[f.name.replace("_", "-")] = flatten_value(value)
        return flat

    def replace(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with some flat keys overridden (validated like ``from_flat``)."""
        return RunConfig.from_flat({**self.to_flat(), **overrides})


@functools.cache
def valid_keys() -> frozenset[str]:
    """Every flat key ``RunConfig.from_flat`` accepts (a site checks each message's)."""
    return frozenset(RunConfig().to_flat())


def _section_type(section: str) -> type:
    return _field_type(RunConfig, section)


def _field_type(cls: type, attr: str) -> Any:
    return _type_hints(cls)[attr]


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A config dataclass's resolved field types, once: ``get_type_hints`` evaluates every
    annotation string again on each call, and was nearly all of a message's config parse
    (29 ms of 30), which a site does several times per message."""
    return get_type_hints(cls)
