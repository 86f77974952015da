"""What one key or one tenant may take of the API, counted in Redis so that every API worker shares the count
(docs/security.md, "One tenant's traffic against another's"):

- **requests per minute per key** (`TUNEQUEUE_RATE_LIMIT_PER_MINUTE`, up to `TUNEQUEUE_RATE_LIMIT_BURST` at
  once): a token bucket (GCRA), one Lua script, at most one Redis round trip per request (one per few requests
  of a busy key: `RequestLimiter`) and no database query.
  Over it: `429 rate_limit_exceeded` with `Retry-After`. `LimitRequestRate` is an ASGI middleware (api/main.py)
  that authenticates first (`get_caller`, from the key cache on the hot path), so only a working key is counted,
  under its key id. `/healthz` and `/readyz` take no key and are not counted.
- **open event streams per tenant** (`TUNEQUEUE_MAX_STREAMS_PER_TENANT`): a sorted set of stream ids scored by
  when their lease ends. A stream renews its lease while it runs and removes itself when it ends (a `finally`), and
  a stream whose API worker crashed drops out when its lease ends (`STREAM_LEASE_SECONDS`).

Redis down takes neither down: both fail open (the request or stream goes ahead) and say so in the log, once a
minute per process."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import get_caller
from common.errors import AuthenticationError, RateLimited, TuneQueueError
from common.http_errors import error_response
from common.ids import new_id
from common.redis_client import async_redis, get_redis
from common.settings import get_settings

log = logging.getLogger("tunequeue.api.rate_limits")

UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz"})  # no key, and what probes and load balancers poll
REDIS_TIMEOUT_SECONDS = 0.5  # a Redis that hangs costs a request this much at most, then it fails open
LOG_EVERY_SECONDS = 60.0
MAX_REMEMBERED_KEYS = 10_000  # keys a worker remembers a grant or a refusal of; past it, the lapsed ones are dropped
GRANT_FRACTION = 20  # a worker takes a twentieth of a key's burst per round trip (`grant_size`)
GRANT_SECONDS = 1.0  # and spends it within this, or it is lost to the key
# A stream renews its entry at least this often; an entry not renewed for STREAM_LEASE_SECONDS (its API worker
# crashed, or was killed) no longer counts.
STREAM_LEASE_SECONDS = 60.0
STREAM_RENEW_SECONDS = 20.0
STREAM_CAP_RETRY_SECONDS = 10  # what a refused stream is told to wait: streams end at any time, unannounced


_last_logged: dict[str, float] = {}


def _fail_open(what: str, exc: BaseException) -> None:
    if time.monotonic() - _last_logged.get(what, 0.0) >= LOG_EVERY_SECONDS:
        _last_logged[what] = time.monotonic()
        log.warning("Redis did not answer the %s check (%s: %s); letting requests through unlimited until it does",
                    what, type(exc).__name__, exc)


# --- requests per minute per key ------------------------------------------------------------------------------

# GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): a key's "theoretical arrival time"
# `tat` moves on by one emission interval per request; a request is let through when that leaves `tat` at most
# `burst` intervals ahead of now. So a key may send `burst` requests at once, then one per interval, and never
# more than its rate over any stretch of time: a per-minute count would let it spend a minute's budget in a
# second. Redis' own clock (TIME), so that every API worker and host agrees. A refused request does not move `tat`.
# KEYS: the key's timestamp. ARGV: the interval and the burst's span, in microseconds, and how many requests the
# caller would take at once. Returns {1, requests taken (at least one, at most that many)} or {0, microseconds
# until one more is let through}.
_GCRA_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((span - (tat - now)) / interval)
if room < 1 then return {0, math.ceil(tat + interval - now - span)} end
local take = math.min(room, tonumber(ARGV[3]))
local moved = tat + take * interval
redis.call('SET', KEYS[1], string.format('%d', moved), 'PX', math.ceil((moved - now) / 1000))
return {1, take}
"""


def bucket(limit_per_minute: int, burst: int) -> tuple[int, int]:
    """The emission interval and the burst's span, in microseconds, for `limit_per_minute` requests a minute with
    up to `burst` at once (at most a minute's worth)."""
    interval = max(1, round(60_000_000 / limit_per_minute))
    return interval, interval * max(1, min(burst, limit_per_minute))


def grant_size(limit_per_minute: int, burst: int) -> int:
    """How many requests of a key's bucket a worker takes per round trip: a twentieth of the burst (5 of the
    default 100), one for a small bucket, so that a key's limit stays exact where it is small."""
    return max(1, min(burst, limit_per_minute) // GRANT_FRACTION)


@dataclass
class _Grant:
    count: int  # requests taken from the bucket and not spent yet
    lapses: float  # time.monotonic() after which they are not spent


class RequestLimiter:
    """One per event loop (an asyncio Redis client belongs to the loop that made it).

    - It takes a few requests of a busy key's bucket per Redis round trip (`grant_size`) and spends them itself
      within GRANT_SECONDS; one round trip at a time per key, the requests that arrive meanwhile wait for it and
      are counted into what it takes. What it does not spend in time is lost to the key (at most
      `grant_size - 1` requests a second per worker): the key is never let through more than its bucket holds.
    - It remembers, for each key it refused, when that key's bucket has room again: until then it refuses the key
      without asking Redis (nothing but time makes room: a refused request moves nothing), so a key that ignores
      Retry-After costs no round trip."""

    def __init__(self, url: str) -> None:
        self.redis: aioredis.Redis = async_redis(url, timeout=REDIS_TIMEOUT_SECONDS,
                                                 connect_timeout=REDIS_TIMEOUT_SECONDS, pool_wait=REDIS_TIMEOUT_SECONDS)
        self._script: Any = self.redis.register_script(_GCRA_LUA)  # EVALSHA; loaded on first use
        self._refused_until: dict[str, float] = {}  # key id → time.monotonic() when its bucket has room
        self._grants: dict[str, _Grant] = {}
        self._asking: dict[str, asyncio.Future[None]] = {}  # key id → its round trip in flight
        self._waiting: collections.Counter[str] = collections.Counter()  # key id → requests waiting for it

    async def hit(self, key_id: str, limit: int, burst: int) -> None:
        """Count one request of `key_id`; raises RateLimited when it would pass `limit` per minute (`burst` at
        once)."""
        while True:
            grant = self._grants.get(key_id)
            if grant is not None and grant.count > 0 and time.monotonic() < grant.lapses:
                grant.count -= 1
                return
            until = self._refused_until.get(key_id)
            if until is not None:
                if time.monotonic() < until:
                    raise self._refusal(limit, burst, until - time.monotonic())
                del self._refused_until[key_id]
            asking = self._asking.get(key_id)
            if asking is None:
                if not await self._ask(key_id, limit, burst):
                    return  # Redis did not answer: let it through
                continue
            self._waiting[key_id] += 1
            try:
                await asyncio.shield(asking)  # a waiter that goes away leaves the round trip to the others
            finally:
                self._waiting[key_id] -= 1
                if not self._waiting[key_id]:
                    del self._waiting[key_id]

    async def _ask(self, key_id: str, limit: int, burst: int) -> bool:
        """One round trip for `key_id`: a grant (for this request and those waiting), or a refusal remembered.
        False when Redis did not answer."""
        asking = self._asking[key_id] = asyncio.get_running_loop().create_future()
        try:
            interval, span = bucket(limit, burst)
            want = min(max(1, min(burst, limit)), grant_size(limit, burst) + self._waiting[key_id])
            try:
                allowed, value = await self._script(keys=[f"tunequeue:rate:{key_id}"], args=[interval, span, want])
            except (redis.RedisError, OSError, TimeoutError) as exc:
                _fail_open("request rate", exc)
                return False
            now = time.monotonic()
            if len(self._grants) + len(self._refused_until) >= MAX_REMEMBERED_KEYS:
                self._grants = {k: g for k, g in self._grants.items() if g.lapses > now}
                self._refused_until = {k: t for k, t in self._refused_until.items() if t > now}
            if allowed:
                self._grants[key_id] = _Grant(int(value), now + GRANT_SECONDS)
            else:
                self._refused_until[key_id] = now + int(value) / 1_000_000
            return True
        finally:
            del self._asking[key_id]
            asking.set_result(None)

    @staticmethod
    def _refusal(limit: int, burst: int, seconds: float) -> RateLimited:
        wait = max(1, math.ceil(seconds))
        return RateLimited(
            f"Rate limit reached: this API key may make {limit} requests per minute, {min(burst, limit)} at once "
            f"(TUNEQUEUE_RATE_LIMIT_PER_MINUTE, TUNEQUEUE_RATE_LIMIT_BURST); retry after {wait} s (the "
            f"Retry-After header).", retry_after=wait)


_limiters: dict[tuple[asyncio.AbstractEventLoop, str], RequestLimiter] = {}


def get_limiter() -> RequestLimiter:
    loop, url = asyncio.get_running_loop(), get_settings().redis_url
    limiter = _limiters.get((loop, url))
    if limiter is None:
        for old in [other for other in _limiters if other[0].is_closed()]:
            del _limiters[old]
        limiter = _limiters[(loop, url)] = RequestLimiter(url)
    return limiter


class LimitRequestRate:
    """The app's outermost check, pure ASGI (api/main.py): a request with a working key is counted against it
    before routing, so a refused one costs its authentication (from the key cache), at most one Redis round trip
    and a small JSON answer, not FastAPI's routing and dependencies. A request without a key, or with one that
    does not work, goes on to its route, which refuses it (401) or serves it (`/healthz`, `/readyz`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = await self._refusal(scope)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refusal(scope: Scope) -> TuneQueueError | None:
        settings = get_settings()
        if not settings.rate_limit_per_minute:
            return None
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if authorization is None or path in UNCOUNTED_PATHS:
            return None
        try:
            caller = await get_caller(authorization.decode("latin-1"))  # the route's own then hits the cache
        except AuthenticationError:
            return None  # the route says why
        except TuneQueueError as exc:  # the key lookup could not run (503): the route would answer the same
            return exc
        except Exception:  # noqa: BLE001 - the route meets it again, and its handler logs and answers it
            return None
        try:
            await get_limiter().hit(caller.key_id, settings.rate_limit_per_minute, settings.rate_limit_burst)
        except RateLimited as exc:
            return exc
        return None


# --- open event streams per tenant ----------------------------------------------------------------------------

# KEYS: the tenant's set. ARGV: now, this entry's lease end, its id, the cap, the set's TTL.
_OPEN_STREAM_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def streams_key(tenant_id: str) -> str:
    return f"tunequeue:tenant:{tenant_id}:streams"


class StreamLease:
    """One open stream's place in its tenant's count: `renew` while it runs, `release` once it ends. A lease
    taken while Redis was down (`counted` False) does nothing."""

    def __init__(self, tenant_id: str, stream_id: str, *, counted: bool, client: redis.Redis) -> None:
        self.key = streams_key(tenant_id)
        self.stream_id = stream_id
        self.counted = counted
        self.redis = client
        self.renewed = time.monotonic()

    def renew_if_due(self) -> None:
        """Push the lease on (a plain ZADD: an entry dropped after a long stall comes back)."""
        if not self.counted or time.monotonic() - self.renewed < STREAM_RENEW_SECONDS:
            return
        self.renewed = time.monotonic()
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.key, {self.stream_id: time.time() + STREAM_LEASE_SECONDS})
            pipe.expire(self.key, math.ceil(STREAM_LEASE_SECONDS))
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            _fail_open("open streams", exc)

    def release(self) -> None:
        """Synchronous on purpose: it runs in the stream's `finally`, also when the client went away and the
        stream's task is being cancelled (an `await` there would be cancelled in turn). One ZREM on Redis."""
        if not self.counted:
            return
        self.counted = False
        try:
            self.redis.zrem(self.key, self.stream_id)
        except (redis.RedisError, OSError) as exc:  # the lease ends by itself
            _fail_open("open streams", exc)


def open_stream(tenant_id: str) -> StreamLease:
    """A place for one more stream of `tenant_id`, or RateLimited (`too_many_streams`) when it has
    TUNEQUEUE_MAX_STREAMS_PER_TENANT open. Synchronous: the stream's route opens it in its thread."""
    cap = get_settings().max_streams_per_tenant
    client = get_redis()
    stream_id = new_id("stream")
    if not cap:
        return StreamLease(tenant_id, stream_id, counted=False, client=client)
    now = time.time()
    try:
        allowed = client.eval(_OPEN_STREAM_LUA, 1, streams_key(tenant_id), now, now + STREAM_LEASE_SECONDS,
                              stream_id, cap, math.ceil(STREAM_LEASE_SECONDS))
    except (redis.RedisError, OSError) as exc:
        _fail_open("open streams", exc)
        return StreamLease(tenant_id, stream_id, counted=False, client=client)
    if not allowed:
        raise RateLimited(
            f"This organization already has {cap} event streams open (TUNEQUEUE_MAX_STREAMS_PER_TENANT); close one, "
            f"or follow a job with GET /jobs/{{id}} instead, and retry after {STREAM_CAP_RETRY_SECONDS} s.",
            retry_after=STREAM_CAP_RETRY_SECONDS, code="too_many_streams")
    return StreamLease(tenant_id, stream_id, counted=True, client=client)
