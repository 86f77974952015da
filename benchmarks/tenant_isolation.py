"""One tenant at its caps against another tenant's reads (issue 13, "One tenant's traffic against another's", the
API part): the p95 of tenant B's `GET /jobs/{id}` (paced, well within B's own rate limit) while the API is idle,
then while tenant A holds its maximum of open event streams (TUNEQUEUE_MAX_STREAMS_PER_TENANT, plus as many again
refused) and sends requests:

- `--a-mode caps` (issue 13's case, "one tenant at its caps"): at its rate limit, TUNEQUEUE_RATE_LIMIT_PER_MINUTE
  spread over the minute, after one burst of TUNEQUEUE_RATE_LIMIT_BURST at the start;
- `--a-mode flood`: as fast as its clients can, so it is refused (429) past its limit and those refusals are load
  too: a tenant that ignores Retry-After.

    .venv/bin/python benchmarks/tenant_isolation.py [--a-mode caps|flood] [--seconds 10] [--clients 8]
        [--b-rate 40] [--hammer 32] [--max-streams 50] [--rate-limit 6000] [--burst 100] [--json]

The stack is benchmarks/api_load.py's: the production command (deploy/api.Dockerfile's CMD) on a loopback port over
a scratch database, with the two limits given here. Tenant A is that stack's tenant (its 20 jobs); tenant B gets a
key and a job of its own. Printed: B's p50/p95/p99 idle and loaded and the ratio of the p95s (issue 13's target:
within 2x), A's streams open and refused, and A's answers by status (200 while within its budget, 429 past it).
Results go into docs/benchmarks.md, never into a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.api_load import Stack, machine  # noqa: E402


def percentiles(seconds: list[float]) -> dict[str, float]:
    if len(seconds) < 2:
        return {"n": len(seconds), "p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"n": len(seconds), "p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000, "p99_ms": cuts[98] * 1000}


async def reads_of_b(url: str, key: str, job_id: str, *, clients: int, rate: float, seconds: float
                     ) -> dict[str, Any]:
    """`clients` users (an HTTP client each, as real users are) reading B's job for `seconds`, `rate` requests per
    second in all: paced, so that B stays well within its own rate limit and what is measured is A's effect."""
    import ssl

    import httpx

    tls = ssl.create_default_context()  # one for all clients: built per client it stalls this loop ~45 ms each
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    deadline = time.monotonic() + seconds

    async def user() -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                     verify=tls) as c:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                resp = await c.get(f"/jobs/{job_id}")
                latencies.append(time.perf_counter() - started)
                statuses[resp.status_code] += 1
                await asyncio.sleep(max(0.0, clients / rate - (time.perf_counter() - started)))

    await asyncio.gather(*(user() for _ in range(clients)))
    return {**percentiles(latencies), "statuses": dict(statuses)}


async def tenant_a_at_its_caps(url: str, auth: dict[str, str], job_id: str, *, max_streams: int, hammer: int,
                               burst: int, rate: float | None, ready: Any, stop: Any) -> dict[str, Any]:
    """A's streams (as many as its cap, and as many again that are refused) and its requests, `rate` per second in
    all after a first `burst` (None: as fast as they come back), until `stop` (a process-shared event)."""
    import ssl

    import httpx

    tls = ssl.create_default_context()  # one for all clients: httpx builds one per client otherwise (~45 ms CPU)
    report: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=2 * max_streams + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=auth, limits=limits, verify=tls,
                                 timeout=httpx.Timeout(30, read=None)) as streams:
        opened: list[httpx.Response] = []
        refused = 0
        for _ in range(2 * max_streams):
            resp = await streams.send(streams.build_request("GET", f"/jobs/{job_id}/events?stream=true"),
                                      stream=True)
            if resp.status_code == 200:
                opened.append(resp)
            else:
                refused += 1
                await resp.aclose()
        report.update(streams_open=len(opened), streams_refused=refused)
        statuses: collections.Counter[int] = collections.Counter()
        if rate is not None:  # the bucket starts full: A spends it back to back, then settles at its rate
            for resp in await asyncio.gather(*(streams.get(f"/jobs/{job_id}") for _ in range(burst))):
                statuses[resp.status_code] += 1

        async def user() -> None:
            async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30, verify=tls) as c:
                sent = 0
                started = time.perf_counter()
                while not stop.is_set():
                    statuses[(await c.get(f"/jobs/{job_id}")).status_code] += 1
                    sent += 1
                    if rate is not None:  # this user's share of `rate`, on a fixed schedule (no drift)
                        await asyncio.sleep(max(0.0, started + sent * hammer / rate - time.perf_counter()))

        ready.set()
        await asyncio.gather(*(user() for _ in range(hammer)))
        report["a_statuses"] = dict(statuses)
        for resp in opened:
            await resp.aclose()
    return report


def tenant_a_process(out: Any, *args: Any, **kwargs: Any) -> None:
    """Tenant A in a process of its own, so that its clients' CPU is not lag in B's measurements' event loop."""
    out.put(asyncio.run(tenant_a_at_its_caps(*args, **kwargs)))


async def measure(stack: Stack, b_key: str, b_job: str, args: argparse.Namespace) -> dict[str, Any]:
    import multiprocessing

    # warm-up, not recorded: each API worker's first requests look the key up in Postgres and prepare statements
    await reads_of_b(stack.url, b_key, b_job, clients=args.clients, rate=args.b_rate, seconds=2.0)
    idle = await reads_of_b(stack.url, b_key, b_job, clients=args.clients, rate=args.b_rate, seconds=args.seconds)
    spawn = multiprocessing.get_context("spawn")
    ready, stop, out = spawn.Event(), spawn.Event(), spawn.Queue()
    a = spawn.Process(target=tenant_a_process, args=(out, stack.url, stack.auth, stack.job_id), kwargs={
        "max_streams": args.max_streams, "hammer": args.hammer, "burst": args.burst, "ready": ready, "stop": stop,
        "rate": args.rate_limit / 60 if args.a_mode == "caps" else None})
    a.start()
    while not ready.wait(0.1):
        if not a.is_alive():
            raise SystemExit(f"tenant A's process ended (exit code {a.exitcode}) before it was at its caps")
    loaded = await reads_of_b(stack.url, b_key, b_job, clients=args.clients, rate=args.b_rate,
                              seconds=args.seconds)
    stop.set()
    report = await asyncio.to_thread(out.get, timeout=60)
    a.join(timeout=30)
    return {"idle": idle, "loaded": loaded, "p95_ratio": loaded["p95_ms"] / idle["p95_ms"], **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measurement of B (idle, loaded)")
    parser.add_argument("--clients", type=int, default=8, help="B's concurrent users")
    parser.add_argument("--b-rate", type=float, default=40.0, help="B's requests per second, all users together")
    parser.add_argument("--hammer", type=int, default=32, help="A's concurrent users sending requests")
    parser.add_argument("--max-streams", type=int, default=50, help="TUNEQUEUE_MAX_STREAMS_PER_TENANT")
    parser.add_argument("--rate-limit", type=int, default=6000, help="TUNEQUEUE_RATE_LIMIT_PER_MINUTE")
    parser.add_argument("--burst", type=int, default=100, help="TUNEQUEUE_RATE_LIMIT_BURST")
    parser.add_argument("--a-mode", choices=("caps", "flood"), default="caps",
                        help="A at its rate limit (caps) or as fast as its clients can (flood)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tq-isolation-") as tmp:
        stack = Stack(Path(tmp))
        stack.env.update({"TUNEQUEUE_MAX_STREAMS_PER_TENANT": str(args.max_streams),
                          "TUNEQUEUE_RATE_LIMIT_PER_MINUTE": str(args.rate_limit),
                          "TUNEQUEUE_RATE_LIMIT_BURST": str(args.burst)})
        with stack:
            from common import auth
            from common.db import session_scope
            from tests.support.factories import make_job_row

            with session_scope() as session:
                tenant = auth.create_tenant(session, "bench-b")
                _, b_key = auth.create_key(session, tenant)
                b_tenant = tenant.id
            b_job = make_job_row(b_tenant, "queued")
            result = asyncio.run(measure(stack, b_key, b_job, args))
    result["machine"] = machine()
    result["settings"] = {"a_mode": args.a_mode, "max_streams_per_tenant": args.max_streams,
                          "rate_limit_per_minute": args.rate_limit, "rate_limit_burst": args.burst,
                          "seconds": args.seconds, "b_clients": args.clients, "b_rate": args.b_rate,
                          "a_clients": args.hammer}
    if args.json:
        print(json.dumps(result, default=str))
        return
    print(f"machine: {result['machine']}")
    print(f"tenant A: {result['streams_open']} streams open, {result['streams_refused']} refused; "
          f"its requests by status: {result['a_statuses']}")
    for name in ("idle", "loaded"):
        r = result[name]
        print(f"tenant B GET /jobs/{{id}} {name:6}: n={r['n']:6} p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms"
              f"  p99 {r['p99_ms']:7.1f} ms  statuses {r['statuses']}")
    print(f"p95 loaded / idle: {result['p95_ratio']:.2f}x (issue 13's target: within 2x)")


if __name__ == "__main__":
    main()
