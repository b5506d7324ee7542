"""The sections of the run config: one frozen dataclass per topic (``federation.*``,
``train.*``, ``model.*``, ``data.*``, ``eval.*``, ``hooks.*``, ``trust.*``, ``privacy.*``,
``output.*``, ``tracking.*``), each option with its default and what it means.

Every default lives here (the same values as ``[tool.flwr.app.config]`` in
pyproject.toml, which a test keeps in step); ``common.config.RunConfig`` assembles
the sections, parses Flower's flat run config into them and checks every value.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    Recalibrate,
    RoundSelection,
    StrategyName,
    ThresholdRule,
    TrackingBackend,
)


@dataclass(frozen=True)
class FederationConfig:
    """How the server runs rounds and aggregates."""

    strategy: StrategyName = StrategyName.FEDAVG
    num_rounds: int = 10
    fraction_train: float = 1.0
    min_sites: int = 2
    expected_sites: int = 0  # wait for this many sites before starting (0: min-sites + grace)
    join_grace_s: float = 10.0  # with expected-sites = 0: start once no site joined for this long
    external_sites: tuple[str, ...] = ()  # evaluate only, never train
    round_timeout_s: float = 3600.0
    server_lr: float = 0.1  # fedadam / fedyogi / fedavgm
    server_momentum: float = 0.9  # fedavgm
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut at each end
    krum_byzantine: int = 0  # krum: number of malicious sites tolerated
    compression: Compression = Compression.NONE  # none | fp16 | int8: how sites send updates
    average_last: int = 0  # > 0: the final model is the mean of the last K rounds' models
    # best-val-auc: the round whose model has the best pooled AUC on the val split
    select_round: RoundSelection = RoundSelection.LAST


@dataclass(frozen=True)
class TrainConfig:
    """Local training at a site."""

    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: OptimizerName = OptimizerName.ADAM
    weight_decay: float = 1e-4
    amp: bool = True  # mixed precision, used only when a GPU is present
    lr_schedule: LrSchedule = LrSchedule.COSINE  # constant | cosine, across rounds
    lr_min_factor: float = 0.05  # cosine: the last round's lr is train.lr times this
    warmup_rounds: int = 1  # linear warm-up over the first rounds (at most num-rounds - 1)
    grad_clip: float = 0.0  # > 0: clip each step's gradient to this L2 norm


@dataclass(frozen=True)
class ModelConfig:
    """Which network; an empty name picks the task's default."""

    name: str = ""
    width: int = 16  # channels of the first stage; later stages double
    norm: Norm = Norm.BATCH  # classifiers: batch | group | instance (segmentation: its own)


@dataclass(frozen=True)
class DataConfig:
    """How a site's manifest becomes tensors."""

    site_root: str = ""  # simulation: folder with one sub-folder per site
    channels: tuple[str, ...] = ("arterial", "portal", "delayed")
    spatial_dims: int = 2  # 2: slices stored as (X, Y) or (X, Y, 1); 3: volumes
    roi_size: int = 64  # pixels of the lesion-centred crop after resampling
    # tissue kept around the lesion's bounding box before the crop is centred and padded
    # (or cut) to roi-size: 0 = the box alone, the rest of the input zeros. 48 mm: the
    # stability study's choice (docs/results/stability-liver-shift.md)
    context_mm: float = 48.0
    # "YYYY-MM-DD": cases acquired on or after this day are left out of every split (a model
    # trained and evaluated on the data of its time; later cases are for monitoring)
    acquired_before: str = ""
    spacing_mm: float = 1.5  # in-plane spacing every site is resampled to
    intensity: Intensity = Intensity.WINDOW  # window (CT, HU) | percentile (MRI)
    window_min: float = -150.0  # CT window (HU) mapped to [0, 1]
    window_max: float = 250.0
    # intensity = percentile: each image's percentile-low..percentile-high mapped to [0, 1]
    percentile_low: float = 1.0
    percentile_high: float = 99.0
    augment: bool = True
    cache_dir: str = ""  # where preprocessed cases are cached; "" = none
    on_bad_case: BadCasePolicy = BadCasePolicy.FAIL  # fail: the site's job fails; skip: counted


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: what sites summarise, how the server designs and reports it."""

    design: EvalDesign = EvalDesign.HOLDOUT  # holdout | loso | cross-site
    local_only: bool = False  # holdout: also train and evaluate each site's local-only model
    every_round: bool = True  # score the global model at every site after each round (progress)
    thresholds: tuple[float, ...] = (0.5,)  # 2x2 tables; the first is the operating point
    # ... unless chosen on the training sites' validation split (common.operating_point):
    threshold_rule: ThresholdRule = ThresholdRule.YOUDEN  # fixed | youden | sensitivity
    threshold_candidates: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65)  # the choice's grid
    target_sensitivity: float = 0.9  # threshold-rule = sensitivity: the sensitivity to reach
    # logistic recalibration fitted on the same validation summaries (common.recalibration);
    # sites then report calibration before and after it
    recalibrate: Recalibrate = Recalibrate.NONE  # none | logistic
    recalibration: tuple[float, ...] = ()  # (a, b) fitted by the server; () = none applied
    min_cases: int = 20  # a site with fewer test cases reports "insufficient data"
    min_per_class: int = 5  # ... or with fewer positives or negatives than this
    calibration_bins: int = 10  # equal-width probability bins for reliability and ECE
    roc_points: int = 51  # sensitivity reported at this many evenly spaced FPRs in [0, 1]
    histogram_bins: int = 32  # per-channel intensity histogram of the model input, on [0, 1]
    embedding_dims: int = 8  # random projection of the penultimate-layer embedding
    level: float = 0.95  # confidence level of every interval in the report
    pooling: PoolingMethod = PoolingMethod.REML  # random-effects tau^2 estimator: REML | DL | PM
    hartung_knapp: bool = False  # t-based pooled CIs (Hartung-Knapp) instead of z
    margin: float = 0.05  # flag a site whose AUC falls more than this below pooled internal
    # classification: sites also send the mean share of Grad-CAM mass inside the lesion mask
    # and its chance level (the mask's share), over >= policy.min-cell cases, and where they
    # have liver masks the same for the liver outside the lesion (client.explain)
    saliency: bool = False


@dataclass(frozen=True)
class HooksConfig:
    """Domain-adaptation hooks (common.hooks) and their settings."""

    use: tuple[str, ...] = ()  # hook names or 'package.module:Class', applied in this order
    prox_mu: float = 0.01  # fedprox: weight of the proximal term
    landmarks: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
    tent_steps: int = 10  # tent: Adam steps on the BatchNorm affine parameters
    tent_lr: float = 1e-3  # tent: their learning rate
    finetune_epochs: int = 0  # > 0: each training site fine-tunes the final model this long


@dataclass(frozen=True)
class TrustConfig:
    """Signed updates and models, and the server's checks on every update."""

    sign_updates: bool = True  # sites sign updates, the server signs models (off: a warning)
    keys_dir: str = ""  # registered site keys (SITE.pub) + server key; "" = RUN_DIR/keys
    norm_z: float = 3.5  # reject an update whose norm's robust z across sites exceeds this; 0 off
    norm_ratio: float = 3.0  # ... and whose norm is at least this many times the median norm
    max_update_mb: float = 2048.0  # reject a reply larger than this (MiB)


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy of the updates (``server.privacy``, ``client.privacy``)."""

    mode: PrivacyMode = PrivacyMode.NONE  # none | central | central-client-clip | local
    clip_norm: float = 1.0  # L2 bound on each site's update
    noise_multiplier: float = 1.0  # Gaussian noise std / clip-norm
    delta: float = 1e-5  # the delta (epsilon, delta) is reported at
    max_epsilon: float = 0.0  # stop before a round would spend more; 0: no budget


@dataclass(frozen=True)
class OutputConfig:
    """Where the ServerApp writes the run folder."""

    run_dir: str = "runs/flwr"
    resume: bool = False  # continue RUN_DIR from its last completed round


@dataclass(frozen=True)
class MonitorConfig:
    """``eval.design = "monitor"``: a finished run's frozen model scored window by window at
    every site (``server.monitoring``); sites ignore this section."""

    model_run: str = ""  # the training run folder (sealed trail) whose checkpoint is watched
    checkpoint: str = "checkpoint.pt"  # the model's file in model-run
    folder: str = ""  # the model's monitoring folder; "" = MODEL_RUN/monitor
    windows: str = ""  # "2024-07..2025-12" (every month), or "2024-07,2024-08"
    # "YYYY-MM-DD", a month's last day: labels count if they arrived by then; "" = the last
    # day of the month before the current one
    as_of: str = ""
    reference_windows: int = 6  # each site's first sufficient windows: its in-control level
    false_alarm_rate: float = 0.002  # per site and window, all of a site's charts together
    cusum_k: float = 0.5  # CUSUM reference value (half the shift, in sd, detected fastest)
    replace: bool = False  # a re-run window whose summary changed supersedes it (reason needed)
    reason: str = ""  # why windows are replaced (kept on the monitoring chain)


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking at the server (``server.tracking``): the summaries the run folder
    holds, mirrored into MLflow or TensorBoard; sites ignore this section."""

    backend: TrackingBackend = TrackingBackend.NONE  # none | mlflow | tensorboard
    # mlflow: tracking URI; "" = sqlite:///RUN_DIR/mlflow.db. No credentials in it: MLflow
    # reads MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN from the server's environment
    uri: str = ""
    experiment: str = "hepafed"  # mlflow: the experiment runs are logged under
