"""`/metrics`: Prometheus text that prometheus_client's own parser reads, for admins only, whose numbers follow
jobs through the real state machine and relay (the real training job's counters: tests/e2e/test_progress.py)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from common.ids import new_id
from common.progress import ProgressChannel
from common.worker_registry import WorkerRegistry
from tests.support.factories import make_tenant
from tests.support.http import assert_error, auth
from tests.support.jobs import claim, finish, progress, queued_job, relay


def scrape(client: Any, key: str) -> dict[str, Any]:
    """{family name: {(sample name, frozenset(labels)): value}}"""
    resp = client.get("/metrics", headers=auth(key))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(resp.text):
        out[family.name] = {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}
    return out


def value(metrics: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    return float(metrics[family].get((sample or family, frozenset(labels.items())), 0.0))


def test_metrics_need_an_operator_key_and_a_tenant_admin_is_refused(client, tenant) -> None:  # type: ignore[no-untyped-def]
    _, tenant_admin = make_tenant(role="admin")
    assert_error(client.get("/metrics"), 401)
    assert_error(client.get("/metrics", headers=auth(tenant[1])), 403, "permission_denied")
    assert_error(client.get("/metrics", headers=auth(tenant_admin)), 403, "permission_denied")


def test_metrics_parse_and_move_with_jobs(client, tenant) -> None:  # type: ignore[no-untyped-def]
    _, admin = make_tenant(role="operator")
    tenant_id, key = tenant
    before = scrape(client, admin)
    for family in ("tunequeue_jobs", "tunequeue_queue_depth", "tunequeue_trained_tokens",
                   "tunequeue_job_duration_seconds", "tunequeue_http_request_duration_seconds",
                   "tunequeue_workers", "tunequeue_scrape_source_up"):
        assert family in before, family
    assert value(before, "tunequeue_scrape_source_up", source="postgres") == 1
    assert value(before, "tunequeue_scrape_source_up", source="redis") == 1
    assert {dict(labels)["state"] for _, labels in before["tunequeue_jobs"]} >= {
        "validating_files", "queued", "running", "succeeded", "failed", "cancelled"}

    job_id = queued_job(tenant_id)
    mid = scrape(client, admin)
    assert value(mid, "tunequeue_queue_depth") == value(before, "tunequeue_queue_depth") + 1
    attempt = claim(job_id)
    r = relay(job_id, tenant_id, attempt)
    r.handle(progress(4, total=4, trained_tokens=5000))
    assert client.get(f"/jobs/{job_id}", headers=auth(key)).status_code == 200
    finish(job_id, attempt)
    after = scrape(client, admin)

    tokens = "tunequeue_trained_tokens", "tunequeue_trained_tokens_total"
    assert value(after, *tokens) - value(before, *tokens) >= 5000
    assert value(after, "tunequeue_jobs", state="succeeded") == value(before, "tunequeue_jobs", state="succeeded") + 1
    count = "tunequeue_job_duration_seconds", "tunequeue_job_duration_seconds_count"
    assert value(after, *count, state="succeeded") == value(before, *count, state="succeeded") + 1
    bucket = "tunequeue_job_duration_seconds", "tunequeue_job_duration_seconds_bucket"
    assert value(after, *bucket, state="succeeded", le="+Inf") == value(after, *count, state="succeeded")
    latency = "tunequeue_http_request_duration_seconds", "tunequeue_http_request_duration_seconds_count"
    assert value(after, *latency, method="GET", route="/jobs/{job_id}", status="200") >= 1
    assert value(after, *latency, method="GET", route="/metrics", status="200") >= 1
    assert not any(job_id in dict(labels).get("route", "") for _, labels in after[latency[0]]), \
        "routes are templates, never ids"
    ProgressChannel().clear(job_id)


def test_worker_gpus_are_gauges(client) -> None:  # type: ignore[no-untyped-def]
    _, admin = make_tenant(role="operator")
    host = f"test-host-{new_id('h')[-8:]}"
    registry = WorkerRegistry()
    gpu = {"index": 0, "memory_used_mb": 2048.0, "memory_total_mb": 81559.0, "process_memory_mb": 1500.0,
           "utilization_pct": 50.0, "temperature_c": 61.0, "power_w": 300.5}
    registry.register(host, "0", {"host": host, "worker": f"{host}:7", "gpu": gpu, "job_id": "ftjob-x",
                                        "process_rss_mb": 100.0, "updated_at": time.time()}, 30)
    try:
        got = scrape(client, admin)
        labels = {"host": host, "gpu": "0", "worker": f"{host}:7"}
        assert value(got, "tunequeue_gpu_memory_used_bytes", **labels) == 2048 * 1024 * 1024
        assert value(got, "tunequeue_gpu_memory_total_bytes", **labels) == 81559 * 1024 * 1024
        assert value(got, "tunequeue_gpu_job_memory_bytes", **labels) == 1500 * 1024 * 1024
        assert value(got, "tunequeue_gpu_utilization_ratio", **labels) == 0.5
        assert value(got, "tunequeue_gpu_temperature_celsius", **labels) == 61
        assert value(got, "tunequeue_gpu_power_watts", **labels) == 300.5
        assert value(got, "tunequeue_worker_busy", **labels) == 1
        assert value(got, "tunequeue_workers") >= 1
    finally:
        registry.unregister(host, "0")
