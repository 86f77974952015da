"""One device against two gloo ranks on SmolLM2-135M-Instruct: the same job (LoRA SFT, same seed, same global
batch, dropout 0, a fixed number of steps) trained by the worker's own training child, once as
`python -m worker.train <job_dir>` (one device) and once under torchrun with two CPU ranks (`resources.devices: 2`),
both command lines from `worker/launch.py` `child_command`, exactly as `worker/runner.py` `_spawn` starts them.

What it reports, per step: both losses, the largest absolute and relative gap, both gradient norms, and per
configuration the process wall time and trained tokens per second (median and range over `--repeats`). The loss
equality is the figure that matters: two gloo ranks sharing a 2-core CPU are not a speed-up test (each rank runs
one thread; the single process runs torch's default threads on the same cores). Each repeat is checked for
determinism against the first one of its configuration (losses and gradient norms to the printed digits).

    .venv/bin/tunequeue dev real-model          # var/models/smollm2-135m-instruct
    .venv/bin/python benchmarks/multi_rank_parity.py --repeats 3 --json benchmarks/results/multi_rank_parity.json
    .venv/bin/python benchmarks/multi_rank_parity.py --tables-from benchmarks/results/multi_rank_parity.json
    .venv/bin/python benchmarks/multi_rank_parity.py --head-path <a run's job folder>

`--tables-from` recomputes the published adapters' comparison from the runs' folders and reprints the report;
`--head-path` compares, in one process without ranks, the one-device loss path (the LM head over the scored
positions, chunked) with the full-logits path a run of several ranks takes: the loss, the gradients of one
micro-batch (also against float64) and one AdamW step from each.

Settings (every one is printed with the results): `instruction_rows(steps × batch)` of benchmarks/train_setup.py
(one epoch), max_seq_length 256, batch_size 8 as micro 4 × accumulation 2 on one device and micro 4 ×
accumulation 1 × 2 ranks on two (`per_device_batches`), LoRA r16 / alpha 32 / dropout 0 on all linear layers,
lr 2e-4 constant, seed 42, precision auto (fp32 on a CPU without bf16 instructions: the job's first event says).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_setup import instruction_rows, real_model  # noqa: E402


def write_job(job_dir: Path, model: Path, rows: list[dict[str, Any]], devices: int, args: argparse.Namespace) -> Path:
    """job.json as the worker parent writes it: the spec as the API stores it (`stored_spec`), resolved for the
    child (`training_spec`)."""
    from common.schemas.job_spec import JobSpec, stored_spec, training_spec

    job_dir.mkdir(parents=True, exist_ok=True)
    train_file = job_dir / "train.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    spec = JobSpec.model_validate({
        "base_model": "smollm2-135m-instruct", "training_file": "file-bench", "stage": "sft",
        "method": {"type": "lora", "lora": {"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.0,
                                            "target_modules": "all-linear"}},
        "hyperparameters": {"n_epochs": 1, "max_steps": args.steps, "batch_size": args.batch,
                            "gradient_accumulation_steps": args.accumulation, "learning_rate": args.lr,
                            "lr_scheduler": "constant", "max_seq_length": args.cutoff, "logging_steps": 1,
                            "save_steps": None, "eval_steps": None},
        "seed": args.seed,
        "resources": {"devices": devices},
    })
    job = {
        "job_id": f"ftjob-parity-{devices}", "attempt": 1,
        "spec": training_spec(stored_spec(spec, len(rows))).model_dump(mode="json"),
        "base_model": {"id": "smollm2-135m-instruct", "path": str(model), "revision": None,
                       "trust_remote_code": False, "template": "chatml"},
        "training_file": str(train_file), "validation_file": None, "output_dir": str(job_dir / "output"),
    }
    (job_dir / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")
    return job_dir


def run_child(job_dir: Path, devices: int) -> dict[str, Any]:
    """The training child as `_spawn` starts it (its command from worker/launch.py, its own session, events on
    stdout, stderr into child.log), on the CPU whatever the host has (no GPU visible)."""
    from worker.launch import child_command
    from worker.train.protocol import EVENT_PREFIX

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    command = child_command(sys.executable, job_dir, devices, grace_seconds=30)
    events: list[tuple[float, dict[str, Any]]] = []
    started = time.perf_counter()
    with (job_dir / "child.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1, env=env,
                                cwd=ROOT, start_new_session=True)
        assert proc.stdout is not None

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(EVENT_PREFIX):
                    events.append((time.perf_counter(), json.loads(line[len(EVENT_PREFIX):])))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        code = proc.wait()
        reader.join(timeout=30)
    wall = time.perf_counter() - started
    if code != 0:
        tail = (job_dir / "child.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{devices} device(s): the child exited {code}:\n{tail}")
    progress = [(at, e) for at, e in events if e["type"] == "progress" and e.get("loss") is not None]
    result = next(e for _, e in events if e["type"] == "result")
    (first_at, first), (last_at, last) = progress[0], progress[-1]
    return {
        "devices": devices, "command": command, "wall_seconds": wall,
        "steps": [{"step": e["step"], "loss": e["loss"], "grad_norm": e["grad_norm"],
                   "trained_tokens": e["trained_tokens"]} for _, e in progress],
        "trained_tokens": result["trained_tokens"],
        # the training loop after step 1 (which carries one-time costs): tokens of steps 2..N over the time
        # between the first and the last step's event
        "loop_tokens_per_second": (last["trained_tokens"] - first["trained_tokens"]) / (last_at - first_at),
        "tokens_per_second_wall": result["trained_tokens"] / wall,
        "first_log": [e["message"] for _, e in events if e["type"] == "log"][:3],
    }


def adapter_gap(one: Path, two: Path) -> dict[str, float]:
    """The published adapters of the two configurations, element by element."""
    from safetensors.torch import load_file

    a, b = (load_file(str(folder / "output" / "adapter" / "adapter_model.safetensors")) for folder in (one, two))
    assert a.keys() == b.keys()
    diffs = [(a[k] - b[k]).abs().flatten() for k in a]
    import torch

    every = torch.cat(diffs)
    return {"elements": every.numel(), "max_abs": float(every.max()), "median_abs": float(every.median()),
            "over_1e-4": int((every > 1e-4).sum()), "over_1e-5": int((every > 1e-5).sum()),
            "relative_l2": float(torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
                                 / torch.cat([a[k].flatten() for k in a]).norm())}


def head_paths(job_dir: Path) -> None:
    """Step 1's loss (LoRA B is zero: the base model's) of the job's first 8 rows as two micro-batches of 4, token
    mean: the one-device path (the LM head over the scored positions, chunked) against the several-ranks path (the
    full forward, every position's logits), at 2 and at 1 torch threads. No training; run in this process."""
    import io

    import torch
    import torch.nn.functional as F

    from worker.train.config import load_job
    from worker.train.reporter import Reporter
    from worker.train.run import load_model, plan_attempt
    from worker.train.stages.base import IGNORE_INDEX
    from worker.train.stages.sft import scored_cross_entropy
    from worker.train.varlen_attention import packed_attention

    reporter = Reporter(io.StringIO())
    plan = plan_attempt(load_job(str(job_dir)), reporter)
    model = load_model(plan, reporter).model
    rows = plan.data.train[:8]
    batches = [{k: v for k, v in plan.stage.collate(chunk).items() if k != "num_tokens"}
               for chunk in (rows[:4], rows[4:8])]

    def chunked(batch: dict[str, Any]) -> torch.Tensor:
        return scored_cross_entropy(model, batch, batch["shift_labels"])[0]

    def full(batch: dict[str, Any]) -> torch.Tensor:
        keep = batch["shift_labels"] != IGNORE_INDEX
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        with packed_attention(model) if "position_ids" in batch else contextlib.nullcontext():
            logits = model(**inputs, use_cache=False).logits[keep]
        return F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(),
                               batch["shift_labels"][keep], reduction="sum")

    scored = sum(int((batch["shift_labels"] != IGNORE_INDEX).sum()) for batch in batches)
    with torch.no_grad():
        for threads in (2, 1):
            torch.set_num_threads(threads)
            losses = {name: sum(float(fn(batch)) for batch in batches) / scored
                      for name, fn in (("chunked", chunked), ("full", full))}
            print(f"{threads} thread(s): chunked {losses['chunked']:.7f}, full logits {losses['full']:.7f}, "
                  f"relative gap {abs(losses['full'] - losses['chunked']) / losses['chunked']:.1e}", flush=True)
    # What AdamW makes of that rounding: the first step's update is lr · g / (|g| + eps), about ±lr for every
    # element, so an element whose gradient is ~0 within the two paths' rounding moves by up to 2·lr one way or
    # the other. The gradients of the first micro-batch by each path (LoRA B is zero, so only B has gradients).
    torch.set_num_threads(2)
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = {}
    for name, fn in (("chunked", chunked), ("full", full)):
        model.zero_grad(set_to_none=True)
        fn(batches[0]).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in trained if p.grad is not None])
    lr = float(plan.job.spec.hyperparameters.learning_rate)
    step = {name: lr * g / (g.abs() + 1e-8) for name, g in grads.items()}
    gap = (step["chunked"] - step["full"]).abs()
    relative = float((grads["chunked"] - grads["full"]).norm() / grads["chunked"].norm())
    print(f"first micro-batch: gradient relative L2 gap {relative:.1e} over {gap.numel():,} elements; one AdamW step "
          f"(lr {lr}): largest update gap {float(gap.max()):.2e}, {int((gap > 1e-4).sum()):,} elements above 1e-4, "
          f"{int((gap > 1e-5).sum()):,} above 1e-5", flush=True)
    # Which of the two is nearer the exact gradient: the full path again with the model in float64.
    model.double()
    model.zero_grad(set_to_none=True)
    full(batches[0]).backward()
    exact = torch.cat([p.grad.flatten().double() for p in trained if p.grad is not None])
    for name, g in grads.items():
        print(f"first micro-batch, {name} (fp32) against float64: gradient relative L2 gap "
              f"{float((g.double() - exact).norm() / exact.norm()):.1e}", flush=True)


def spread(values: list[float], fmt: str = "{:,.1f}") -> str:
    ordered = sorted(values)
    return f"{fmt.format(statistics.median(ordered))} ({fmt.format(ordered[0])}–{fmt.format(ordered[-1])})"


def machine() -> dict[str, str]:
    import torch

    model = platform.processor() or platform.machine()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in lscpu.splitlines():
        if line.startswith("Model name"):
            model = line.split(":", 1)[1].strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return {"cpu": model, "nproc": nproc, "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads_default": str(torch.get_num_threads()), "cpu_bf16_instructions": str(bf16)}


def report(runs: dict[int, list[dict[str, Any]]], settings: dict[str, Any], host: dict[str, str]) -> str:
    one, two = runs[1][0], runs[2][0]
    lines = [f"Machine: {host['cpu']}, nproc {host['nproc']}, torch {host['torch']}, Python {host['python']}, "
             f"bf16 instructions: {host['cpu_bf16_instructions']}",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), ""]
    for devices in (1, 2):
        lines.append(f"{devices} device(s): `{' '.join(runs[devices][0]['command'])}`")
        lines += [f"  first events: {message}" for message in runs[devices][0]["first_log"][:2]]
    lines += ["", "| step | loss, 1 device | loss, 2 ranks | abs. gap | rel. gap | grad norm, 1 device | "
              "grad norm, 2 ranks | grad-norm rel. gap | trained tokens (both) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    worst_abs = worst_rel = worst_grad = 0.0
    for a, b in zip(one["steps"], two["steps"], strict=True):
        gap = abs(a["loss"] - b["loss"])
        rel = gap / abs(a["loss"])
        grad = abs(a["grad_norm"] - b["grad_norm"]) / abs(a["grad_norm"])
        worst_abs, worst_rel, worst_grad = max(worst_abs, gap), max(worst_rel, rel), max(worst_grad, grad)
        tokens = f"{a['trained_tokens']:,}" if a["trained_tokens"] == b["trained_tokens"] else (
            f"{a['trained_tokens']:,} / {b['trained_tokens']:,}")
        lines.append(f"| {a['step']} | {a['loss']:.6f} | {b['loss']:.6f} | {gap:.1e} | {rel:.1e} | "
                     f"{a['grad_norm']:.6f} | {b['grad_norm']:.6f} | {grad:.1e} | {tokens} |")
    lines += ["", f"Largest loss gap: {worst_abs:.2e} absolute, {worst_rel:.2e} relative; largest gradient-norm gap "
                  f"{worst_grad:.2e} relative (first repeat of each configuration).", ""]
    for devices in (1, 2):
        first = runs[devices][0]
        same = all([(s["loss"], s["grad_norm"]) for s in r["steps"]] == [(s["loss"], s["grad_norm"])
                                                                          for s in first["steps"]]
                   for r in runs[devices])
        lines.append(f"{devices} device(s): {len(runs[devices])} repeats, losses and gradient norms identical across "
                     f"repeats: {same}")
    if "adapter_gap" in runs[2][0]:
        gap = runs[2][0]["adapter_gap"]
        lines += ["", f"Published adapters (first repeat): {gap['elements']:,} elements, largest difference "
                      f"{gap['max_abs']:.2e}, median {gap['median_abs']:.1e}, {gap['over_1e-4']:,} above 1e-4 and "
                      f"{gap['over_1e-5']:,} above 1e-5; relative L2 difference {gap['relative_l2']:.1e}."]
    lines += ["", "| configuration | repeats | trained tokens | process wall s | tokens/s (process wall) | "
              "tokens/s (loop, steps 2–N) |", "|---|---:|---:|---:|---:|---:|"]
    for devices, name in ((1, "1 device (one process, torch's default threads)"),
                          (2, "2 gloo ranks (one thread each)")):
        mine = runs[devices]
        lines.append(f"| {name} | {len(mine)} | {mine[0]['trained_tokens']:,} | "
                     f"{spread([r['wall_seconds'] for r in mine], '{:.0f}')} | "
                     f"{spread([r['tokens_per_second_wall'] for r in mine])} | "
                     f"{spread([r['loop_tokens_per_second'] for r in mine])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8, help="the global batch")
    parser.add_argument("--accumulation", type=int, default=2,
                        help="on one device; two ranks divide it (common/schemas/job_spec.py per_device_batches)")
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every run and the report here")
    parser.add_argument("--head-path", type=Path, default=None,
                        help="a job folder: compare the two loss paths on its first rows (no training), and stop")
    parser.add_argument("--tables-from", type=Path, default=None,
                        help="a --json file: recompute the adapter comparison from its runs' folders and reprint")
    args = parser.parse_args()
    if args.head_path:
        head_paths(args.head_path)
        return
    if args.tables_from:
        saved = json.loads(args.tables_from.read_text())
        stored = {int(k): v for k, v in saved["runs"].items()}
        for one, two in zip(stored[1], stored[2], strict=True):
            two["adapter_gap"] = adapter_gap(Path(one["command"][-1]), Path(two["command"][-1]))
        saved.update(runs=stored, report=report(stored, saved["settings"], saved["machine"]))
        args.tables_from.write_text(json.dumps(saved, indent=2))
        print(saved["report"])
        return
    model = real_model(ROOT)
    rows = instruction_rows(args.steps * args.batch)
    from common.schemas.job_spec import ResolvedHyperparameters, per_device_batches

    work = args.work or Path(tempfile.mkdtemp(prefix="multi-rank-parity-"))
    settings = {"model": "SmolLM2-135M-Instruct (var/models, bf16 safetensors; trained in the job's precision)",
                "rows": f"instruction_rows({len(rows)})", "steps": args.steps, "global batch": args.batch,
                "max_seq_length": args.cutoff, "LoRA": f"r{args.rank}/alpha {2 * args.rank}/dropout 0/all-linear",
                "lr": f"{args.lr} constant", "seed": args.seed, "precision": "auto"}
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for devices in ((1, 2) if repeat % 2 == 0 else (2, 1)):  # alternate which configuration runs first
            job_dir = write_job(work / f"r{repeat}-d{devices}", model, rows, devices, args)
            outcome = run_child(job_dir, devices)
            spec = json.loads((job_dir / "job.json").read_text())["spec"]
            micro, accumulation = per_device_batches(
                ResolvedHyperparameters.model_validate(spec["hyperparameters"]), devices)
            outcome.update(repeat=repeat, micro=micro, accumulation=accumulation,
                           load=Path("/proc/loadavg").read_text().split()[0])
            settings[f"{devices} device(s)"] = f"micro {micro} × accumulation {accumulation}" + (
                f" × {devices} ranks" if devices > 1 else "")
            runs[devices].append(outcome)
            print(f"repeat {repeat}, {devices} device(s): wall {outcome['wall_seconds']:.0f} s, "
                  f"losses {[round(s['loss'], 6) for s in outcome['steps']]}", flush=True)
    for one, two in zip(runs[1], runs[2], strict=True):
        two["adapter_gap"] = adapter_gap(Path(one["command"][-1]), Path(two["command"][-1]))
    host = machine()
    text = report(runs, settings, host)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": host, "settings": settings, "runs": runs, "report": text},
                                        indent=2))


if __name__ == "__main__":
    main()
