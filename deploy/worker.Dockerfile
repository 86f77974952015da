# syntax=docker/dockerfile:1
# TuneQueue GPU image: the training worker (default CMD) and the inference server (`python -m worker.serve`).
# Build from the repository root:  docker build -f deploy/worker.Dockerfile -t tunequeue-worker .
#
# The host needs an NVIDIA driver new enough for CUDA_IMAGE's CUDA and the torch wheel's CUDA, and the
# NVIDIA Container Toolkit. The torch wheel bundles its own CUDA user-space libraries; the CUDA base image
# supplies the NVIDIA_* container settings (driver capabilities, minimum-driver check).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# Pick the wheel index that matches the CUDA line you want (cu126, cu128, cu130, ...) and carries TORCH_VERSION.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TUNEQUEUE_ARTIFACTS=/var/lib/tunequeue/artifacts \
    TUNEQUEUE_WORK_DIR=/var/lib/tunequeue/work \
    HF_HOME=/var/lib/tunequeue/models/huggingface

# Python 3.11 from Ubuntu 22.04. gcc, libc6-dev and python3.11-dev: Triton (a torch dependency) compiles a small
# launcher with the system C compiler the first time a Triton kernel runs (torch.compile, fused kernels).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && pip install --upgrade pip

# Same non-root uid/gid as the api image (shared artifacts/models volumes); mount points owned by it so a fresh
# named volume inherits the owner (RUN uses /bin/sh: every folder is spelled out).
RUN groupadd --gid 10001 tunequeue \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tunequeue \
        --shell /usr/sbin/nologin tunequeue \
    && mkdir -p /var/lib/tunequeue/artifacts /var/lib/tunequeue/work /var/lib/tunequeue/models \
    && chown -R 10001:10001 /var/lib/tunequeue

# A CUDA torch before the project, so `pip install .[gpu,trackers]` keeps it. The check fails the build on a CPU wheel.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && python -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is a CPU build'"

WORKDIR /app

# README.md is the package's readme in pyproject.toml: the build fails without it.
COPY pyproject.toml README.md ./
COPY common ./common
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY tunequeue_client ./tunequeue_client
RUN pip install ".[gpu,trackers]" \
    && python -c "import torch; assert torch.version.cuda and torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

USER 10001:10001

# One job at a time per GPU; the queue name matches Settings.celery_queue.
CMD ["celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO", "--concurrency", "1", "-Q", "tunequeue.jobs"]
