"""`/metrics` in the Prometheus text format, for an admin key (`authorization` in the scrape config).

Job and queue numbers are read from Postgres at scrape time and GPU numbers from the workers' registrations in
Redis, so every API replica reports the same truth and nothing is lost when one restarts. Only the HTTP latency
histogram is per process (label `instance` tells replicas apart). It measures the time to the response's
headers: for a Server-Sent Events stream that is the time to open it, not how long a client followed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import OperatorDbCaller
from common.db import session_scope
from common.models import Job
from common.state import STATUSES
from common.worker_registry import WorkerRegistry

log = logging.getLogger("tunequeue.api")

REGISTRY = CollectorRegistry(auto_describe=False)

HTTP_LATENCY = Histogram(
    "tunequeue_http_request_duration_seconds",
    "HTTP request latency (to the response headers) by method, route template and status code.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

JOB_DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
MIB = 1024 * 1024


class ServiceCollector(Collector):
    """Collected on every scrape. A source that does not answer is reported as `tunequeue_scrape_source_up 0`
    rather than failing the scrape, so the other numbers still arrive."""

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("tunequeue_scrape_source_up", "Whether a source answered this scrape.",
                               labels=["source"])
        try:
            yield from self._postgres()
            up.add_metric(["postgres"], 1)
        except Exception as exc:
            log.warning("metrics: Postgres did not answer: %s", exc)
            up.add_metric(["postgres"], 0)
        try:
            yield from self._workers()
            up.add_metric(["redis"], 1)
        except Exception as exc:
            log.warning("metrics: Redis did not answer: %s", exc)
            up.add_metric(["redis"], 0)
        yield up

    def _postgres(self) -> list[Metric]:
        duration = func.extract("epoch", Job.finished_at - Job.started_at)
        with session_scope() as session:
            by_state = {status: int(n) for status, n in
                        session.execute(select(Job.status, func.count()).group_by(Job.status)).all()}
            tokens = session.scalar(select(func.coalesce(func.sum(Job.trained_tokens), 0)))
            finished = session.execute(
                select(Job.status, func.count(), func.coalesce(func.sum(duration), 0),
                       *[func.count().filter(duration <= b) for b in JOB_DURATION_BUCKETS])
                .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
                .group_by(Job.status)
            ).all()
        jobs = GaugeMetricFamily("tunequeue_jobs", "Jobs by state.", labels=["state"])
        for name in STATUSES:
            jobs.add_metric([name], int(by_state.get(name, 0)))
        depth = GaugeMetricFamily("tunequeue_queue_depth", "Jobs waiting for a worker (state queued).",
                                  value=int(by_state.get("queued", 0)))
        trained = CounterMetricFamily("tunequeue_trained_tokens", "Tokens trained, over all jobs (running "
                                      "jobs included).", value=int(tokens or 0))
        hist = HistogramMetricFamily("tunequeue_job_duration_seconds", "Run time (start to end) of finished "
                                     "jobs, by final state.", labels=["state"])
        for row in finished:
            status, count, total, *cumulative = row
            buckets: list[tuple[str, float]] = [(str(b), int(c)) for b, c in zip(JOB_DURATION_BUCKETS, cumulative,
                                                                              strict=True)]
            buckets.append(("+Inf", int(count)))
            hist.add_metric([status], buckets, sum_value=float(total))
        return [jobs, depth, trained, hist]

    def _workers(self) -> list[Metric]:
        regs = WorkerRegistry().registrations()
        labels = ["host", "gpu", "worker"]
        workers = GaugeMetricFamily("tunequeue_workers", "Registered worker slots (one per GPU).", value=len(regs))
        busy = GaugeMetricFamily("tunequeue_worker_busy", "1 while the worker runs a job.", labels=labels)
        used = GaugeMetricFamily("tunequeue_gpu_memory_used_bytes", "GPU memory in use.", labels=labels)
        total = GaugeMetricFamily("tunequeue_gpu_memory_total_bytes", "GPU memory.", labels=labels)
        job_mem = GaugeMetricFamily("tunequeue_gpu_job_memory_bytes", "GPU memory the running job holds.",
                                    labels=labels)
        util = GaugeMetricFamily("tunequeue_gpu_utilization_ratio", "GPU utilization (0–1).", labels=labels)
        temp = GaugeMetricFamily("tunequeue_gpu_temperature_celsius", "GPU temperature.", labels=labels)
        power = GaugeMetricFamily("tunequeue_gpu_power_watts", "GPU power draw.", labels=labels)
        rss = GaugeMetricFamily("tunequeue_job_process_rss_bytes", "Host memory of the running job's process.",
                                labels=labels)
        for reg in regs:
            gpu: dict[str, Any] = reg.get("gpu") or {}
            key = [str(reg.get("host") or ""), str(gpu.get("index", "none")), str(reg.get("worker") or "")]
            busy.add_metric(key, 1 if reg.get("job_id") else 0)
            for family, value, scale in ((used, gpu.get("memory_used_mb"), MIB),
                                         (total, gpu.get("memory_total_mb"), MIB),
                                         (job_mem, gpu.get("process_memory_mb"), MIB),
                                         (util, gpu.get("utilization_pct"), 0.01),
                                         (temp, gpu.get("temperature_c"), 1),
                                         (power, gpu.get("power_w"), 1),
                                         (rss, reg.get("process_rss_mb") if reg.get("job_id") else None, MIB)):
                if isinstance(value, int | float):
                    family.add_metric(key, float(value) * scale)
        return [workers, busy, used, total, job_mem, util, temp, power, rss]


REGISTRY.register(ServiceCollector())


class HttpMetricsMiddleware:
    """Pure ASGI (a streaming response passes through untouched). The route label is the matched template
    (`/jobs/{job_id}`), `unmatched` otherwise, so ids never blow up the label set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_LATENCY.labels(scope.get("method", ""), template, str(status)).observe(time.perf_counter() - start)

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            observe(500)  # no-op unless the app failed before it answered


router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(_: OperatorDbCaller) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
