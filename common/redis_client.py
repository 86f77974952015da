"""The process's Redis connections and the decoding of the JSON-valued hashes TuneQueue keeps there
(common/progress.py, common/worker_registry.py).

Every client here has a pool of POOL_SIZE connections that makes a caller past it wait (up to its `pool_wait`)
instead of failing: redis-py's default pool raises "Too many connections" at its 101st concurrent caller (in
redis-py 8, what a fresh install gets), which under load turned a burst of API requests into Redis errors."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio as aioredis

from common.settings import get_settings

POOL_SIZE = 64  # connections one process (one event loop, for an asyncio client) keeps to Redis at most
POOL_WAIT_SECONDS = 5.0  # how long a caller waits for a free one by default; then redis.ConnectionError


@lru_cache
def get_redis(url: str | None = None) -> redis.Redis:
    """The process's shared client (thread-safe)."""
    return sync_redis(url or get_settings().redis_url)


def sync_redis(url: str, *, timeout: float = 5.0, pool_wait: float = POOL_WAIT_SECONDS) -> redis.Redis:
    """A client of its own; `timeout` bounds connecting and each reply."""
    return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=pool_wait, socket_timeout=timeout, socket_connect_timeout=timeout))


def async_redis(url: str, *, timeout: float | None = 5.0, connect_timeout: float = 5.0,
                pool_wait: float = POOL_WAIT_SECONDS) -> aioredis.Redis:
    """An asyncio client for the running event loop (it belongs to that loop); `timeout` bounds each reply (None:
    none, for a pub/sub listener that waits for messages)."""
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=pool_wait, socket_timeout=timeout,
        socket_connect_timeout=connect_timeout))


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
