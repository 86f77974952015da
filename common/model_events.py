"""The `tunequeue:models` channel: the worker announces each published adapter and the API each deleted one,
after the commit, so that `serve` (worker/serve/server.py) loads or forgets it at once. Delivery is best
effort: serve also looks a model it has not heard of up in Postgres.

On the same channel a worker announces when a training process starts and ends on a device (`announce_training`):
a `serve` on the same host and device releases its idle base models while training holds the device, and loads
them again afterwards (worker/serve/bases.py `BasePool.yield_to_training`).

Redis pub/sub ignores the database number, so a deployment on a Redis database other than 0 adds it to the channel's
name (`models_channel`): two deployments sharing one Redis server on different databases (a staging and a
production, or two test runs) never hear each other's announcements."""

from __future__ import annotations

import json
from typing import Literal

import redis

from common.redis_client import get_redis

MODELS_CHANNEL = "tunequeue:models"


def models_channel(client: redis.Redis) -> str:
    """`tunequeue:models` on database 0, `tunequeue:models:db<N>` on database N."""
    db = int(client.connection_pool.connection_kwargs.get("db") or 0)
    return MODELS_CHANNEL if db == 0 else f"{MODELS_CHANNEL}:db{db}"


def _publish(message: dict[str, str], client: redis.Redis | None) -> None:
    redis_client = client or get_redis()
    redis_client.publish(models_channel(redis_client), json.dumps(message))


def announce(event: Literal["published", "deleted"], *, model_id: str, tenant_id: str, base_model: str,
             storage_key: str, client: redis.Redis | None = None) -> None:
    message = {"event": event, "model": model_id, "tenant_id": tenant_id, "base_model": base_model,
               "storage_key": storage_key}
    _publish(message, client)


def announce_training(event: Literal["training_started", "training_ended"], *, host: str, device: str,
                      job_id: str, client: redis.Redis | None = None) -> None:
    """`device`: `cpu`, or `cuda:<index>` as NVML numbers the cards (what CUDA_VISIBLE_DEVICES names)."""
    message = {"event": event, "host": host, "device": device, "job": job_id}
    _publish(message, client)
