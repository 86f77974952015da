"""The `tunequeue:models` channel: the worker announces each published adapter and the API each deleted one,
after the commit, so that `serve` (worker/serve/server.py) loads or forgets it at once. Delivery is best
effort: serve also looks a model it has not heard of up in Postgres."""

from __future__ import annotations

import json
from typing import Literal

import redis

from common.redis_client import get_redis

MODELS_CHANNEL = "tunequeue:models"


def announce(event: Literal["published", "deleted"], *, model_id: str, tenant_id: str, base_model: str,
             storage_key: str, client: redis.Redis | None = None) -> None:
    message = {"event": event, "model": model_id, "tenant_id": tenant_id, "base_model": base_model,
               "storage_key": storage_key}
    (client or get_redis()).publish(MODELS_CHANNEL, json.dumps(message))
