# syntax=docker/dockerfile:1
# TuneQueue API image (also runs the one-shot migration and the `tunequeue` admin CLI).
# Build from the repository root:  docker build -f deploy/api.Dockerfile -t tunequeue-api .
FROM python:3.11-slim-bookworm

# The package depends on torch; the API never trains, so it gets the small CPU build. Installed before the
# project so that `pip install .` finds torch satisfied and does not pull the multi-GB CUDA wheel.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNEQUEUE_ARTIFACTS=/var/lib/tunequeue/artifacts \
    TUNEQUEUE_WORK_DIR=/var/lib/tunequeue/work \
    HF_HOME=/var/lib/tunequeue/models/huggingface

# Same non-root uid/gid in the api and worker images: they share the artifacts and models volumes.
# The volume mount points are created here, owned by that user, so a fresh named volume inherits the owner
# (RUN uses /bin/sh: no brace expansion, every folder is spelled out).
RUN groupadd --gid 10001 tunequeue \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tunequeue \
        --shell /usr/sbin/nologin tunequeue \
    && mkdir -p /var/lib/tunequeue/artifacts /var/lib/tunequeue/work /var/lib/tunequeue/models \
    && chown -R 10001:10001 /var/lib/tunequeue

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app

# README.md is the package's readme in pyproject.toml: the build fails without it.
COPY pyproject.toml README.md ./
COPY common ./common
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY tunequeue_client ./tunequeue_client
RUN pip install . \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

# Migrations run from this image (`bash scripts/prestart.sh` -> `alembic upgrade head`).
COPY alembic.ini ./
COPY migrations ./migrations
COPY scripts ./scripts

USER 10001:10001
EXPOSE 8000

# uvicorn with --workers from TUNEQUEUE_API_WORKERS (default: the CPU cores the container may use), each worker with
# its own connection pools (TUNEQUEUE_DB_POOL_SIZE...): docs/operations.md, "Database connections".
# --proxy-headers: honour X-Forwarded-For/-Proto from the proxies named in $FORWARDED_ALLOW_IPS.
CMD ["python", "-m", "api.main", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
