"""Worker registrations in Redis, `tunequeue:worker:<host>:<slot>`: one hash per GPU (or CPU-only worker),
written by worker/monitor.py and expiring unless refreshed; read by GET /workers and /metrics."""

from __future__ import annotations

import json
from typing import Any

import redis

from common.redis_client import decode_hash, get_redis

WORKER_PREFIX = "tunequeue:worker:"


def worker_key(host: str, slot: str) -> str:
    """`slot` is the GPU's NVML index, or `cpu-<pid>` for a worker without a GPU."""
    return f"{WORKER_PREFIX}{host}:{slot}"


class WorkerRegistry:
    def __init__(self, client: redis.Redis | None = None) -> None:
        self.redis = client or get_redis()

    def register(self, host: str, slot: str, fields: dict[str, Any], ttl_seconds: int) -> None:
        """Replace the slot's registration whole; it expires unless registered again within `ttl_seconds`."""
        key = worker_key(host, slot)
        pipe = self.redis.pipeline()
        pipe.delete(key)
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})
        pipe.expire(key, ttl_seconds)
        pipe.execute()

    def unregister(self, host: str, slot: str) -> None:
        self.redis.delete(worker_key(host, slot))

    def registrations(self) -> list[dict[str, Any]]:
        """Every live registration, with `key` and `expires_in` (seconds) added; sorted by key."""
        keys = sorted(
            (k.decode() if isinstance(k, bytes) else str(k))
            for k in self.redis.scan_iter(match=f"{WORKER_PREFIX}*", count=500)
        )
        if not keys:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
            pipe.ttl(key)
        replies = pipe.execute()
        out = []
        for i, key in enumerate(keys):
            raw, ttl = replies[2 * i], replies[2 * i + 1]
            if not raw:  # expired between SCAN and HGETALL
                continue
            out.append({**decode_hash(raw), "key": key, "expires_in": int(ttl) if ttl and ttl > 0 else None})
        return out
