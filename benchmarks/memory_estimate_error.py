"""How far common/memory_estimate.py is from the memory that training really takes, on this machine's CPU.

For every stage × method (sft, dpo, kto, pt, rm, orpo × lora, dora, full, freeze; qlora needs bitsandbytes and a
CUDA GPU, so a CPU worker refuses it and it is left out) it trains a few steps of TuneQueue's own training
function (worker/train/run.py `train`, as the worker's child runs it) on (a) the tiny random Llama of
worker/tiny_model.py and (b) the real SmolLM2-135M-Instruct (`tunequeue dev real-model`,
tests/support/real_model.py), each attempt in a fresh interpreter (`--child`). The child records its RSS once
the training stack is imported (the baseline) and its peak RSS (VmHWM) after training; the table compares

- the estimate without its `overhead` term against the peak's growth over the baseline, and
- the whole estimate against the peak RSS of the process.

With `--device cuda` (a GPU machine; scripts/gpu-check runs it) the measure is torch.cuda.max_memory_allocated
and the matrix adds qlora; the baseline is what is allocated before training (nothing), and the estimate is
compared without its CUDA_RUNTIME_BYTES (the context and workspaces, which the allocator does not count). The
rows are long enough that every sequence fills max_seq_length (the estimate assumes full windows).

    .venv/bin/python benchmarks/memory_estimate_error.py                     # both models, the whole matrix
    .venv/bin/python benchmarks/memory_estimate_error.py --models tiny --stages sft --methods lora
    .venv/bin/python benchmarks/memory_estimate_error.py --device cuda          # on a GPU: the ±25% target
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_setup import WORDS, real_model  # noqa: E402

STAGES = ("sft", "dpo", "kto", "pt", "rm", "orpo")
METHODS = ("lora", "dora", "full", "freeze")
CUDA_METHODS = (*METHODS, "qlora")
SETTINGS: dict[str, Any] = {"rows": 8, "micro_batch": 2, "max_steps": 2, "max_seq_length": 256, "lora_r": 8,
                            "lora_dropout": 0.05, "freeze_layers": 2, "optimizer": "adamw", "threads": 1}


def words(count: int, offset: int) -> str:
    return " ".join(WORDS[(offset + 7 * k) % len(WORDS)] for k in range(count))


def stage_rows(stage: str, n: int) -> list[dict[str, Any]]:
    """Rows whose answers run past max_seq_length (short prompts, long answers), so every sequence fills the
    window and nearly every position is scored, as the estimate assumes."""
    long = 400  # words: well over 256 tokens
    prompt = [{"role": "user", "content": "Tell me about the queue."}]
    if stage == "sft":
        return [{"messages": [*prompt, {"role": "assistant", "content": words(long, i)}]} for i in range(n)]
    if stage == "pt":
        return [{"text": words(long, i)} for i in range(n)]
    if stage == "kto":
        return [{"prompt": prompt, "completion": words(long, i), "label": i % 2 == 0} for i in range(n)]
    return [{"prompt": prompt, "chosen": words(long, i), "rejected": words(long, i + 3)} for i in range(n)]


def spec_dict(stage: str, method: str) -> dict[str, Any]:
    s = SETTINGS
    body: dict[str, Any] = {"type": method}
    if method in ("lora", "dora", "qlora"):
        body["lora"] = {"r": s["lora_r"], "alpha": 2 * s["lora_r"], "dropout": s["lora_dropout"]}
    if method == "freeze":
        body["freeze"] = {"trainable_layers": s["freeze_layers"]}
    return {"base_model": "bench", "training_file": "file-bench", "stage": stage, "method": body, "seed": 42,
            "hyperparameters": {"n_epochs": 1, "max_steps": s["max_steps"], "batch_size": s["micro_batch"],
                                "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
                                "max_seq_length": s["max_seq_length"], "save_steps": None, "eval_steps": None,
                                "optimizer": s["optimizer"]}}


def child(config_file: Path) -> None:
    """One attempt in this fresh interpreter: baseline RSS after the imports, then train, then peak RSS."""
    import peft  # noqa: F401  (imported by apply_method later: part of the runtime, not of the model)
    import psutil
    import torch

    from common.schemas.job_spec import JobSpec, resolve_spec
    from worker.cpuinfo import peak_rss_bytes
    from worker.train.config import JobConfig
    from worker.train.reporter import Reporter
    from worker.train.run import train

    cfg = json.loads(config_file.read_text())
    cuda = cfg.get("device") == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    spec = resolve_spec(JobSpec.model_validate(cfg["spec"]), SETTINGS["rows"])
    job = JobConfig.model_validate({
        "job_id": "ftjob-memory", "spec": spec.model_dump(mode="json"),
        "base_model": {"id": "bench", "path": cfg["model"], "template": "chatml"},
        "training_file": cfg["jsonl"], "output_dir": cfg["out"]})
    baseline = torch.cuda.memory_allocated() if cuda else psutil.Process().memory_info().rss
    started = time.perf_counter()
    result = train(job, Reporter(io.StringIO()))
    print("MEMORY " + json.dumps({
        "baseline_bytes": baseline, "peak_bytes": torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes(),
        "steps": result.steps, "seconds": time.perf_counter() - started}), flush=True)


def measure(model: Path, stage: str, method: str, work: Path, device: str) -> dict[str, Any]:
    folder = work / f"{model.name}-{stage}-{method}"
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "train.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in stage_rows(stage, SETTINGS["rows"])))
    config = folder / "config.json"
    config.write_text(json.dumps({"model": str(model), "jsonl": str(jsonl), "out": str(folder / "out"),
                                  "spec": spec_dict(stage, method), "device": device}))
    threads = str(SETTINGS["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", str(config)], env=env, capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("MEMORY ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{stage}/{method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(lines[-1][len("MEMORY "):])
    return measured


def estimate(model: Path, stage: str, method: str, cpu_bf16: bool, device: str) -> Any:
    from common.memory_estimate import estimate_training_memory, load_model_config
    from common.schemas.job_spec import JobSpec, resolve_spec

    spec = resolve_spec(JobSpec.model_validate(spec_dict(stage, method)), SETTINGS["rows"])
    return estimate_training_memory(load_model_config(model), spec, device=device,  # type: ignore[arg-type]
                                    cpu_bf16=cpu_bf16)


def machine() -> str:
    import torch

    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    parser.add_argument("--methods", nargs="*", choices=CUDA_METHODS,
                        help="default: every method the device runs (qlora only on cuda)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--work", type=Path, help="keep models and outputs here (default: a temp dir)")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from common.memory_estimate import MIB
    from worker.tiny_model import build_tiny_model
    from worker.train.runtime import cpu_bf16

    methods = args.methods or list(CUDA_METHODS if args.device == "cuda" else METHODS)
    work = args.work or Path(tempfile.mkdtemp(prefix="tunequeue-memory-"))
    models = {"tiny": lambda: build_tiny_model(work / "tiny-llama"), "smollm2": lambda: real_model(ROOT)}
    bf16 = cpu_bf16()
    print(f"machine: {machine()}")
    print(f"CPU bf16: {bf16.fast} ({bf16.reason}); device {args.device}; settings: {json.dumps(SETTINGS)}")
    if args.device == "cuda":
        import torch
        print(f"GPU: {torch.cuda.get_device_name(0)}; growth: torch.cuda.max_memory_allocated; est. growth: the "
              "estimate less CUDA_RUNTIME_BYTES (context and workspaces, not counted by the allocator)\n")
    else:
        print("qlora: not run (needs bitsandbytes and a CUDA GPU; a CPU worker refuses it)")
        print("growth: peak RSS − RSS after importing the training stack (the baseline); est. growth: the estimate "
          "less its runtime part (CPU_RUNTIME_BYTES; the rest of `overhead`, CPU_TRAINING_SLACK_BYTES, stays in)\n")
    print("| model | stage | method | micro × seq × len | grad. ckpt | frozen dtype | est. growth MiB | "
          "measured growth MiB | error | est. total MiB | measured peak MiB | error | weights | trainable | "
          "grads | optimizer | activations | s |")
    print("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        model = models[name]()
        for stage in args.stages:
            for method in methods:
                est = estimate(model, stage, method, bf16.fast, args.device)
                got = measure(model, stage, method, work, args.device)
                a, b = est.assumptions, est.breakdown
                growth = got["peak_bytes"] - got["baseline_bytes"]
                est_growth = est.total_bytes - a["runtime_bytes"]
                parts = " | ".join(f"{b[k] / MIB:.0f}" for k in ("weights", "trainable_parameters", "gradients",
                                                                 "optimizer_states", "activations"))
                print(f"| {name} | {stage} | {method} | {a['micro_batch_size']} × {a['sequences_per_row']} × "
                      f"{a['max_seq_length']} | {'on' if a['gradient_checkpointing'] else 'off'} | "
                      f"{a['frozen_weights_dtype']} | {est_growth / MIB:.0f} | {growth / MIB:.0f} | "
                      f"{100 * (est_growth - growth) / growth:+.0f}% | {est.total_bytes / MIB:.0f} | "
                      f"{got['peak_bytes'] / MIB:.0f} | "
                      f"{100 * (est.total_bytes - got['peak_bytes']) / got['peak_bytes']:+.0f}% | {parts} | "
                      f"{got['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
