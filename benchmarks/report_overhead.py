"""What progress reporting costs a training step, measured side by side in one run.

    .venv/bin/python benchmarks/report_overhead.py [--steps 15 --batch 8 --seq 256]

The benchmark model is the training benchmark's (benchmarks/train_setup.py: a random Llama, hidden 512, 4
layers, 8 heads, 32,000-row vocabulary) with LoRA r16 on all linear layers, batch 8 × 256 tokens. Two modes
alternate step by step (plain, reporting, plain, …) so that drift and bursts of load hit both alike:

- plain: forward, backward, optimizer step;
- reporting: the same, plus what a logging step adds in the training child — `loss.item()`, the peak-memory
  query, one `Reporter.progress` line on a pipe — while a second process plays the worker parent: it reads that
  pipe and runs the real `ProgressRelay` (Redis at every step; Postgres at most once a second and one metrics
  event per `metrics_event_every` steps) against real Redis and Postgres, exactly as in production.

It also times the child's reporting call alone (many calls, to /dev/null) and the relay's handling of one
event in the parent, which are the precise numbers: the paired step difference is within a step's noise.
It needs Postgres and Redis (TUNEQUEUE_DATABASE_URL's server; a scratch database is made and dropped).
The results go into docs/benchmarks.md, never into a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
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

WARMUP = 3


def relay_side(job_id: str, tenant_id: str, attempt: int) -> None:
    """The worker parent's half: read the child's events from stdin, relay them, print timing stats."""
    from common.settings import get_settings
    from worker.relay import ProgressRelay
    from worker.train.protocol import parse_line

    relay = ProgressRelay(job_id, tenant_id, attempt, get_settings())
    times: list[float] = []
    for line in sys.stdin:
        event = parse_line(line.rstrip("\n"))
        if event is None:
            continue
        start = time.perf_counter()
        relay.handle(event)
        times.append(time.perf_counter() - start)
    # Then as fast as it can: what a much faster GPU step rate would ask of the parent.
    burst, step = 1000, len(times)
    start = time.perf_counter()
    for i in range(burst):
        relay.handle({"type": "progress", "step": step + i, "total_steps": step + burst + 1, "epoch": 1.0,
                      "loss": 1.0, "learning_rate": 1e-4, "grad_norm": 1.0, "tokens_per_second": 1e4,
                      "trained_tokens": i, "eta_seconds": 1.0, "peak_memory_mb": 100.0})
    burst_seconds = time.perf_counter() - start
    print(json.dumps({"handle_seconds": times, "owner": relay.owner, "burst_events_per_second": burst / burst_seconds}))


def claimed_job() -> tuple[str, str, int]:
    from common import auth, state
    from common.db import session_scope
    from common.ids import new_id
    from common.models import File, Job

    with session_scope() as session:
        tenant = auth.create_tenant(session, f"bench-{secrets.token_hex(4)}")
        file = File(id=new_id("file"), tenant_id=tenant.id, filename="bench.jsonl", storage_key="files/none",
                    status="processed", format="chat", stages=["sft"], row_count=1)
        session.add(file)
        session.flush()
        job = Job(id=new_id("ftjob"), tenant_id=tenant.id, base_model="bench", training_file_id=file.id,
                  spec={"stage": "sft"}, status="queued", attempt=0)
        session.add(job)
        session.flush()
        attempt = state.claim(session, job.id, worker="bench:0", lease_seconds=3600)
        assert attempt is not None
        return job.id, tenant.id, attempt


def build_model(device: str, work: Path) -> Any:
    """The training benchmark's CPU model (benchmarks/train_setup.py) with its LoRA: r 16 on all linear layers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from benchmarks.train_setup import build_cpu_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(build_cpu_model(work / "model"))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora).to(device)


def peak_memory_mb(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="steps per mode (the modes alternate)")
    parser.add_argument("--batch", type=int, default=8, help="the training benchmark's batch")
    parser.add_argument("--seq", type=int, default=256, help="the training benchmark's cutoff")
    parser.add_argument("--relay", nargs=3, metavar=("JOB", "TENANT", "ATTEMPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        relay_side(args.relay[0], args.relay[1], int(args.relay[2]))
        return

    url, db_handle = scratch_database()
    os.environ["TUNEQUEUE_DATABASE_URL"] = url  # before anything reads Settings; the relay process inherits it
    try:
        from common.db_setup import upgrade_database

        upgrade_database(url)
        results = run(args)
    finally:
        from common.db import get_engine

        get_engine().dispose()
        drop_database(db_handle)
    print(json.dumps(results, indent=2))
    print(markdown(results))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from common.progress import ProgressChannel
    from common.settings import get_settings
    from worker.train.reporter import Reporter

    device = "cuda" if torch.cuda.is_available() else "cpu"
    job_id, tenant_id, attempt = claimed_job()
    relay = subprocess.Popen([sys.executable, __file__, "--relay", job_id, tenant_id, str(attempt)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=ROOT)
    assert relay.stdin is not None and relay.stdout is not None
    reporter = Reporter(relay.stdin)

    with tempfile.TemporaryDirectory() as work:
        model = build_model(device, Path(work))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batch = torch.randint(0, 2000, (args.batch, args.seq), device=device)
    total = args.steps + WARMUP
    step_counter = 0
    tokens = 0

    def step(report: bool) -> float:
        nonlocal step_counter, tokens
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if report:
            step_counter += 1
            tokens += batch.numel()
            reporter.progress(step=step_counter, total_steps=total, epoch=step_counter / total, loss=loss.item(),
                              learning_rate=1e-4, grad_norm=1.0, tokens_per_second=1000.0, trained_tokens=tokens,
                              eta_seconds=1.0, peak_memory_mb=peak_memory_mb(device))
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(WARMUP):  # warm-up: allocator, kernels, Redis/Postgres connections in the relay
        step(report=True)
    times: dict[str, list[float]] = {"plain": [], "reporting": []}
    for _ in range(args.steps):  # alternate step by step: drift and bursts of load hit both modes alike
        times["plain"].append(step(report=False))
        times["reporting"].append(step(report=True))
    paired = sorted((r - p) / p * 100 for p, r in zip(times["plain"], times["reporting"], strict=True))
    relay.stdin.close()
    relay_stats = json.loads(relay.stdout.read().strip().splitlines()[-1])
    relay.wait(timeout=60)
    assert relay_stats["owner"], "the relay lost ownership of the scratch job"
    handled = sorted(relay_stats["handle_seconds"][WARMUP:])  # the first events open connections

    # The child's reporting call alone, many times, into /dev/null (no reader to wait for).
    with open(os.devnull, "w") as sink:
        quiet = Reporter(sink)
        calls = 20_000
        start = time.perf_counter()
        for i in range(calls):
            quiet.progress(step=i, total_steps=calls, epoch=0.5, loss=1.2345, learning_rate=1e-4, grad_norm=0.9,
                           tokens_per_second=12345.6, trained_tokens=i * 512, eta_seconds=42.0,
                           peak_memory_mb=peak_memory_mb(device))
        report_us = (time.perf_counter() - start) / calls * 1e6
    ProgressChannel().clear(job_id)

    plain, reporting = statistics.median(times["plain"]), statistics.median(times["reporting"])
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   + (torch.cuda.get_device_name() if device == "cuda" else "no GPU"),
        "device": device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "batch": args.batch, "seq": args.seq,
        "steps_per_mode": len(times["plain"]), "metrics_event_every": get_settings().metrics_event_every,
        "step_ms_plain_median": plain * 1000, "step_ms_reporting_median": reporting * 1000,
        "step_ms_plain_stdev": statistics.stdev(times["plain"]) * 1000,
        "paired_difference_pct_median": statistics.median(paired),
        "paired_difference_pct_iqr": [paired[len(paired) // 4], paired[3 * len(paired) // 4]],
        "child_report_us_per_step": report_us, "child_report_pct_of_step": report_us / 1e6 / plain * 100,
        "relay_events": len(handled), "relay_handle_ms_median": statistics.median(handled) * 1000,
        "relay_handle_ms_p95": handled[int(len(handled) * 0.95)] * 1000,
        "relay_handle_pct_of_step": statistics.median(handled) / plain * 100,
        "relay_burst_events_per_second": relay_stats["burst_events_per_second"],
    }


def markdown(r: dict[str, Any]) -> str:
    return "\n".join([
        f"| machine | {r['machine']} (torch {r['torch']}, {r['torch_threads']} threads, Python {r['python']}) |",
        "| --- | --- |",
        f"| batch × sequence | {r['batch']} × {r['seq']} tokens, {r['steps_per_mode']} steps per mode |",
        f"| step, plain (median) | {r['step_ms_plain_median']:.1f} ms (stdev {r['step_ms_plain_stdev']:.1f} ms) |",
        f"| step, reporting every step (median) | {r['step_ms_reporting_median']:.1f} ms |",
        f"| reporting − plain, paired neighbours (median, IQR) | {r['paired_difference_pct_median']:+.2f}% "
        f"({r['paired_difference_pct_iqr'][0]:+.2f}% … {r['paired_difference_pct_iqr'][1]:+.2f}%) |",
        f"| child: report call per step | {r['child_report_us_per_step']:.1f} µs "
        f"= {r['child_report_pct_of_step']:.4f}% of a step |",
        f"| parent: relay per event (median / p95) | {r['relay_handle_ms_median']:.2f} / "
        f"{r['relay_handle_ms_p95']:.2f} ms = {r['relay_handle_pct_of_step']:.2f}% of a step, in another process |",
        f"| parent: relay throughput, back to back | {r['relay_burst_events_per_second']:.0f} reports/s |",
    ])


if __name__ == "__main__":
    main()
