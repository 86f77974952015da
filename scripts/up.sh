#!/usr/bin/env bash
# `make up`: database + migrations + demo models (built once into var/models/) + dev key, then the API, the
# workers and the inference server (serve) in the foreground.
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export TUNEQUEUE_PORT="${TUNEQUEUE_PORT:-8000}"
export TUNEQUEUE_HOST="${TUNEQUEUE_HOST:-127.0.0.1}"
export TUNEQUEUE_SERVE_PORT="${TUNEQUEUE_SERVE_PORT:-8001}"
export TUNEQUEUE_SERVE_URL="${TUNEQUEUE_SERVE_URL:-http://127.0.0.1:$TUNEQUEUE_SERVE_PORT}"
KEY_FILE="${TUNEQUEUE_DEV_KEY_FILE:-var/dev-api-key}"  # another file for a second stack on other ports
mkdir -p var

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "Postgres is not answering on 127.0.0.1:5432; start it (e.g. pg_ctlcluster 15 main start) or set TUNEQUEUE_DATABASE_URL" >&2
fi
"$BIN/tunequeue" dev setup --key-file "$KEY_FILE"

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping…"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop INT TERM EXIT

# The production command (deploy/api.Dockerfile's CMD): uvicorn with TUNEQUEUE_API_WORKERS workers (default: the
# CPU cores), pools per worker from TUNEQUEUE_DB_POOL_SIZE / TUNEQUEUE_DB_MAX_OVERFLOW (docs/operations.md).
"$BIN/python" -m api.main --host "$TUNEQUEUE_HOST" --port "$TUNEQUEUE_PORT" --proxy-headers &
pids+=($!)
"$BIN/celery" -A worker.celery_app worker --loglevel INFO --concurrency 1 -n "gpu0@%h" \
  -Q "${TUNEQUEUE_CELERY_QUEUE:-tunequeue.jobs}" &
pids+=($!)
# New jobs have their files tokenised and checked on a CPU queue of their own, so they never wait behind training.
"$BIN/celery" -A worker.celery_app worker --loglevel INFO --concurrency 1 -n "validate@%h" \
  -Q "${TUNEQUEUE_VALIDATE_QUEUE:-tunequeue.validate}" &
pids+=($!)
# Inference: base models loaded once, adapters hot-loaded; the API forwards /v1/chat/completions to it. It answers
# only the API's token: TUNEQUEUE_SERVE_TOKEN, or (unset) the one api and serve generate once into var/serve-token.
"$BIN/python" -m worker.serve &
pids+=($!)

cat <<MSG

TuneQueue is starting on http://$TUNEQUEUE_HOST:$TUNEQUEUE_PORT  (docs: /docs)
  API key: $(cat "$KEY_FILE")   (saved in $KEY_FILE)
  base models: smollm2-135m-instruct (var/models/smollm2-135m-instruct, SmolLM2-135M-Instruct in bf16, when built)
               tiny-llama (var/models/tiny-llama, a tiny random Llama for fast tests)
  inference: $TUNEQUEUE_SERVE_URL (internal, answers only the API; chat through the API's /v1/chat/completions)
Ctrl-C stops the API, the workers and the inference server.

MSG
wait -n
