"""Generated tokens/s and request latency of `serve` with 1 and 8 (or 32) distinct adapters asked round-robin by
concurrent clients — asked directly and through the API — against `llamafactory-cli api` (and, on the toy model,
a naive server); and the time from publish to first token.

    .venv/bin/python benchmarks/serve_adapters.py --real-model --api --threads 1 --dtype auto,bfloat16 \
        --rounds 3 --requests 48 --max-tokens 64 --llamafactory var/peers/llamafactory/bin/llamafactory-cli \
        [--json out.json]

The model: with --real-model, SmolLM2-135M-Instruct (var/models/smollm2-135m-instruct, bf16 safetensors) and
random rank-16 LoRA adapters on every linear layer (non-zero B), registered under its own chat template;
without it, a random Llama of ~19M parameters (hidden 512, 7 layers, the tiny model's tokenizer and ChatML
template) and random rank-8 adapters. Every server is a separate process on this machine, asked over HTTP with the
same chat request (greedy, `max_tokens` new tokens), the same number of requests (--requests) for every system
and client count; tokens/s is the sum of the `usage.completion_tokens` the servers report over the wall time of
the whole load; latency is each request's, send to last byte.

- serve direct: `python -m worker.serve`; toy adapters announced on Redis (`tunequeue:models`) as the worker
  announces them; with --api, the stack's registered adapters (see benchmarks/serve_stack.py);
- serve through the API (--api): a scratch Postgres database, migrated; a tenant with an API key; each adapter the
  model of a finished job of that tenant (the services' and the worker's own publish functions); `uvicorn
  api.main:app --proxy-headers` in front of the same `serve`; every request carries the key, so each one is
  authenticated, its model's ownership checked in Postgres and the answer relayed;
- naive (toy model only): this script as a server (`--naive-server`): loads the requested adapter onto the base
  model for each request (PEFT), generates with `generate`, unloads it; one request at a time;
- llamafactory: `llamafactory-cli api` with the first adapter merged at start-up (its way of serving an
  adapter), template `chatml`, when --llamafactory names the CLI of a venv that has LLaMA-Factory (never a
  project dependency; benchmarks/install_peers.sh makes one). The dtype it really loads is read from its own
  ChatModel once per dtype (untimed) and reported.

--dtype: serve's TUNEQUEUE_SERVE_DTYPE and LLaMA-Factory's `infer_dtype` (a comma list measures each in every
round). `--micro` adds one decode step's forward time (batch 8): PEFT's `adapter_names=` mixed batch against the
adapter bank `serve` uses. The results go into docs/benchmarks.md, never into a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.serve_stack import (  # noqa: E402
    REAL_BASE_ID,
    REAL_QUESTION,
    SERVE_TOKEN,
    ApiStack,
    Server,
    build_real_adapters,
    checkpoint_in,
    free_port,
    llamafactory_dtype,
    open_stack,
    register_adapters,
    serve_headers,
    thread_env,
)

TOY_BASE_ID = "bench-llama"
# The tenant the toy adapters are announced for (no models row: serve knows them, and their tenant, from the message).
BENCH_TENANT = "tenant-bench"
TOY_QUESTION = [{"role": "user", "content": "Tell me what the worker does with the next batch."}]


@dataclass
class Setup:
    """What one run measures on: the base model (its registered id and chat template), the adapters, the request."""

    base_id: str
    base: Path
    template: str | None
    adapters: list[Path]
    question: list[dict[str, str]]
    work: Path
    store: Path
    stack: ApiStack | None = None
    model_ids: list[str] = field(default_factory=list)


def build(work: Path, adapters: int) -> tuple[Path, list[Path]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from worker.tiny_model import build_tiny_model

    base = build_tiny_model(work / "base", hidden_size=512, num_layers=7, num_heads=8, vocab_size=1024)
    out = []
    for i in range(adapters):
        path = work / "adapters" / f"a{i:02d}"
        if not (path / "adapter_model.safetensors").is_file():
            torch.manual_seed(1000 + i)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                   LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                              init_lora_weights=False))
            model.save_pretrained(str(path))
        out.append(path)
    return base, out


# ---- servers -----------------------------------------------------------------------------------------------
def start_serve(setup: Setup, threads: int | None, dtype: str) -> Server:
    port = free_port()
    entry: dict[str, Any] = {"path": str(setup.base)}
    if setup.template:
        entry["template"] = setup.template
    env = {**(setup.stack.env if setup.stack else os.environ),
           "TUNEQUEUE_BASE_MODELS": json.dumps({setup.base_id: entry}), "TUNEQUEUE_ARTIFACTS": str(setup.store),
           "TUNEQUEUE_SERVE_HOST": "127.0.0.1",
           "TUNEQUEUE_SERVE_PORT": str(port), "TUNEQUEUE_SERVE_MAX_ADAPTERS": "32", "TOKENIZERS_PARALLELISM": "false",
           "TUNEQUEUE_SERVE_DTYPE": dtype, "TUNEQUEUE_SERVE_TOKEN": SERVE_TOKEN}
    if threads:
        env["TUNEQUEUE_SERVE_THREADS"] = str(threads)
    server = Server("serve", [sys.executable, "-m", "worker.serve"], env, port, setup.work / "serve.log")
    server.wait("/healthz")
    import httpx

    deadline = time.monotonic() + 30
    while not httpx.get(server.url + "/status", headers=serve_headers(BENCH_TENANT)).json()["listening"] \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    return server


def publish(setup: Setup, adapter: Path, model_id: str) -> None:
    """As worker/runner.py announces a published adapter: files under an attempt-scoped key, then one message on
    tunequeue:models (no models row: `serve` acts on the message alone)."""
    import shutil

    from common.model_events import announce

    key = f"models/{BENCH_TENANT}/{model_id.rsplit(':', 1)[-1]}/attempt-1"
    (setup.store / key).mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, setup.store / key / name)
    announce("published", model_id=model_id, tenant_id=BENCH_TENANT, base_model=setup.base_id, storage_key=key)


def naive_server(port: int, base: Path, adapters: Path) -> None:
    """Load the adapter for each request, generate, unload: what a server without an adapter cache does."""
    import threading

    import torch
    import uvicorn
    from fastapi import FastAPI
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.text.named_templates import CHATML_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        prompt = tokenizer.apply_chat_template(body["messages"], chat_template=CHATML_TEMPLATE,
                                               add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        with lock, torch.inference_mode():
            peft_model = PeftModel.from_pretrained(model, adapters / body["model"].rsplit(":", 1)[-1])
            out = peft_model.generate(input_ids=ids, max_new_tokens=body.get("max_tokens", 16), do_sample=False)
            peft_model.unload()  # the base model's own layers back, for the next request's adapter
        new = out[0, ids.shape[1]:]
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": tokenizer.decode(new)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new),
                          "total_tokens": ids.shape[1] + len(new)}}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_naive(base: Path, adapters: Path, work: Path, threads: int | None) -> Server:
    port = free_port()
    server = Server("naive", [sys.executable, __file__, "--naive-server", str(port), str(base), str(adapters)],
                    {**os.environ, "TOKENIZERS_PARALLELISM": "false", **thread_env(threads)}, port,
                    work / "naive.log")
    server.wait("/healthz")
    return server


def start_llamafactory(cli: str, setup: Setup, threads: int | None, dtype: str,
                       known_dtype: str | None) -> tuple[Server, str]:
    """`llamafactory-cli api` with the first adapter merged, on the base checkpoint in `dtype` (see checkpoint_in);
    returns the server and the dtype its weights are really in."""
    port = free_port()
    config = setup.work / f"llamafactory-{dtype}.yaml"
    model = checkpoint_in(setup.base, dtype, setup.work)
    config.write_text(f"model_name_or_path: {model}\nadapter_name_or_path: {setup.adapters[0]}\n"
                      "template: chatml\nfinetuning_type: lora\ninfer_backend: huggingface\n"
                      f"trust_remote_code: false\ninfer_dtype: {dtype}\n")
    env = {**os.environ, "API_PORT": str(port), "API_HOST": "127.0.0.1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", **thread_env(threads)}
    real_dtype = known_dtype or llamafactory_dtype(cli, config, env)  # once per run and dtype
    server = Server("llamafactory", [cli, "api", str(config)], env, port, setup.work / "llamafactory.log")
    server.wait("/v1/models", timeout=600)
    return server, real_dtype


# ---- load --------------------------------------------------------------------------------------------------
async def load(url: str, models: list[str], clients: int, requests: int, max_tokens: int,
               question: list[dict[str, str]], headers: dict[str, str] | None = None) -> dict[str, Any]:
    """`headers`: the API key for the API, the serve token and tenant for serve direct."""
    import httpx

    body = {"messages": question, "max_tokens": max_tokens, "temperature": 0}
    counter = iter(range(requests))
    tokens: list[int] = []
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers or {}) as http:
        for model in models:  # warm-up: each adapter once (a cache's steady state), not timed
            (await http.post("/v1/chat/completions", json={**body, "model": model, "max_tokens": 4})).raise_for_status()

        async def client() -> None:
            for i in counter:
                started = time.perf_counter()
                resp = await http.post("/v1/chat/completions", json={**body, "model": models[i % len(models)]})
                resp.raise_for_status()
                tokens.append(resp.json()["usage"]["completion_tokens"])
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"tokens_per_second": sum(tokens) / elapsed, "generated": sum(tokens), "seconds": elapsed,
            "requests": len(tokens), "median_latency_s": statistics.median(ordered),
            "p95_latency_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]}


async def time_to_first_token(url: str, model: str, started: float, question: list[dict[str, str]],
                              max_tokens: int = 8, headers: dict[str, str] | None = None) -> float:
    """Seconds from `started` (a perf_counter reading) to the first content chunk of a streamed answer."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers or {}) as http, http.stream(
            "POST", "/v1/chat/completions",
            json={"model": model, "messages": question, "max_tokens": max_tokens, "stream": True}) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - started
    raise RuntimeError("no token")


def publish_to_first_token(setup: Setup, url: str, tag: str, times: int) -> list[float]:
    out = []
    for i in range(times):
        model_id = f"ft:{setup.base_id}:fresh:{tag}{i}"
        started = time.perf_counter()
        publish(setup, setup.adapters[i % len(setup.adapters)], model_id)
        # The client learns of `succeeded` and asks at once: Redis delivery and the preload race the request.
        out.append(asyncio.run(time_to_first_token(url, model_id, started, setup.question,
                                                   headers=serve_headers(BENCH_TENANT))))
    return out


# ---- micro: one decode step ------------------------------------------------------------------------------
def micro(base: Path, adapter_dirs: list[Path], steps: int = 30) -> dict[str, float]:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, DynamicCache

    from worker.serve.lora import LoraBank, parse_adapter

    ids = torch.randint(3, 1000, (8, 64), generator=torch.Generator().manual_seed(0))

    def step_ms(model: Any, **kw: Any) -> float:
        with torch.inference_mode():
            cache = DynamicCache()
            model(input_ids=ids, cache=cache, use_cache=True, **kw)
            last = ids[:, -1:]
            for _ in range(3):
                model(input_ids=last, cache=cache, use_cache=True, **kw)
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                model(input_ids=last, cache=cache, use_cache=True, **kw)
                times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    out: dict[str, float] = {}
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    out["base model"] = step_ms(plain)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dirs[0], adapter_name="a0")
    for i, path in enumerate(adapter_dirs[1:8], start=1):
        peft.load_adapter(path, adapter_name=f"a{i}")
    peft.eval()
    out["PEFT, adapter_names: 1 adapter"] = step_ms(peft, adapter_names=["a0"] * 8)
    out["PEFT, adapter_names: 8 adapters"] = step_ms(peft, adapter_names=[f"a{i}" for i in range(8)])
    bank = LoraBank(plain, 32, dtype=torch.float32, device="cpu")
    for i, path in enumerate(adapter_dirs[:8]):
        config = json.loads((path / "adapter_config.json").read_text())
        bank.load(parse_adapter(f"a{i}", config, load_file(path / "adapter_model.safetensors"), plain,
                                dtype=torch.float32, device="cpu"))
    bank.set_batch([1] * 8)
    out["serve's bank: 1 adapter"] = step_ms(plain)
    bank.set_batch(list(range(1, 9)))
    out["serve's bank: 8 adapters"] = step_ms(plain)
    return out


def measure_serve(args: argparse.Namespace, setup: Setup, counts: list[int], dtype: str, tag: str,
                  results: dict[str, Any], record: Any) -> None:
    serve = start_serve(setup, args.threads, dtype)
    try:
        names = setup.model_ids
        if not setup.stack:
            names = [f"ft:{setup.base_id}:bench:a{i:02d}" for i in range(max(counts))]
            for name, path in zip(names, setup.adapters, strict=True):
                publish(setup, path, name)
        # serve direct is asked as the API asks it: the serve token, and the tenant the adapters belong to.
        direct = serve_headers(setup.stack.tenant_id if setup.stack else BENCH_TENANT)
        targets: list[tuple[str, str, dict[str, str]]] = [("serve direct", serve.url, direct)]
        if setup.stack:
            setup.stack.start_api(setup.work, serve.url)
            assert setup.stack.api is not None
            targets.append(("serve via API", setup.stack.api.url, {"Authorization": f"Bearer {setup.stack.key}"}))
        try:
            for system, url, headers in targets:
                record(f"{system}, 1 client, 1 adapter", dtype, asyncio.run(
                    load(url, names[:1], 1, args.requests, args.max_tokens, setup.question, headers)))
                for n in counts:
                    record(f"{system}, {args.clients} clients, {n} adapter{'s' * (n > 1)}", dtype, asyncio.run(
                        load(url, names[:n], args.clients, args.requests, args.max_tokens, setup.question, headers)))
        finally:
            if setup.stack:
                setup.stack.stop_api()
        import httpx

        results["dtypes"][f"serve, --dtype {dtype}"] = httpx.get(serve.url + "/status",
                                                                 headers=direct).json()["dtype"]
        if not args.skip_ttft:
            ttft = publish_to_first_token(setup, serve.url, f"{tag}x", 5)
            results.setdefault("publish_to_first_token_s", []).extend(ttft)
            print(f"publish → first token: {', '.join(f'{t:.3f}' for t in ttft)} s", flush=True)
    finally:
        serve.stop()
    if args.skip_ttft:
        return
    cold = start_serve(setup, args.threads, dtype)  # nothing loaded: the first adapter after start-up
    try:
        ttft = publish_to_first_token(setup, cold.url, f"{tag}c", 1)
        results.setdefault("cold_publish_to_first_token_s", []).extend(ttft)
        print(f"publish → first token, serve just started: {ttft[0]:.3f} s", flush=True)
    finally:
        cold.stop()


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_average": os.getloadavg()}


def summarize(results: dict[str, Any], clients: int) -> None:
    """Median and range of every measurement over the rounds, and the ratios the targets name, each taken within
    one round (servers measured side by side) before the median."""
    def spread(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    summary: dict[str, Any] = {}
    print(f"\n{'measurement':58s} {'tok/s median':>12s} {'range':>15s} {'p50 s':>7s} {'p95 s':>7s} {'requests':>8s}")
    for name, runs in results["runs"].items():
        tps = spread([r["tokens_per_second"] for r in runs])
        p50 = statistics.median(r["median_latency_s"] for r in runs)
        p95 = statistics.median(r["p95_latency_s"] for r in runs)
        summary[name] = {"tokens_per_second": tps, "median_latency_s": p50, "p95_latency_s": p95}
        print(f"{name:58s} {tps['median']:12.1f} {tps['min']:7.1f}–{tps['max']:<7.1f} {p50:7.2f} {p95:7.2f} "
              f"{runs[0]['requests']:8d}")
    ratios: dict[str, Any] = {}
    for dtype in results["dtype_list"]:
        lf = results["runs"].get(f"[{dtype}] llamafactory, {clients} clients, 1 adapter")
        for system in ("serve direct", "serve via API"):
            for n in results["adapter_counts"]:
                mine = results["runs"].get(f"[{dtype}] {system}, {clients} clients, {n} adapter{'s' * (n > 1)}")
                if lf and mine:
                    ratios[f"[{dtype}] {system}, {n} adapter(s) ÷ llamafactory, {clients} clients"] = spread(
                        [a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(mine, lf, strict=True)])
        for system in ("serve direct", "serve via API"):
            one = results["runs"].get(f"[{dtype}] {system}, {clients} clients, 1 adapter")
            for n in results["adapter_counts"][1:]:
                many = results["runs"].get(f"[{dtype}] {system}, {clients} clients, {n} adapters")
                if one and many:
                    ratios[f"[{dtype}] {system}, {n} adapters ÷ 1 adapter"] = spread(
                        [a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(many, one, strict=True)])
        direct = results["runs"].get(f"[{dtype}] serve direct, {clients} clients, 1 adapter")
        api = results["runs"].get(f"[{dtype}] serve via API, {clients} clients, 1 adapter")
        if direct and api:
            ratios[f"[{dtype}] serve via API ÷ serve direct, {clients} clients, 1 adapter"] = spread(
                [a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(api, direct, strict=True)])
    for name, r in ratios.items():
        print(f"{name:70s} {r['median']:5.2f}× ({r['min']:.2f}–{r['max']:.2f})")
    print("dtypes:", json.dumps(results["dtypes"]))
    results["summary"], results["ratios"] = summary, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-model", action="store_true",
                        help="SmolLM2-135M-Instruct (var/models/smollm2-135m-instruct) instead of the toy Llama")
    parser.add_argument("--api", action="store_true",
                        help="also measure serve through the API (scratch database, tenant key, registered adapters)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48,
                        help="requests per measurement, the same for every system and client count")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="repeat every measurement; median and range reported")
    parser.add_argument("--adapters", help="adapter counts (default 1,8 with --real-model, else 1,8,32)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the real model's adapters")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-ttft", action="store_true", help="skip the publish → first token timings")
    parser.add_argument("--dtype", default="auto",
                        help="comma list of auto, float32, bfloat16: serve's TUNEQUEUE_SERVE_DTYPE (auto: float32 on "
                             "CPU) and LLaMA-Factory's infer_dtype (auto: its own choice, reported)")
    parser.add_argument("--llamafactory", help="path of llamafactory-cli in its own venv")
    parser.add_argument("--threads", type=int,
                        help="torch threads of every server (serve: TUNEQUEUE_SERVE_THREADS; the others: "
                             "OMP_NUM_THREADS); default: each one's own default")
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--work", type=Path, help="where the model and adapters are built (default: a temp dir)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--naive-server", nargs=3, metavar=("PORT", "BASE", "ADAPTERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers we started (finally blocks)
    if args.naive_server:
        naive_server(int(args.naive_server[0]), Path(args.naive_server[1]), Path(args.naive_server[2]))
        return
    dtypes = args.dtype.split(",")
    bad = [d for d in dtypes if d not in ("auto", "float32", "bfloat16")]
    if bad:
        parser.error(f"--dtype: {', '.join(bad)} is not one of auto, float32, bfloat16")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    counts = [int(n) for n in (args.adapters or ("1,8" if args.real_model else "1,8,32")).split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.real_model:
        from benchmarks.train_setup import real_model

        base = real_model(ROOT)
        setup = Setup(REAL_BASE_ID, base, None, build_real_adapters(base, work, max(counts), args.rank),
                      REAL_QUESTION, work, work / "store")
    else:
        base, adapter_dirs = build(work, max(counts))
        setup = Setup(TOY_BASE_ID, base, "chatml", adapter_dirs, TOY_QUESTION, work, work / "store")
    results: dict[str, Any] = {
        "machine": machine(), "model": str(base), "adapter_rank": args.rank if args.real_model else 8,
        "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens, "threads": args.threads,
        "dtype_list": dtypes, "adapter_counts": counts, "through_api": args.api, "dtypes": {}, "runs": {}}

    def record(name: str, dtype: str, value: dict[str, Any]) -> None:
        key = f"[{dtype}] {name}"
        results["runs"].setdefault(key, []).append(value)
        print(f"{key:58s} {value['tokens_per_second']:8.1f} tok/s  ({value['generated']} tokens, {value['requests']} "
              f"requests in {value['seconds']:.1f}s; latency p50 {value['median_latency_s']:.2f}s, "
              f"p95 {value['p95_latency_s']:.2f}s)", flush=True)

    if args.micro:
        results["micro_ms"] = micro(base, setup.adapters)
        for name, ms in results["micro_ms"].items():
            print(f"decode step, batch 8, {name:34s} {ms:6.1f} ms", flush=True)

    if args.api:
        setup.stack = open_stack(work, setup.base_id, base, setup.template)
        setup.store = Path(setup.stack.env["TUNEQUEUE_ARTIFACTS"])
        setup.model_ids = register_adapters(setup.stack, setup.base_id, setup.adapters[:max(counts)])
    try:
        for round_ in range(args.rounds):
            for dtype in dtypes:
                if not args.skip_serve:
                    measure_serve(args, setup, counts, dtype, f"r{round_}{dtype[:2]}", results, record)
                if not args.skip_naive and not args.real_model and dtype == dtypes[0]:
                    naive = start_naive(base, work / "adapters", work, args.threads)
                    try:
                        for n in counts:
                            record(f"naive, {args.clients} clients, {n} adapter{'s' * (n > 1)}", "float32",
                                   asyncio.run(load(naive.url, [f"x:a{i:02d}" for i in range(n)], args.clients,
                                                    args.requests, args.max_tokens, setup.question)))
                    finally:
                        naive.stop()
                if args.llamafactory:
                    name = f"llamafactory, --dtype {dtype}"
                    lf, results["dtypes"][name] = start_llamafactory(args.llamafactory, setup, args.threads, dtype,
                                                                     results["dtypes"].get(name))
                    try:
                        for clients in (1, args.clients):
                            record(f"llamafactory, {clients} client{'s' * (clients > 1)}, 1 adapter", dtype,
                                   asyncio.run(load(lf.url, ["merged"], clients, args.requests, args.max_tokens,
                                                    setup.question)))
                    finally:
                        lf.stop()
    finally:
        if setup.stack:
            setup.stack.close()

    results["machine"]["load_average_after"] = os.getloadavg()
    summarize(results, args.clients)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
