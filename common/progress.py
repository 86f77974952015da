"""A job's live progress in Redis, `tunequeue:job:<id>:progress`: one hash holding the latest view (step, loss,
resource samples…), written by the worker (worker/relay.py, worker/monitor.py) and read by the API. A live view
only: Postgres has every event that matters."""

from __future__ import annotations

import json
from typing import Any

import redis

from common.redis_client import decode_hash, get_redis

PROGRESS_TTL_SECONDS = 7 * 24 * 3600


def progress_key(job_id: str) -> str:
    return f"tunequeue:job:{job_id}:progress"


# Fenced like Postgres: a view already written by a later attempt is left alone.
_PUBLISH_LUA = """
local current = tonumber(redis.call('HGET', KEYS[1], 'attempt'))
local mine = tonumber(ARGV[1])
if mine and current and current > mine then return 0 end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class ProgressChannel:
    def __init__(self, client: redis.Redis | None = None) -> None:
        self.redis = client or get_redis()
        self._publish_script: Any = None

    def publish_progress(self, job_id: str, fields: dict[str, Any], *, replace: bool = False) -> bool:
        """Merge `fields` into the job's view, in one atomic script. When `fields` carry an `attempt`, a view
        already written by a later attempt is left alone (returns False). `replace` drops what an earlier attempt
        left behind."""
        attempt = fields.get("attempt")
        args: list[Any] = ["" if attempt is None else int(attempt), "1" if replace else "0", PROGRESS_TTL_SECONDS]
        for k, v in fields.items():
            args += [k, json.dumps(v)]
        return bool(self._script()(keys=[progress_key(job_id)], args=args))

    def _script(self) -> Any:
        if self._publish_script is None:
            self._publish_script = self.redis.register_script(_PUBLISH_LUA)  # EVALSHA, loaded on first use
        return self._publish_script

    def read_progress(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(progress_key(job_id))
        if not raw:
            return None
        return decode_hash(raw)  # type: ignore[arg-type]

    def clear(self, job_id: str) -> None:
        self.redis.delete(progress_key(job_id))
