"""The process's Redis connection and the decoding of the JSON-valued hashes TuneQueue keeps there
(common/progress.py, common/worker_registry.py)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import redis

from common.settings import get_settings


@lru_cache
def get_redis(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url or get_settings().redis_url, socket_timeout=5, socket_connect_timeout=5)


def decode_hash(raw: dict[Any, Any]) -> dict[str, Any]:
    """A hash whose values were written as JSON; a value that is not JSON is kept as text."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        try:
            out[key] = json.loads(v)
        except (TypeError, ValueError):
            out[key] = v.decode(errors="replace") if isinstance(v, bytes) else v
    return out
