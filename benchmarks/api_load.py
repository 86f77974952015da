"""The API under concurrent load (issue 12): a concurrency sweep with `hey` (Debian's package) of `/healthz` and
the authenticated routes, side by side in one run.

    .venv/bin/python benchmarks/api_load.py [--concurrency 1,8,32,64,128,256] [--repeats 3] [--seconds 5]
        [--timeout 10] [--routes healthz,get_job,list_jobs,get_file,post_job] [--json]

The stack: the API started with its production command (deploy/api.Dockerfile's CMD, which docker-compose.yml
runs; tests/support/api_process.py reads it) on a loopback port, over a scratch Postgres database next to
TUNEQUEUE_DATABASE_URL's (made and dropped here) and Redis as the broker. No worker runs: `POST /jobs` only needs
the broker (its `jobs.validate` message waits on a queue of this run's own, where it is counted, then dropped).

Each cell (route × concurrency): `hey -z <seconds>s -c <c> -t <timeout>` (every request has a deadline, so a wedged
API shows as errors, not as a hung script). Within a repeat, every concurrency measures `/healthz` first and the
routes right after it, so that the ratio route / healthz compares neighbours in time. Printed per route and
concurrency: good req/s (2xx answers per second: hey's own req/s counts errors too), p50 and p99 latency (hey's,
over the answered requests; under 100 answers the p99 is the slowest), non-2xx answers and errors (timeouts,
refused connections), the ratio to /healthz at the same concurrency in the same repeat; with --repeats N the median
and the range over the repeats.
For POST /jobs (one tenant, one processed file, no Idempotency-Key, so that every request is a new job): the rows and
broker messages each cell added, against its 2xx count (rows < 2xx: a lost job; messages ≠ rows: a lost or doubled
enqueue; rows > 2xx: requests that timed out at the client but were committed).
The machine: CPU, cores, the load average before and after the sweep. Results go into docs/benchmarks.md ("API
under load"), never into a timed test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scratch_db import drop_database, scratch_database  # noqa: E402

ROUTES = ("healthz", "get_job", "list_jobs", "get_file", "post_job")
LABELS = {"healthz": "GET /healthz", "get_job": "GET /jobs/{id}", "list_jobs": "GET /jobs",
          "get_file": "GET /files/{id}", "post_job": "POST /jobs"}
SPEC = {"base_model": "tiny-llama", "stage": "sft",
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}},
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 128}}


def ensure_hey() -> str:
    found = shutil.which("hey")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("hey is missing: apt-get install -y hey", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "hey"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("hey")
        if found:
            return found
    raise SystemExit("this benchmark needs `hey`: `sudo apt-get install -y hey` (Debian/Ubuntu), or "
                     "`go install github.com/rakyll/hey@latest` and put it on PATH")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse_hey(text: str) -> dict[str, Any]:
    """hey's text summary: total seconds, status codes, errors, the latency percentiles (seconds)."""
    total = re.search(r"Total:\s+([\d.]+) secs", text)
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors_block = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", errors_block, re.M))
    pct = {int(p): float(s) for p, s in re.findall(r"^\s+(\d+)%+ in ([\d.]+) secs", text, re.M)}
    slowest = re.search(r"Slowest:\s+([\d.]+) secs", text)
    if 99 not in pct and pct and slowest:
        pct[99] = float(slowest.group(1))  # under 100 answers hey prints no 99%: nearest rank, the slowest
    seconds = float(total.group(1)) if total else float("nan")
    ok = sum(n for c, n in codes.items() if 200 <= c < 300)
    return {"seconds": seconds, "codes": codes, "ok": ok, "non_2xx": sum(codes.values()) - ok, "errors": errors,
            "good_rps": ok / seconds if seconds > 0 else 0.0, "p50_ms": pct.get(50, float("nan")) * 1000,
            "p99_ms": pct.get(99, float("nan")) * 1000}


class Stack:
    """The scratch database, the production API on a free port, a tenant with a key, a file and some jobs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.queue = f"tunequeue.bench.{secrets.token_hex(4)}"
        self.url_db, self.handle = scratch_database()
        from sqlalchemy.engine import make_url

        # Production, as deployed: it needs a serve token to start (no serve runs: no inference is measured), and a
        # database URL with a password (the local Postgres trusts loopback and ignores the one given here).
        with_password = make_url(self.url_db).set(password=make_url(self.url_db).password or "not-a-default-password")
        self.env = {**os.environ, "TUNEQUEUE_DATABASE_URL": with_password.render_as_string(hide_password=False),
                    "TUNEQUEUE_ENVIRONMENT": "production",
                    "TUNEQUEUE_SERVE_TOKEN": secrets.token_hex(32),
                    # One key drives every cell: the per-key rate limit stays on (its Redis round trip is part of
                    # each request's cost) but at a rate no cell reaches.
                    "TUNEQUEUE_RATE_LIMIT_PER_MINUTE": "100000000",
                    "TUNEQUEUE_ARTIFACTS": str(work / "artifacts"), "TUNEQUEUE_WORK_DIR": str(work / "work"),
                    "TUNEQUEUE_CELERY_QUEUE": self.queue, "TUNEQUEUE_VALIDATE_QUEUE": f"{self.queue}.validate",
                    "TUNEQUEUE_BASE_MODELS": json.dumps({"tiny-llama": {"path": str(work / "tiny-llama"),
                                                                        "template": "chatml"}})}
        os.environ.update(self.env)  # this process's Settings: the same database, queues and models
        self._api: Any = None

    def __enter__(self) -> Stack:
        import httpx

        from common import auth
        from common.db import session_scope
        from common.db_setup import upgrade_database
        from tests.support.api_process import production_api

        upgrade_database(self.url_db)
        with session_scope() as session:
            tenant = auth.create_tenant(session, f"bench-{secrets.token_hex(4)}")
            _, self.key = auth.create_key(session, tenant)
            self.tenant_id = tenant.id
        (self.work / "logs").mkdir()
        self._api = production_api(self.work / "logs", self.env)
        self.url, self.command = self._api.__enter__()
        rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                {"role": "assistant", "content": "answer"}]}) + "\n"
                       for i in range(16))
        with httpx.Client(base_url=self.url, headers=self.auth, timeout=60) as client:
            up = client.post("/files", files={"file": ("train.jsonl", rows.encode(), "application/jsonl")},
                             data={"purpose": "fine-tune"})
            up.raise_for_status()
            self.file_id = up.json()["id"]
            self.spec = {**SPEC, "training_file": self.file_id}
            jobs = [client.post("/jobs", json=self.spec) for _ in range(20)]
            for j in jobs:
                j.raise_for_status()
            self.job_id = jobs[0].json()["id"]
        (self.work / "spec.json").write_text(json.dumps(self.spec))
        return self

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def hey_args(self, route: str) -> list[str]:
        header = ["-H", f"Authorization: Bearer {self.key}"]
        return {
            "healthz": [f"{self.url}/healthz"],
            "get_job": [*header, f"{self.url}/jobs/{self.job_id}"],
            "list_jobs": [*header, f"{self.url}/jobs?limit=20"],
            "get_file": [*header, f"{self.url}/files/{self.file_id}"],
            "post_job": [*header, "-m", "POST", "-T", "application/json", "-D", str(self.work / "spec.json"),
                         f"{self.url}/jobs"],
        }[route]

    def counts(self) -> tuple[int, int]:
        """(job rows of the tenant, jobs.validate messages waiting on the broker)."""
        from sqlalchemy import func, select

        from common.db import session_scope
        from common.models import Job
        from common.redis_client import get_redis
        from tests.support.api_process import broker_job_ids

        with session_scope() as session:
            rows = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == self.tenant_id))
        return int(rows or 0), len(broker_job_ids(get_redis(), f"{self.queue}.validate"))

    def __exit__(self, *exc: object) -> None:
        from common.db import get_engine
        from common.redis_client import get_redis

        try:
            if self._api is not None:
                self._api.__exit__(None, None, None)
            get_redis().delete(self.queue, f"{self.queue}.validate")
        finally:
            get_engine().dispose()
            drop_database(self.handle)


def run_cell(hey: str, stack: Stack, route: str, concurrency: int, seconds: float, timeout: int) -> dict[str, Any]:
    before = stack.counts() if route == "post_job" else None
    cmd = [hey, "-z", f"{seconds}s", "-c", str(concurrency), "-t", str(timeout), *stack.hey_args(route)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    cell = parse_hey(out.stdout)
    # A wedge left over from this cell would otherwise be charged to the next one; requests that timed out at hey
    # may still commit meanwhile, so the rows are counted after it.
    cell["settle_s"] = settle(stack)
    if before is not None:
        after = stack.counts()
        cell["rows_added"], cell["messages_added"] = after[0] - before[0], after[1] - before[1]
    return cell


def settle(stack: Stack, limit: float = 60) -> float:
    """Seconds until GET /jobs/{id} answers 200 again (inf after `limit`)."""
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            if httpx.get(f"{stack.url}/jobs/{stack.job_id}", headers=stack.auth, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return float("inf")


def summarise(repeats: list[dict[str, dict[int, dict[str, Any]]]], routes: list[str],
              concurrencies: list[int]) -> list[dict[str, Any]]:
    """One row per route × concurrency: median and range over the repeats; the ratio to /healthz per repeat."""
    table = []
    for route in routes:
        for c in concurrencies:
            cells = [r[route][c] for r in repeats if c in r.get(route, {})]
            if not cells:
                continue
            ratios = [r[route][c]["good_rps"] / r["healthz"][c]["good_rps"] for r in repeats
                      if "healthz" in r and r["healthz"][c]["good_rps"] > 0]

            def stat(values: list[float]) -> dict[str, float]:
                return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values \
                    else {"median": float("nan"), "min": float("nan"), "max": float("nan")}

            row: dict[str, Any] = {
                "route": LABELS[route], "concurrency": c, "good_rps": stat([x["good_rps"] for x in cells]),
                "p50_ms": stat([x["p50_ms"] for x in cells]), "p99_ms": stat([x["p99_ms"] for x in cells]),
                "non_2xx": sum(x["non_2xx"] for x in cells), "errors": sum(x["errors"] for x in cells),
                "ok": sum(x["ok"] for x in cells), "ratio_to_healthz": stat(ratios),
                "settle_s": max(x.get("settle_s", 0.0) for x in cells),
            }
            if route == "post_job":
                row["rows_added"] = sum(x["rows_added"] for x in cells)
                row["messages_added"] = sum(x["messages_added"] for x in cells)
            table.append(row)
    return table


def finite(value: Any) -> Any:
    """NaN (no answer to take a percentile of) and infinity (never settled) as null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def fmt(s: dict[str, float], digits: int = 0, n: int = 1) -> str:
    if n == 1:
        return f"{s['median']:,.{digits}f}"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32,64,128,256")
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each hey run (-z)")
    parser.add_argument("--timeout", type=int, default=10, help="hey's per-request timeout in seconds (-t)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    routes = [r for r in args.routes.split(",") if r]
    unknown = set(routes) - set(ROUTES)
    if unknown:
        raise SystemExit(f"unknown routes {sorted(unknown)}; choose from {','.join(ROUTES)}")
    if "healthz" not in routes:
        routes.insert(0, "healthz")  # the side-by-side reference is always measured
    hey = ensure_hey()
    info = {**machine(), "load_before": loadavg()}
    repeats: list[dict[str, dict[int, dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="tunequeue-apiload-") as tmp, Stack(Path(tmp)) as stack:
        info["api_command"] = " ".join(Path(stack.command[0]).name if i == 0 else a
                                       for i, a in enumerate(stack.command))
        for rep in range(args.repeats):
            result: dict[str, dict[int, dict[str, Any]]] = {r: {} for r in routes}
            for c in concurrencies:
                for route in routes:
                    cell = run_cell(hey, stack, route, c, args.seconds, args.timeout)
                    cell["load"] = loadavg()
                    result[route][c] = cell
                    if not args.json:
                        print(f"  repeat {rep + 1} c={c:>3} {LABELS[route]:<16} {cell['good_rps']:>8,.0f} req/s "
                              f"p50 {cell['p50_ms']:>7.1f} ms p99 {cell['p99_ms']:>8.1f} ms "
                              f"non-2xx {cell['non_2xx']} errors {cell['errors']} load {cell['load'][0]}",
                              file=sys.stderr, flush=True)
            repeats.append(result)
    info["load_after"] = loadavg()
    table = summarise(repeats, routes, concurrencies)
    settings = {"concurrency": concurrencies, "repeats": args.repeats, "seconds": args.seconds,
                "timeout": args.timeout, "hey": hey}
    if args.json:
        print(json.dumps(finite({"machine": info, "settings": settings, "table": table, "repeats": repeats})))
        return
    n = args.repeats
    print(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; load average "
          f"{info['load_before']} before, {info['load_after']} after")
    print(f"api: {info['api_command']}; hey -z {args.seconds}s -t {args.timeout}; {n} repeat(s)"
          + ("; median (min–max)" if n > 1 else ""))
    print("| route | clients | good req/s | p50 ms | p99 ms | × /healthz | non-2xx | errors "
          "| jobs: 2xx / rows / messages |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in table:
        counts = (f"{row['ok']} / {row['rows_added']} / {row['messages_added']}" if "rows_added" in row else "")
        print(f"| {row['route']} | {row['concurrency']} | {fmt(row['good_rps'], 0, n)} | {fmt(row['p50_ms'], 1, n)} | "
              f"{fmt(row['p99_ms'], 1, n)} | {fmt(row['ratio_to_healthz'], 2, n)} | {row['non_2xx']} | "
              f"{row['errors']} | {counts} |")
    wedged = [r for r in table if r["settle_s"] > 1]
    for r in wedged:
        print(f"note: after {r['route']} at {r['concurrency']} clients the API took {r['settle_s']:.1f} s "
              "to answer GET /jobs/{id} again")


if __name__ == "__main__":
    main()
