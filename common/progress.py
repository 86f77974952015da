"""The live-progress channel in Redis (a live view only; Postgres has every event that matters).

Keys (docs/architecture.md, "Redis"): tunequeue:job:<id>:progress (hash), tunequeue:job:<id>:events (capped stream),
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
WORKER_PREFIX = "tunequeue:worker:"


def progress_key(job_id: str) -> str:
    return f"tunequeue:job:{job_id}:progress"


def events_key(job_id: str) -> str:
    return f"tunequeue:job:{job_id}:events"


_PUBLISH_LUA = """
local current = tonumber(redis.call('HGET', KEYS[1], 'attempt'))
local mine = tonumber(ARGV[1])
if mine and current and current > mine then return 0 end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'json', ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return 1
"""


def worker_key(host: str, slot: str) -> str:
    """`slot` is the GPU's NVML index, or `cpu-<pid>` for a worker without a GPU."""
    return f"{WORKER_PREFIX}{host}:{slot}"


def _decode(raw: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        try:
            out[key] = json.loads(v)
        except (TypeError, ValueError):
            out[key] = v.decode(errors="replace") if isinstance(v, bytes) else v
    return out


@lru_cache
def get_redis(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url or get_settings().redis_url, socket_timeout=5, socket_connect_timeout=5)


class ProgressChannel:
    def __init__(self, client: redis.Redis | None = None) -> None:
        self.redis = client or get_redis()
        self._publish_script: Any = None

    def publish_progress(self, job_id: str, progress: dict[str, Any], *, replace: bool = False) -> bool:
        """The latest view (hash) and one entry of the capped live stream. See `_publish`."""
        return self._publish(job_id, progress, replace=replace, stream=True)

    def publish_sample(self, job_id: str, fields: dict[str, Any], *, replace: bool = False) -> bool:
        """Merge resource samples (gpus, process memory) into the latest view, without a stream entry."""
        return self._publish(job_id, fields, replace=replace, stream=False)

    def _publish(self, job_id: str, fields: dict[str, Any], *, replace: bool, stream: bool) -> bool:
        """One atomic script. Fenced like Postgres: when `fields` carry an `attempt`, a view already written by a
        later attempt is left alone (returns False). `replace` drops what an earlier attempt left behind."""
        attempt = fields.get("attempt")
        args: list[Any] = ["" if attempt is None else int(attempt), "1" if replace else "0", PROGRESS_TTL_SECONDS,
                           EVENTS_MAXLEN, json.dumps(fields) if stream else ""]
        for k, v in fields.items():
            args += [k, json.dumps(v)]
        return bool(self._script()(keys=[progress_key(job_id), events_key(job_id)], args=args))

    def _script(self) -> Any:
        if self._publish_script is None:
            self._publish_script = self.redis.register_script(_PUBLISH_LUA)  # EVALSHA, loaded on first use
        return self._publish_script

    def read_progress(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(progress_key(job_id))
        if not raw:
            return None
        return _decode(raw)  # type: ignore[arg-type]

    def clear(self, job_id: str) -> None:
        self.redis.delete(progress_key(job_id), events_key(job_id))

    def publish_model(self, event: dict[str, Any]) -> None:
        self.redis.publish(MODELS_CHANNEL, json.dumps(event))

    def register_worker(self, host: str, slot: str, fields: dict[str, Any], ttl_seconds: int) -> None:
        """One hash per GPU (or CPU-only worker), replaced whole and expiring unless refreshed."""
        key = worker_key(host, slot)
        pipe = self.redis.pipeline()
        pipe.delete(key)
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})
        pipe.expire(key, ttl_seconds)
        pipe.execute()

    def unregister_worker(self, host: str, slot: str) -> None:
        self.redis.delete(worker_key(host, slot))

    def list_workers(self) -> list[dict[str, Any]]:
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
            out.append({**_decode(raw), "key": key, "expires_in": int(ttl) if ttl and ttl > 0 else None})
        return out
