"""Names that cross the wire or the config: message keys, record keys, choices.

Kept in one place so that ServerApp, ClientApp and the simulation driver never
disagree on a spelling.
"""

from __future__ import annotations

import re
from enum import StrEnum


class RecordKey(StrEnum):
    """Keys of the records inside a Message's RecordDict."""

    ARRAYS = "arrays"  # global or local model weights (ArrayRecord)
    CONFIG = "config"  # round config: flattened run config + round number
    METRICS = "metrics"  # numeric summaries a site returns (MetricRecord)
    SITE = "site"  # site identity and data summary (ConfigRecord)
    SCALES = "scales"  # int8-compressed update: float32 block scales per tensor (ArrayRecord)


class MetricKey(StrEnum):
    """Metric names a site reports (all are aggregates, never per-case values)."""

    NUM_EXAMPLES = "num-examples"  # Flower's weighting key
    TRAIN_LOSS = "train-loss"
    LOSS = "loss"
    N = "n"
    N_POS = "n-pos"
    N_NEG = "n-neg"
    AUC = "auc"
    AUC_VAR = "auc-var"
    ACCURACY = "accuracy"
    SENSITIVITY = "sensitivity"
    SPECIFICITY = "specificity"
    DICE = "dice"
    DICE_SD = "dice-sd"
    SECONDS = "seconds"
    SKIPPED_CASES = "skipped-cases"  # cases left out under data.on-bad-case = skip


class SiteKey(StrEnum):
    """Fields of the site-identity record a ClientApp returns to a query."""

    NAME = "name"
    N_TRAIN = "n-train"
    N_TEST = "n-test"
    N_VAL = "n-val"  # validation cases (model selection, thresholds; never trained on)
    MANIFEST_SHA256 = "manifest-sha256"
    # JSON text of common.acquisition.acquisition_summary: counts and ranges, never per case
    ACQUISITION = "acquisition"
    STATISTICS = "statistics"  # JSON: hook statistics (Phase.STATISTICS replies)
    N_CASES = "n-cases"  # how many cases the statistics were fitted on (their weight)
    ADAPTATION = "adaptation"  # how the site scored the model (evaluate replies)
    STATEMENT = "signed-statement"  # train and site-query replies: JSON of what the site signed
    SIGNATURE = "signature"  # ... and the site's signature of the statement (hex)
    SKIPPED_CASE_IDS = "skipped-case-ids"  # the first skipped cases' ids (data.on-bad-case)
    SKIPPED_CASE_REASONS = "skipped-case-reasons"  # ... and for each "file: what is wrong"


class ConfigKey(StrEnum):
    """Keys the server adds to the round config next to the run config."""

    ROUND = "server-round"  # Flower strategies inject this one themselves
    PHASE = "phase"  # query: Phase.SITE (default) or Phase.STATISTICS
    EVAL_SPLIT = "eval-split"  # "test" (default), "val", or "all" (a site left out of training)
    MODEL = "model"  # which model a message is about: "global", "without-SITE", ...
    BASE_MODEL = "base-model"  # fine-tuning: the federated model whose local layers to start from
    SHARE = "share"  # train: Share.SHARED (keep local layers) or Share.ALL (send every tensor)
    SHARED_STATISTICS = "shared-statistics"  # JSON of the server-combined hook statistics
    PROXIMAL_MU = "proximal-mu"  # FedProx mu, the key Flower's FedProx strategy uses
    RUN_ID = "run-id"  # the run the server signs models for and sites sign updates for
    MODEL_SIGNATURE = "model-signature"  # the server's signature of the model it sends (hex)
    SITE_CHALLENGE = "site-challenge"  # site query: a fresh nonce the site signs with its name
    INSTRUCTION_SIGNATURE = "instruction-signature"  # the server's signature of each message
    # monitor design: score the cases acquired in a window (common.dates), labels known by as-of
    WINDOW = "monitor-window"  # the window's name, "YYYY-MM" (server.monitoring.store)
    WINDOW_START = "monitor-start"  # first day, "YYYY-MM-DD"
    WINDOW_END = "monitor-end"  # the first day after it, "YYYY-MM-DD" (exclusive)
    AS_OF = "monitor-as-of"  # labels count when their label_date is on or before this day


# model ids (ConfigKey.MODEL, run records, checkpoints, the report)
GLOBAL_MODEL = "global"  # the federation's shared model


def loso_model(site: str) -> str:
    """The leave-one-site-out fold's model, trained without ``site``."""
    return f"without-{site}"


def local_model(site: str) -> str:
    """``site``'s local-only model (trained on its data alone)."""
    return f"local-{site}"


def finetuned_model(site: str) -> str:
    """The global model fine-tuned at ``site`` (``hooks.finetune-epochs``)."""
    return f"finetuned-{site}"


class Phase(StrEnum):
    """What a query message asks a site for (``ConfigKey.PHASE``)."""

    SITE = "site"  # identity, case counts, acquisition summary
    STATISTICS = "statistics"  # the image statistics of hooks that share them (JSON)


class RecordPhase(StrEnum):
    """What a line of ``rounds.jsonl`` records (its ``"phase"``)."""

    STATISTICS = "statistics"  # the hooks' pooled statistics, before training
    TRAIN = "train"  # one federated round: accepted, rejected and missing updates
    EVALUATE = "evaluate"  # the model after a round, scored at every site (monitoring)
    PRIVACY = "privacy"  # the sites' DP ledger before a model trained at one site
    PRIVACY_BUDGET = "privacy-budget"  # training stopped: a privacy budget is spent
    AVERAGE = "average"  # the final model is the mean of the last rounds' models
    SELECT = "select"  # the final model is the round with the best validation AUC
    FINAL_EVALUATE = "final-evaluate"  # a model's final scores (or why a site has none)
    VALIDATE = "validate"  # a model scored on the training sites' validation split
    THRESHOLD = "threshold"  # a model's operating threshold, chosen on validation summaries


class RoundSelection(StrEnum):
    """Which round's global model is the final one (``federation.select-round``)."""

    LAST = "last"  # the last round's (or, with federation.average-last, the late mean)
    BEST_VAL_AUC = "best-val-auc"  # the round whose model scored best on validation


class ThresholdRule(StrEnum):
    """How a model's operating threshold is chosen (``eval.threshold-rule``)."""

    FIXED = "fixed"  # the first of eval.thresholds
    YOUDEN = "youden"  # the candidate with the largest sensitivity + specificity - 1
    SENSITIVITY = "sensitivity"  # the highest candidate reaching eval.target-sensitivity


class Recalibrate(StrEnum):
    """Whether a model's probabilities are recalibrated on validation data
    (``eval.recalibrate``, ``common.recalibration``)."""

    NONE = "none"  # report the probabilities as the model gives them
    LOGISTIC = "logistic"  # p' = expit(a + b logit p), a and b fitted on validation summaries


# the largest slope (and 1 / the smallest) and |intercept| of a recalibration map a site's
# policy accepts by default (client.policy, max-recalibration; common.recalibration): a
# steeper map would make the recalibrated sums 2x2 tables at any threshold the server likes
RECALIBRATION_LIMIT = 5.0


class TrackingBackend(StrEnum):
    """Where the server mirrors a run's summaries (``tracking.backend``, ``server.tracking``)."""

    NONE = "none"  # the run folder only
    MLFLOW = "mlflow"  # an MLflow tracking store (SQLite under the run folder by default)
    TENSORBOARD = "tensorboard"  # TensorBoard event files under RUN_DIR/tensorboard


class Share(StrEnum):
    """Which tensors a training site sends back (``ConfigKey.SHARE``)."""

    SHARED = "shared"  # a federated round: layers a hook keeps local stay at the site
    ALL = "all"  # a local-only or fine-tuned model: the server needs the whole model


class Task(StrEnum):
    """Learning tasks hepafed knows how to build a model and a pipeline for."""

    MALIGNANCY = "lesion-malignancy"
    SEGMENTATION = "lesion-segmentation"
    LESION_TYPE = "lesion-type"  # 0 benign, 1 primary malignant, 2 metastasis (MRI phantom)


# task lesion-type: label k is LESION_CLASSES[k] (the MRI phantom's and a manifest's coding)
LESION_CLASSES = ("benign", "primary malignant", "metastasis")


def classifies(task: str) -> bool:
    """A task with a label per case, scored by AUC (lesion-type's headline figures are its
    benign vs malignant view), as opposed to segmentation's masks."""
    return task in (Task.MALIGNANCY, Task.LESION_TYPE)


class StrategyName(StrEnum):
    """Server aggregation strategies selectable by name (Flower's own)."""

    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDMEDIAN = "fedmedian"
    FEDTRIMMEDAVG = "fedtrimmedavg"
    KRUM = "krum"


class Compression(StrEnum):
    """How a site encodes its update in a federated round (``common.compression``)."""

    NONE = "none"  # float32 weights, as stock Flower
    FP16 = "fp16"  # half-precision update (trained - global), error feedback
    INT8 = "int8"  # block-scaled 8-bit update, error feedback


class Norm(StrEnum):
    """The classifier's normalisation layers (``model.norm``)."""

    BATCH = "batch"  # BatchNorm: what fedbn, silobn, bn-adapt and tent act on
    GROUP = "group"  # GroupNorm (8 groups): no running statistics, nothing to mismatch
    INSTANCE = "instance"  # InstanceNorm with affine parameters, per case


class Intensity(StrEnum):
    """How a channel's stored values become the model input on [0, 1] (``data.intensity``)."""

    WINDOW = "window"  # CT: the fixed HU window data.window-min..window-max
    PERCENTILE = "percentile"  # MRI (no absolute unit): each image's own percentiles


class BadCasePolicy(StrEnum):
    """What a site does with a case whose files cannot be used (``data.on-bad-case``)."""

    FAIL = "fail"  # the site's job fails with the case's named error
    SKIP = "skip"  # the case is left out, named in the log and counted in the report


class PrivacyMode(StrEnum):
    """Differential privacy of the updates (``privacy.mode``)."""

    NONE = "none"
    CENTRAL = "central"  # the server clips each update and noises the aggregate
    CENTRAL_CLIENT_CLIP = "central-client-clip"  # sites clip, the server noises the aggregate
    LOCAL = "local"  # each site clips and noises its own update before sending it


class OptimizerName(StrEnum):
    """Local optimisers a site can use."""

    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class LrSchedule(StrEnum):
    """How the local learning rate changes across federated rounds (``train.lr-schedule``)."""

    CONSTANT = "constant"  # train.lr every round (after any warm-up)
    COSINE = "cosine"  # cosine decay to train.lr x train.lr-min-factor at the last round


class Split(StrEnum):
    """Values of a manifest's split column."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


EVAL_ALL = "all"  # ConfigKey.EVAL_SPLIT value: score every case (a site left out of training)


def choices(enum: type[StrEnum]) -> str:
    """The valid values of an enum, quoted, for error messages."""
    return ", ".join(repr(m.value) for m in enum)


class NodeKey(StrEnum):
    """Keys of a SuperNode's ``node_config`` (site identity lives there)."""

    SITE_DIR = "site-dir"  # deployment: the hospital's site folder
    SITE_NAME = "site-name"  # optional display name; defaults to the folder name
    PARTITION_ID = "partition-id"  # simulation: Flower's index of the virtual node
    SIGNING_KEY = "signing-key"  # deployment: the site's private key (OpenSSH), signs updates
    SERVER_KEY = "server-public-key"  # deployment: the server's public key, checks models
    ALLOWED_HOOKS = "allowed-hooks"  # deployment: 'module:Class' hooks the site agrees to import


class EvalDesign(StrEnum):
    """How the final models are evaluated (``eval.design``)."""

    HOLDOUT = "holdout"  # the global model on every site's test split and the external sites
    LOSO = "loso"  # leave one site out: federate without k, evaluate on k and the others
    CROSS_SITE = "cross-site"  # {global, each site's local-only model} x every site
    MONITOR = "monitor"  # a trained run's frozen model watched window by window (no training)


class PoolingMethod(StrEnum):
    """Random-effects estimators of tau^2 (``eval.pooling``), as metafor names them."""

    REML = "REML"
    DL = "DL"
    PM = "PM"


SITE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
"""A site name: a letter or digit, then letters, digits, '_', '.' or '-' (64 at most). It
names a key file (``sites/NAME.pub``) and a folder, so nothing path-like ever gets in."""


def site_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a site's name (None when it can)."""
    if isinstance(name, str) and re.fullmatch(SITE_NAME_PATTERN, name):
        return None
    return (
        f"site name {str(name)[:40]!r}: use a letter or digit, then letters, digits, '_', '.' "
        "or '-' (64 characters at most)"
    )
