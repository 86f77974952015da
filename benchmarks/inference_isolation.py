"""How much one tenant's inference traffic slows another's short completion (issue 13): the victim's p50/p95
latency of a 2-token chat completion while idle, while an attacker sends maximal prompts in a loop, and while an
attacker tenant holds its generation cap with long streams.

    .venv/bin/python benchmarks/inference_isolation.py [--model var/models/smollm2-135m-instruct | --tiny] \
        [--duration 20] [--attackers 4] [--cap 16] [--threads N] [--json out.json]

One `python -m worker.serve` subprocess on a free port, asked directly with the API's headers (the token and a
tenant, as the API forwards): the isolation under test is serve's own (the API adds a body limit in front of
the same one). Phases, each `--duration` seconds, the victim (tenant `victim`) sending one request after another:

- idle: nobody else;
- maximal prompts: `--attackers` threads of tenant `attacker` in a loop, alternating a chat message of exactly
  the characters serve admits before tokenising (the model's context × its characters per token: tokenised,
  then refused on its token count) and a body just over TUNEQUEUE_MAX_INFERENCE_BODY_BYTES (413);
- at the cap: `--attackers` threads of tenant `attacker` streaming chat completions (n = min(16, cap), as many
  tokens as the context allows, read to the end), over and over; the ones over the cap are 429, retried after
  50 ms.

Printed: each phase's victim requests, p50, p95, p95 over idle, and the attacker's answers by status. The target
(issue 13): p95 within 2× idle. Numbers are recorded in docs/benchmarks.md on a quiet machine, never in a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_stack import ROOT, SERVE_TOKEN, Server, free_port, serve_headers, thread_env  # noqa: E402

SHORT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def char_limit(model: Path) -> tuple[int, int]:
    """(context tokens, characters serve admits before tokenising) for the model, as serve computes them."""
    from transformers import AutoConfig, AutoTokenizer

    from worker.serve.bases import context_length
    from worker.serve.tokenise import chars_per_token

    tokenizer = AutoTokenizer.from_pretrained(model)
    context = context_length(AutoConfig.from_pretrained(model), tokenizer)
    return context, context * chars_per_token(tokenizer)


def victim(url: str, model_id: str, stop: threading.Event) -> list[float]:
    latencies = []
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            started = time.perf_counter()
            resp = client.post(f"{url}/v1/chat/completions", json={"model": model_id, **SHORT},
                               headers=serve_headers("victim"))
            resp.raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


def big_prompts(url: str, model_id: str, chars: int, body_limit: int, stop: threading.Event,
                statuses: Counter[int]) -> None:
    fits = {"model": model_id, "max_tokens": 1, "messages": [{"role": "user", "content": "ab " * (chars // 3)}]}
    over = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "a" * body_limit}]}).encode()
    with httpx.Client(timeout=120) as client:
        turn = 0
        while not stop.is_set():
            if turn % 2 == 0:
                resp = client.post(f"{url}/v1/chat/completions", json=fits, headers=serve_headers("attacker"))
            else:
                resp = client.post(f"{url}/v1/chat/completions", content=over,
                                   headers={**serve_headers("attacker"), "Content-Type": "application/json"})
            statuses[resp.status_code] += 1
            turn += 1


def long_streams(url: str, model_id: str, n: int, max_tokens: int, stop: threading.Event,
                 statuses: Counter[int]) -> None:
    body = {"model": model_id, "n": n, "max_tokens": max_tokens, "stream": True, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Write a very long story."}]}
    with httpx.Client(timeout=600) as client:
        while not stop.is_set():
            with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                               headers=serve_headers("attacker")) as resp:
                statuses[resp.status_code] += 1
                for _ in resp.iter_raw():
                    if stop.is_set():
                        break
            if resp.status_code == 429:
                time.sleep(0.05)


def phase(name: str, url: str, model_id: str, duration: float, attackers: list[Any]) -> dict[str, Any]:
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    threads = [threading.Thread(target=fn, args=(*args, stop, statuses), daemon=True) for fn, args in attackers]
    for thread in threads:
        thread.start()
    if threads:
        time.sleep(min(2.0, duration / 4))  # the attack is under way before the victim starts measuring
    result: list[list[float]] = []
    timer = threading.Timer(duration, stop.set)
    timer.start()
    result.append(victim(url, model_id, stop))
    for thread in threads:
        thread.join(30)
    latencies = result[0]
    return {"phase": name, "requests": len(latencies), "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * percentile(latencies, 0.95), "attacker_statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "var/models/smollm2-135m-instruct")
    parser.add_argument("--tiny", action="store_true", help="the tiny random Llama (built into a temp folder)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--cap", type=int, default=16, help="TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES")
    parser.add_argument("--body-limit", type=int, default=4 * 1024 * 1024,
                        help="TUNEQUEUE_MAX_INFERENCE_BODY_BYTES")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of serve")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tunequeue-isolation-"))
    model, template = args.model, None
    if args.tiny:
        from worker.tiny_model import build_tiny_model

        model, template = work / "tiny-llama", "chatml"
        build_tiny_model(model)
    model_id = "bench-isolation"
    context, chars = char_limit(model)
    port = free_port()
    env = {**os.environ, **thread_env(args.threads), "TUNEQUEUE_SERVE_PORT": str(port),
           "TUNEQUEUE_SERVE_TOKEN": SERVE_TOKEN, "TUNEQUEUE_ARTIFACTS": str(work / "artifacts"),
           "TUNEQUEUE_BASE_MODELS": json.dumps({model_id: {"path": str(model), "template": template}}),
           "TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES": str(args.cap),
           "TUNEQUEUE_MAX_INFERENCE_BODY_BYTES": str(args.body_limit)}
    if args.threads:
        env["TUNEQUEUE_SERVE_THREADS"] = str(args.threads)
    serve = Server("serve", [sys.executable, "-m", "worker.serve"], env, port, work / "serve.log")
    try:
        serve.wait("/healthz")
        with httpx.Client(timeout=300) as client:  # loads the model before anything is timed
            client.post(f"{serve.url}/v1/chat/completions", json={"model": model_id, **SHORT},
                        headers=serve_headers("victim")).raise_for_status()
        n = min(16, args.cap)
        rows = [
            phase("idle", serve.url, model_id, args.duration, []),
            phase("maximal prompts", serve.url, model_id, args.duration,
                  [(big_prompts, (serve.url, model_id, chars, args.body_limit))] * args.attackers),
            phase("at the cap", serve.url, model_id, args.duration,
                  [(long_streams, (serve.url, model_id, n, context // 2))] * args.attackers),
        ]
    finally:
        serve.stop()
        shutil.rmtree(work, ignore_errors=True)
    idle = rows[0]["p95_ms"]
    print(f"model {model} (context {context} tokens, {chars} characters admitted before tokenising); "
          f"cap {args.cap} sequences, {args.attackers} attacker threads, {args.duration:.0f} s per phase")
    print(f"{'phase':<18}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p95/idle':>10}  attacker answers")
    for row in rows:
        row["p95_over_idle"] = row["p95_ms"] / idle
        print(f"{row['phase']:<18}{row['requests']:>9}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
              f"{row['p95_over_idle']:>10.2f}  {row['attacker_statuses']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
