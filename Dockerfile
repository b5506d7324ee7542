# hepafed image for the coordinating center (SuperLink, ServerApp) and the hospitals
# (SuperNode, ClientApp). Built locally: `docker compose build` tags it hepafed:0.1.0.
# Everything is installed at build time; nothing is downloaded when a container runs
# (Flower's runtime dependency installation, telemetry and update check are off).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

# nginx: the coordinating center's Fleet gateway (`hepafed server gateway`, server/gateway.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# .gitignore travels with the sources: `flwr run` uses it to keep .venv out of the app bundle.
COPY pyproject.toml README.md .gitignore ./
COPY scripts scripts
COPY common common
COPY client client
COPY server server
COPY simulations simulations
# The same installation as scripts/setup.sh, with PyTorch's CPU build.
RUN HEPAFED_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" \
    scripts/setup.sh
ENV PATH=/app/.venv/bin:$PATH

# An unprivileged user; the mount points exist so that named volumes inherit the owner.
RUN useradd --uid 10001 --create-home hepafed \
    && mkdir -p /certs /ca /ca-key /keys/state /keys/cache /pubkeys /state /srv/runs /data \
    && chown hepafed:hepafed /certs /ca /ca-key /keys /keys/state /keys/cache /pubkeys /state \
        /srv/runs \
    && chmod 0700 /keys/state /keys/cache
USER hepafed
WORKDIR /srv
CMD ["hepafed", "--help"]
