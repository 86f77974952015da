"""Generated tokens/s of `serve` with 1, 8 and 32 distinct adapters asked round-robin by concurrent clients,
against a naive server and against `llamafactory-cli api`; and the time from publish to first token.

    .venv/bin/python benchmarks/serve_adapters.py [--clients 8 --requests 48 --max-tokens 64 --rounds 2]
        [--llamafactory /tmp/lf-venv/bin/llamafactory-cli] [--json out.json]

The model: a random Llama of ~19M parameters (hidden 512, 7 layers, the tiny model's tokenizer and ChatML
template), and random rank-8 LoRA adapters on every linear layer, all built here. Every server is a separate
process on this machine, asked over HTTP with the same chat request (greedy, `max_tokens` new tokens); tokens/s
is the sum of the `usage.completion_tokens` the servers report over the wall time of the whole load.

- serve: `python -m worker.serve`, adapters published on Redis (`tunequeue:models`) as the worker publishes
  them; it needs Redis (TUNEQUEUE_REDIS_URL), not Postgres;
- naive: this script as a server (`--naive-server`): loads the requested adapter onto the base model for each
  request (PEFT), generates with `generate`, unloads it; one request at a time;
- llamafactory: `llamafactory-cli api` with the first adapter merged at start-up (its way of serving an
  adapter), when --llamafactory names the CLI of a venv that has LLaMA-Factory (never a project dependency).

`--micro` adds one decode step's forward time (batch 8): PEFT's `adapter_names=` mixed batch against the
adapter bank `serve` uses. The results go into docs/benchmarks.md, never into a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BASE_ID = "bench-llama"
QUESTION = [{"role": "user", "content": "Tell me what the worker does with the next batch."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            model.save_pretrained(path)
        out.append(path)
    return base, out


# ---- servers -----------------------------------------------------------------------------------------------
class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, path: str, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code < 500:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def start_serve(base: Path, store: Path, work: Path, threads: int | None, dtype: str) -> Server:
    port = free_port()
    env = {**os.environ, "TUNEQUEUE_BASE_MODELS": json.dumps({BASE_ID: {"path": str(base), "template": "chatml"}}),
           "TUNEQUEUE_ARTIFACTS": str(store), "TUNEQUEUE_SERVE_HOST": "127.0.0.1", "TUNEQUEUE_SERVE_PORT": str(port),
           "TUNEQUEUE_SERVE_MAX_ADAPTERS": "32", "TOKENIZERS_PARALLELISM": "false", "TUNEQUEUE_SERVE_DTYPE": dtype}
    if threads:
        env["TUNEQUEUE_SERVE_THREADS"] = str(threads)
    server = Server("serve", [sys.executable, "-m", "worker.serve"], env, port, work / "serve.log")
    server.wait("/healthz")
    import httpx

    deadline = time.monotonic() + 30
    while not httpx.get(server.url + "/status").json()["listening"] and time.monotonic() < deadline:
        time.sleep(0.2)
    return server


def publish(store: Path, adapter: Path, model_id: str) -> None:
    """As worker/runner.py does: files under an attempt-scoped key, then one message on tunequeue:models."""
    import shutil

    from common.model_events import announce

    key = f"models/tenant-bench/{model_id.rsplit(':', 1)[-1]}/attempt-1"
    (store / key).mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, store / key / name)
    announce("published", model_id=model_id, tenant_id="tenant-bench", base_model=BASE_ID, storage_key=key)


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


def thread_env(threads: int | None) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def start_naive(base: Path, adapters: Path, work: Path, threads: int | None) -> Server:
    port = free_port()
    server = Server("naive", [sys.executable, __file__, "--naive-server", str(port), str(base), str(adapters)],
                    {**os.environ, "TOKENIZERS_PARALLELISM": "false", **thread_env(threads)}, port,
                    work / "naive.log")
    server.wait("/healthz")
    return server


def start_llamafactory(cli: str, base: Path, adapter: Path, work: Path, threads: int | None, dtype: str) -> Server:
    port = free_port()
    config = work / "llamafactory.yaml"
    config.write_text(f"model_name_or_path: {base}\nadapter_name_or_path: {adapter}\ntemplate: chatml\n"
                      "finetuning_type: lora\ninfer_backend: huggingface\ntrust_remote_code: false\n"
                      f"infer_dtype: {'float32' if dtype == 'auto' else dtype}\n")
    env = {**os.environ, "API_PORT": str(port), "API_HOST": "127.0.0.1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", **thread_env(threads)}
    server = Server("llamafactory", [cli, "api", str(config)], env, port, work / "llamafactory.log")
    server.wait("/v1/models", timeout=600)
    return server


# ---- load --------------------------------------------------------------------------------------------------
async def load(url: str, models: list[str], clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    body = {"messages": QUESTION, "max_tokens": max_tokens, "temperature": 0}
    counter = iter(range(requests))
    tokens: list[int] = []
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
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
    return {"tokens_per_second": sum(tokens) / elapsed, "generated": sum(tokens), "seconds": elapsed,
            "requests": len(tokens), "median_latency_s": statistics.median(latencies)}


async def time_to_first_token(url: str, model: str, started: float, max_tokens: int = 8) -> float:
    """Seconds from `started` (a perf_counter reading) to the first content chunk of a streamed answer."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as http, http.stream(
            "POST", "/v1/chat/completions",
            json={"model": model, "messages": QUESTION, "max_tokens": max_tokens, "stream": True}) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - started
    raise RuntimeError("no token")


def publish_to_first_token(store: Path, adapters: list[Path], url: str, tag: str, times: int) -> list[float]:
    out = []
    for i in range(times):
        model_id = f"ft:{BASE_ID}:fresh:{tag}{i}"
        started = time.perf_counter()
        publish(store, adapters[i % len(adapters)], model_id)
        # The client learns of `succeeded` and asks at once: Redis delivery and the preload race the request.
        out.append(asyncio.run(time_to_first_token(url, model_id, started)))
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


def measure_serve(args: argparse.Namespace, base: Path, store: Path, work: Path, adapter_dirs: list[Path],
                  counts: list[int], round_: int, results: dict[str, Any], record: Any) -> None:
    serve = start_serve(base, store, work, args.threads, args.dtype)
    try:
        names = [f"ft:{BASE_ID}:bench:a{i:02d}" for i in range(max(counts))]
        for name, path in zip(names, adapter_dirs, strict=True):
            publish(store, path, name)
        record("serve, 1 client, 1 adapter", asyncio.run(load(serve.url, names[:1], 1, args.requests // 4,
                                                              args.max_tokens)))
        for n in counts:
            record(f"serve, {args.clients} clients, {n} adapters",
                   asyncio.run(load(serve.url, names[:n], args.clients, args.requests, args.max_tokens)))
        ttft = publish_to_first_token(store, adapter_dirs, serve.url, f"r{round_}x", 5)
        results.setdefault("publish_to_first_token_s", []).extend(ttft)
        print(f"publish → first token: {', '.join(f'{t:.3f}' for t in ttft)} s", flush=True)
    finally:
        serve.stop()
    cold = start_serve(base, store, work, args.threads, args.dtype)  # nothing loaded: the first adapter after start-up
    try:
        ttft = publish_to_first_token(store, adapter_dirs, cold.url, f"c{round_}x", 1)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement (all clients)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="repeat every measurement; the median is reported")
    parser.add_argument("--adapters", default="1,8,32")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="weights dtype of serve and llamafactory (auto: serve's default, float32 on CPU)")
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

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.adapters.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    base, adapter_dirs = build(work, max(counts))
    store = work / "store"
    results: dict[str, Any] = {"machine": machine(), "clients": args.clients, "requests": args.requests,
                               "max_tokens": args.max_tokens, "threads": args.threads, "dtype": args.dtype,
                               "runs": {}}

    def record(name: str, value: dict[str, Any]) -> None:
        results["runs"].setdefault(name, []).append(value)
        print(f"{name:32s} {value['tokens_per_second']:8.1f} tok/s  ({value['generated']} tokens in "
              f"{value['seconds']:.1f}s, median latency {value['median_latency_s']:.2f}s)", flush=True)

    if args.micro:
        results["micro_ms"] = micro(base, adapter_dirs)
        for name, ms in results["micro_ms"].items():
            print(f"decode step, batch 8, {name:34s} {ms:6.1f} ms", flush=True)

    for round_ in range(args.rounds):
        if not args.skip_serve:
            measure_serve(args, base, store, work, adapter_dirs, counts, round_, results, record)
        if not args.skip_naive:
            naive = start_naive(base, work / "adapters", work, args.threads)
            try:
                for n in counts:
                    record(f"naive, {args.clients} clients, {n} adapters",
                           asyncio.run(load(naive.url, [f"x:a{i:02d}" for i in range(n)], args.clients,
                                            args.requests // 2, args.max_tokens)))
            finally:
                naive.stop()
        if args.llamafactory:
            lf = start_llamafactory(args.llamafactory, base, adapter_dirs[0], work, args.threads, args.dtype)
            try:
                for clients in (1, args.clients):
                    record(f"llamafactory, {clients} clients, 1 adapter",
                           asyncio.run(load(lf.url, ["merged"], clients, args.requests // 2, args.max_tokens)))
            finally:
                lf.stop()

    results["median_tokens_per_second"] = {name: statistics.median(r["tokens_per_second"] for r in runs)
                                           for name, runs in results["runs"].items()}
    results["machine"]["load_average_after"] = os.getloadavg()
    print(json.dumps(results["median_tokens_per_second"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
