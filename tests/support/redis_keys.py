"""The job's keys in Redis (its live view), for tests that simulate Redis losing them."""

from __future__ import annotations

from common.redis_client import get_redis


def drop_redis_keys(job_id: str) -> None:
    """What a Redis flush loses for one job (the shared Redis also carries other runs and the broker)."""
    keys = list(get_redis().scan_iter(match=f"tunequeue:job:{job_id}:*"))
    if keys:
        get_redis().delete(*keys)
