#!/usr/bin/env bash
# Set up hepafed in ./.venv: PyTorch first (CPU build by default), then hepafed
# with its pinned dependencies and the test tools. Safe to re-run.
#
#   HEPAFED_TORCH   pip arguments for PyTorch (default: the CPU build "torch==2.13.0").
#                   A GPU site passes its CUDA build, e.g.
#                   HEPAFED_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   HEPAFED_EXTRAS  hepafed's extras (default "dev": the test tools; "" for none, e.g. a
#                   hospital's image; "dev,mlflow,tensorboard" adds the experiment-tracking
#                   backends, as CI does. Not by default: with mlflow (and its pandas) or
#                   tensorboard installed, every `import monai` imports them too, about a
#                   second more for each process that starts a site)
#   PYTHON          interpreter for the venv (default: python3, needs >= 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --quiet --disable-pip-version-check)
# shellcheck disable=SC2086  # HEPAFED_TORCH is a list of pip arguments on purpose
"${pip[@]}" install ${HEPAFED_TORCH:-torch==2.13.0}
extras=${HEPAFED_EXTRAS-dev}
"${pip[@]}" install -e ".${extras:+[$extras]}"
.venv/bin/python -c "import torch, flwr, monai; print(f'hepafed set up: torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), monai {monai.__version__}')"
