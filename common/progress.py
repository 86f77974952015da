"""The live-progress channel in Redis (a live view only; Postgres has every event that matters).

Keys (DESIGN.md): tunequeue:job:<id>:progress (hash), tunequeue:job:<id>:events (capped stream),
tunequeue:worker:<host>:<gpu> (hash with TTL), channel tunequeue:models."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import redis

from common.settings import get_settings

PROGRESS_TTL_SECONDS = 7 * 24 * 3600
EVENTS_MAXLEN = 1000
MODELS_CHANNEL = "tunequeue:models"


def progress_key(job_id: str) -> str:
    return f"tunequeue:job:{job_id}:progress"


def events_key(job_id: str) -> str:
    return f"tunequeue:job:{job_id}:events"


@lru_cache
def get_redis(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url or get_settings().redis_url, socket_timeout=5, socket_connect_timeout=5)


class ProgressChannel:
    def __init__(self, client: redis.Redis | None = None) -> None:
        self.redis = client or get_redis()

    def publish_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        key = progress_key(job_id)
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in progress.items()})
        pipe.expire(key, PROGRESS_TTL_SECONDS)
        pipe.xadd(events_key(job_id), {"json": json.dumps(progress)}, maxlen=EVENTS_MAXLEN, approximate=True)
        pipe.expire(events_key(job_id), PROGRESS_TTL_SECONDS)
        pipe.execute()

    def read_progress(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(progress_key(job_id))
        if not raw:
            return None
        return {k.decode(): json.loads(v) for k, v in raw.items()}  # type: ignore[union-attr]

    def clear(self, job_id: str) -> None:
        self.redis.delete(progress_key(job_id), events_key(job_id))

    def publish_model(self, event: dict[str, Any]) -> None:
        self.redis.publish(MODELS_CHANNEL, json.dumps(event))
