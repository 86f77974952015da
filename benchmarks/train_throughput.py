"""Training throughput: TuneQueue's training function against a plain TRL `SFTTrainer` script and
`llamafactory-cli train`, on the same machine, model, rows and hyperparameters, in one invocation.

CPU (the default): a random Llama (hidden 512, 4 layers), 512 synthetic instruction rows, LoRA r16 on all
linear layers, batch 8, cutoff 256, one epoch, fp32. Each system runs in a fresh interpreter, one after the
other; the table reports trained (non-padding) tokens per second of the training loop, wall time of the whole
process, the final training loss (mean of the last 8 steps), and TuneQueue's ratio to each peer.

    .venv/bin/python benchmarks/train_throughput.py --lf-python /tmp/lf-venv/bin/python
    .venv/bin/python benchmarks/train_throughput.py --device cuda      # GPU variant, see gpu_variant()

    .venv/bin/python benchmarks/train_throughput.py --real-model --repeats 3      # SmolLM2-135M-Instruct

LLaMA-Factory must live in its own virtual environment (`bash benchmarks/install_peers.sh` makes
var/peers/llamafactory, the default --lf-python); it is never a dependency of this project. Without it the
LLaMA-Factory rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_setup import (  # noqa: E402
    build_cpu_model,
    build_gpu_model,
    held_out_rows,
    instruction_rows,
    real_model,
    write_rows,
)

# LLaMA-Factory paper (Zheng et al. 2024, arXiv:2403.13372), Table 4: peak GPU memory (GB) per method, for
# Gemma-2B and Llama2-7B. Left empty on purpose: the figures could not be checked against the paper from the
# machine this was written on, and unverified numbers must not end up in a report. Fill in
# {"lora": {"Gemma-2B": …, "Llama2-7B": …}, …} from the paper; the table prints "—" until then.
LF_PAPER_TABLE4_GB: dict[str, dict[str, float]] = {}


def run_system(system: str, python: str, cfg: dict[str, Any], work: Path, tag: str | None = None) -> dict[str, Any]:
    config = work / f"{tag or system + '-' + cfg.get('method', 'lora')}.json"
    config.write_text(json.dumps(cfg))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "DISABLE_VERSION_CHECK": "1"}
    if cfg.get("threads"):
        env.update(OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    started = time.perf_counter()
    proc = subprocess.run([python, str(ROOT / "benchmarks" / "train_peers.py"), system, str(config)], cwd=work,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"{system} failed (exit {proc.returncode}):\n{tail}")
    outcome = json.loads(lines[-1][len("BENCH "):])
    outcome["wall_seconds"] = wall
    outcome["tokens_per_second"] = outcome["tokens"] / outcome["train_seconds"]
    outcome["tokens_per_cpu_second"] = outcome["tokens"] / outcome["train_cpu_seconds"]
    return outcome


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def table(results: dict[str, dict[str, Any]]) -> str:
    ours = results["tunequeue"]
    lines = ["| system | trained tokens | tokens per CPU-s | tokens per s | loop CPU s | loop wall s | "
             "process wall s | final loss | mean loss | peak RSS MiB | TuneQueue × (CPU) | TuneQueue × (wall) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        cpu_ratio = ours["tokens_per_cpu_second"] / r["tokens_per_cpu_second"]
        wall_ratio = ours["tokens_per_second"] / r["tokens_per_second"]
        mine = name == "tunequeue"
        lines.append(f"| {name} | {r['tokens']:,} | {r['tokens_per_cpu_second']:,.0f} | "
                     f"{r['tokens_per_second']:,.0f} | {r['train_cpu_seconds']:.0f} | {r['train_seconds']:.0f} | "
                     f"{r['wall_seconds']:.0f} | "
                     f"{r['final_loss']:.4f} | {r['train_loss']:.4f} | {r['peak_mb']:,.0f} | "
                     f"{'—' if mine else f'{cpu_ratio:.2f}×'} | {'—' if mine else f'{wall_ratio:.2f}×'} |")
    return "\n".join(lines)


def cpu_benchmark(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    model = build_cpu_model(work / "model")
    files = write_rows(instruction_rows(args.rows), work / "data")
    cfg = {"model": str(model), "jsonl": str(files["jsonl"]), "dataset_dir": str(files["dataset_dir"]),
           "rows": args.rows, "batch": 8, "cutoff": 256, "lr": 2e-4, "rank": 16, "logging_steps": 8,
           "device": "cpu", "padding_free": args.padding_free, "group_by_length": args.group_by_length,
           "threads": args.threads}
    systems = [("tunequeue", sys.executable), ("trl", sys.executable)]
    if args.lf_python:
        systems.append(("llamafactory", args.lf_python))
    results = {}
    for system, python in systems:
        if args.only and system not in args.only:
            continue
        results[system] = run_system(system, python, {**cfg, "out": str(work / "out" / system)}, work)
        print(f"{system}: {json.dumps(results[system])}", flush=True)
    return results


# The real-model benchmark's runs: (table, system, settings). TuneQueue has one configuration (its defaults are
# its best on this machine: no gradient checkpointing on CPU, padding-free batches, the frozen base in bf16 where
# the CPU has bf16 instructions, else fp32), so it appears in both tables from the same runs. The peers' best
# configuration turns their gradient checkpointing off and gives their frozen base the dtype this CPU runs fast:
# on a bf16 CPU, TRL's base in bf16 (LLaMA-Factory already loads the checkpoint's bf16); on a CPU without bf16
# instructions, where a bf16 matmul is emulated (measured here: ~67x slower than fp32), LLaMA-Factory gets a
# float32 copy of the checkpoint (it loads whatever dtype the checkpoint has, `torch_dtype="auto"`, whatever
# `bf16:` says) and TRL keeps its float32 default. LLaMA-Factory's defaults on such a CPU take ~100 CPU-minutes
# an epoch, so they are timed over their first `DEFAULTS_STEPS_WITHOUT_BF16` steps only (no eval loss).
DEFAULTS_STEPS_WITHOUT_BF16 = 1


def real_runs(cpu_has_bf16: bool, defaults_steps: int | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """`defaults_steps`: time the peers' defaults over their first that many steps only (no eval loss), where a
    machine cannot give every configuration a whole epoch three times."""
    partial = {} if not defaults_steps else {"max_steps": defaults_steps, "eval_jsonl": None}
    if cpu_has_bf16:
        return [("both", "tunequeue", {}),
                ("defaults", "llamafactory", {**partial}),
                ("best", "llamafactory", {"gradient_checkpointing": False}),
                ("defaults", "trl", {**partial}),
                ("best", "trl", {"gradient_checkpointing": False, "base_dtype": "bfloat16"})]
    return [("both", "tunequeue", {}),
            ("defaults", "llamafactory", {"max_steps": DEFAULTS_STEPS_WITHOUT_BF16, "eval_jsonl": None}),
            ("best", "llamafactory", {"gradient_checkpointing": False, "checkpoint_dtype": "float32"}),
            ("defaults", "trl", {**partial}),
            ("best", "trl", {"gradient_checkpointing": False})]


def checkpoint_copy(model: Path, dtype: str, work: Path) -> Path:
    """The checkpoint re-saved in `dtype` (for a peer that loads whatever dtype the checkpoint has)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = work / f"model-{dtype}"
    if not (out / "config.json").is_file():
        AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).save_pretrained(out)
        AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


def score_same_tokens(cfg: dict[str, Any], adapters: list[str]) -> dict[str, dict[str, float]]:
    """The held-out loss of each adapter over the same labelled tokens (benchmarks/score_held_out.py, float32, in
    this venv whichever system trained it); `-` scores the base model."""
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.get("threads") or 1), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "score_held_out.py"), cfg["model"],
                           cfg["eval_jsonl"], str(cfg["cutoff"]), *adapters], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SCORE ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scoring failed (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
    return json.loads(lines[-1][len("SCORE "):])


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 1)[0] if Path("/proc/loadavg").is_file() else "?"


def real_benchmark(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """SmolLM2-135M-Instruct, 96 rows, cutoff 512, batch 8, LoRA r16 all-linear, one epoch, eval on 32 held-out
    rows; every run of REAL_RUNS once per repeat, in a rotated order so that no system always runs first, at
    most `--parallel` at a time (each with its own threads)."""
    from concurrent.futures import ThreadPoolExecutor

    model = real_model(ROOT)
    files = write_rows(instruction_rows(args.rows), work / "data", eval_rows=held_out_rows(args.eval_rows))
    base = {"model": str(model), "jsonl": str(files["jsonl"]), "eval_jsonl": str(files["eval_jsonl"]),
            "dataset_dir": str(files["dataset_dir"]), "rows": args.rows, "batch": 8, "cutoff": 512, "lr": 2e-4,
            "rank": 16, "logging_steps": 4, "device": "cpu", "threads": args.threads}
    # The runs of the target comparison (TuneQueue and LLaMA-Factory's best) come first, repeat by repeat, then
    # the other peers' runs: on a busy machine the first tables fill before the rest.
    from worker.train.runtime import cpu_bf16

    bf16 = cpu_bf16()
    print(f"this CPU and bf16: {bf16}", flush=True)
    runs = [run for run in real_runs(bf16.fast, args.defaults_steps) if not args.only or run[1] in args.only]
    if args.runs:
        runs = [run for run in runs if f"{run[1]}-{run[0]}" in args.runs]
    first = [run for run in runs if run[1] == "tunequeue" or (run[1] == "llamafactory" and run[0] == "best")]
    rest = [run for run in runs if run not in first]
    base_score = score_same_tokens(base, ["-"])["-"]
    print(f"base model, held-out loss over the scored tokens: {json.dumps(base_score)}", flush=True)
    if args.json:
        with args.json.with_suffix(".runs.jsonl").open("a") as handle:
            handle.write(json.dumps({"base_model_score": base_score}) + "\n")
    copies = {dtype: checkpoint_copy(model, dtype, work)
              for dtype in {run[2]["checkpoint_dtype"] for run in runs if run[2].get("checkpoint_dtype")}}
    plan = []
    for group in (first, rest):
        for repeat in range(args.repeats):
            shift = repeat % max(1, len(group))
            plan += [(repeat, *run) for run in group[shift:] + group[:shift]]

    def one(item: tuple[int, str, str, dict[str, Any]]) -> dict[str, Any]:
        repeat, table_name, system, settings = item
        python = args.lf_python if system == "llamafactory" else sys.executable
        name = f"{system}-{table_name}-{repeat}"
        cfg = {**base, "out": str(work / "out" / name), **settings}
        if settings.get("checkpoint_dtype"):
            cfg["model"] = str(copies[settings["checkpoint_dtype"]])
        load_before = load_average()
        try:
            outcome = run_system(system, python, cfg, work, tag=name)
        except RuntimeError as exc:
            print(f"{name}: {exc}", flush=True)
            return {"failed": True, "repeat": repeat, "table": table_name, "system": system}
        outcome.update(repeat=repeat, table=table_name, system=system, load_before=load_before,
                       load_after=load_average())
        try:
            if settings.get("max_steps"):  # a partial epoch: its adapter is not comparable
                raise RuntimeError("not scored: a partial epoch")
            score = score_same_tokens({**base, **cfg, "model": str(model)},
                                      [outcome["adapter_dir"]])[outcome["adapter_dir"]]
            outcome.update(eval_loss_same_tokens=score["loss"], eval_tokens_same=score["tokens"])
        except RuntimeError as exc:
            print(f"{name}: {exc}", flush=True)
        print(f"{name}: {json.dumps(outcome)}", flush=True)
        if args.json:
            with args.json.with_suffix(".runs.jsonl").open("a") as handle:
                handle.write(json.dumps(outcome) + "\n")
        return outcome

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        done = list(pool.map(one, [item for item in plan if item[2] != "llamafactory" or args.lf_python]))
    return [run for run in done if not run.get("failed")]


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """median (min–max)"""
    if not values:
        return "—"
    ordered = sorted(values)
    return f"{fmt.format(statistics.median(ordered))} ({fmt.format(ordered[0])}–{fmt.format(ordered[-1])})"


def describe_dtypes(run: dict[str, Any]) -> str:
    frozen = "/".join(sorted(run.get("frozen_dtypes", {}))) or "—"
    trained = "/".join(sorted(run.get("trained_dtypes", {}))) or "—"
    autocast = f", autocast {run['autocast']}" if run.get("autocast") else ", no autocast"
    return f"frozen {frozen}, LoRA {trained}{autocast}"


def real_tables(runs: list[dict[str, Any]]) -> str:
    """Per table, one row per system and set of dtypes (TuneQueue's precision is the job's own choice, which can
    differ between runs), median (min–max) over its runs; TuneQueue's rows give their ratio to each peer's
    median tokens per CPU-second."""
    out = [f"Base model before training, held-out loss over the same tokens: {entry['base_model_score']['loss']:.4f} "
           f"({entry['base_model_score']['tokens']:,} tokens)" for entry in runs if "base_model_score" in entry][:1]
    runs = [run for run in runs if "system" in run]
    for table_name in ("defaults", "best"):
        rows = [run for run in runs if run["table"] in (table_name, "both")]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for system in ("tunequeue", "llamafactory", "trl"):
            for run in rows:
                if run["system"] == system:
                    groups.setdefault((system, describe_dtypes(run)), []).append(run)
        peers = {system: statistics.median(run["tokens_per_cpu_second"] for run in rows if run["system"] == system)
                 for system in ("llamafactory", "trl") if any(run["system"] == system for run in rows)}
        out += [f"### {table_name}", "",
                "| system | dtypes | runs | trained tokens | tokens per CPU-s | tokens per s (wall) | peak RSS MiB | "
                "eval loss (held out, own labels) | eval loss (held out, same tokens) | mean train loss | "
                "÷ peers (CPU, medians) | grad. ckpt | threads | "
                "load (1-min, before–after) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|"]
        same = "{:.4f}"
        for (system, dtypes), mine in groups.items():
            cpu = [run["tokens_per_cpu_second"] for run in mine]
            ratio = "—" if system != "tunequeue" else ", ".join(
                f"{statistics.median(cpu) / median:.2f}× {peer}" for peer, median in peers.items()) or "—"
            tokens = sorted({run["tokens"] for run in mine})
            loads = ", ".join(f"{run['load_before']}–{run['load_after']}" for run in mine)
            out.append(
                f"| {system} | {dtypes} | {len(mine)} | {'/'.join(f'{t:,}' for t in tokens)} | {spread(cpu)} | "
                f"{spread([run['tokens_per_second'] for run in mine])} | "
                f"{spread([run['peak_mb'] for run in mine])} | "
                f"{spread([run['eval_loss'] for run in mine if run.get('eval_loss') is not None], '{:.4f}')} | "
                f"{spread([run['eval_loss_same_tokens'] for run in mine if 'eval_loss_same_tokens' in run], same)} | "
                f"{spread([run['train_loss'] for run in mine], '{:.4f}')} | {ratio} | "
                f"{'on' if mine[0].get('gradient_checkpointing') else 'off'} | {mine[0].get('threads')} | "
                f"{loads} |")
        out.append("")
    return "\n".join(out)


def gpu_variant(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """GPU machines: a ~0.5B random Llama, the same rows, cutoff 1024, batch 4 (the paper's Table 4 setting),
    one run of TuneQueue per method; peak memory is torch.cuda.max_memory_allocated."""
    model = build_gpu_model(work / "model-0.5b")
    files = write_rows(instruction_rows(args.rows), work / "data")
    results = {}
    for method in ("lora", "qlora", "freeze", "full"):
        cfg = {"model": str(model), "jsonl": str(files["jsonl"]), "dataset_dir": str(files["dataset_dir"]),
               "rows": args.rows, "batch": 4, "cutoff": 1024, "lr": 2e-4 if method in ("lora", "qlora") else 2e-5,
               "rank": 16, "logging_steps": 8, "device": "cuda", "method": method,
               "out": str(work / "out" / method)}
        results[method] = run_system("tunequeue", sys.executable, cfg, work)
        print(f"{method}: {json.dumps(results[method])}", flush=True)
    return results


def gpu_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| method | tokens/s | final loss | peak GiB (0.5B, ours) | paper: Gemma-2B GB | paper: Llama2-7B GB |",
             "|---|---:|---:|---:|---:|---:|"]
    for method, r in results.items():
        paper = LF_PAPER_TABLE4_GB.get(method, {})
        lines.append(f"| {method} | {r['tokens_per_second']:,.0f} | {r['final_loss']:.4f} | "
                     f"{r['peak_mb'] / 1024:.2f} | {paper.get('Gemma-2B', '—')} | {paper.get('Llama2-7B', '—')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--real-model", action="store_true",
                        help="SmolLM2-135M-Instruct (var/models), 96 rows, cutoff 512, eval loss on held-out rows, "
                             "peers in their defaults and their best configuration, --repeats times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tables-from", type=Path, help="print the --real-model tables of a .runs.jsonl file")
    parser.add_argument("--parallel", type=int, default=1, help="--real-model: runs at a time")
    parser.add_argument("--eval-rows", type=int, default=32)
    parser.add_argument("--rows", type=int)
    default_lf = ROOT / "var" / "peers" / "llamafactory" / "bin" / "python"
    parser.add_argument("--lf-python", default=str(default_lf) if default_lf.is_file() else None,
                        help="python of the virtual environment that has llamafactory (default: the one "
                             "benchmarks/install_peers.sh makes, if present)")
    parser.add_argument("--runs", nargs="*", help="--real-model: only these runs, as system-table "
                        "(tunequeue-both, llamafactory-defaults, llamafactory-best, trl-defaults, trl-best)")
    parser.add_argument("--defaults-steps", type=int,
                        help="--real-model: time the peers' defaults over their first N steps only (no eval loss)")
    parser.add_argument("--only", nargs="*", help="run only these systems (tunequeue, trl, llamafactory)")
    parser.add_argument("--padding-free", action=argparse.BooleanOptionalAction, default=None,
                        help="TuneQueue: one row per batch, no padding (default: the job's own choice)")
    parser.add_argument("--group-by-length", action="store_true", help="TuneQueue: batches of similar length")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per system (default 1: on a shared machine OpenMP threads that wait on "
                             "each other make wall times meaningless; 0: torch's default)")
    parser.add_argument("--work", type=Path, help="keep models and outputs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tunequeue-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    if args.tables_from:
        print(real_tables([json.loads(line) for line in args.tables_from.read_text().splitlines() if line]))
        return
    if args.real_model:
        args.rows = args.rows or 96
        runs = real_benchmark(args, work)
        print(real_tables(runs))
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2))
        return
    args.rows = args.rows or 512
    if args.device == "cuda":
        results = gpu_variant(args, work)
        print(gpu_table(results))
    else:
        results = cpu_benchmark(args, work)
        if "tunequeue" in results:
            print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
