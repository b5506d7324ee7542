"""What server and client share: tasks, models, data, statistics, message keys, config."""

import os

# hepafed never phones home nor installs anything at run time. These are read by
# Flower (and MLflow, under tracking.backend = "mlflow") when first imported, and inherited
# by the SuperLink, SuperNode and simulation processes hepafed starts; an operator's
# explicit setting wins.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
