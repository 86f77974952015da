"""Each preference stage (dpo, simpo, orpo, kto, rm) trained by TuneQueue (its loss over transformers' Trainer,
`worker.train.run.train`) and by TRL's own trainer for the same loss, on the same rows and model, for a few
steps: the losses step by step and the CPU time, to decide per stage which to train with (docs/training.md).

    .venv/bin/python benchmarks/stage_vs_trl.py [--stages dpo kto ...] [--steps 8] [--repeats 3] [--model DIR]

Both sides: LoRA r8/α16 on all linear layers, dropout 0, batch 4, constant learning rate 5e-4, fp32 weights
and compute (TuneQueue `precision: fp32`: its auto would store the frozen base in bf16 on a CPU that runs bf16
fast), one CPU thread, no gradient checkpointing, reference log-probabilities computed once before training (TRL:
`precompute_ref_log_probs=True`; TRL's defaults turn gradient checkpointing on and recompute the reference at
every step). Each run is a fresh interpreter that prints `BENCH {json}`: the logged loss of every step,
`loop_cpu_s` (CPU time of `Trainer.train`) and `total_cpu_s` (from reading the rows to the end of training:
tokenisation, model load, reference pass and the loop). The model defaults to the tests' tiny Llama.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ["dpo", "simpo", "orpo", "kto", "rm"]
WORDS = ["the", "worker", "trains", "answers", "reads", "a", "small", "model", "queue", "job", "adapter", "user",
         "data", "short", "reply", "file", "question", "weights", "checkpoint", "loss", "token", "batch", "today"]


def preference_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs whose chosen answer is a polite fixed-form reply and whose rejected one is random words, of varied
    lengths (so that batches need padding). The system message is explicit: a template's default one (SmolLM2's)
    would otherwise be in TRL's rows and not in those of a named TuneQueue template."""
    rng = random.Random(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    return [{"prompt": [{"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": f"Question {i}: {words(4, 30)}?"}],
             "chosen": [{"role": "assistant", "content": f"Thank you for asking. The answer is {words(3, 20)}."}],
             "rejected": [{"role": "assistant", "content": words(3, 30)}]}
            for i in range(n)]


def kto_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"prompt": pair["prompt"], "completion": pair["chosen" if i % 2 == 0 else "rejected"],
             "label": i % 2 == 0} for i, pair in enumerate(pairs)]


# --- one run, in a child interpreter --------------------------------------------------------------------------

TIMES: dict[str, float] = {}


def time_training() -> None:
    """Wrap `transformers.Trainer.train` (both sides train with it) to measure the loop's CPU time alone."""
    import transformers

    original = transformers.Trainer.train

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        cpu = time.process_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            TIMES["loop_cpu_s"] = time.process_time() - cpu

    transformers.Trainer.train = timed  # type: ignore[method-assign]


def step_losses(log_history: list[dict[str, Any]]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


def run_tunequeue(cfg: dict[str, Any]) -> dict[str, Any]:
    import io

    from common.schemas.job_spec import JobSpec, resolve_spec
    from worker.train.config import JobConfig
    from worker.train.reporter import Reporter
    from worker.train.run import train

    stage = "dpo" if cfg["stage"] == "simpo" else cfg["stage"]
    extras: dict[str, dict[str, Any]] = {
        "dpo": {"dpo": {"loss_type": "sigmoid", "beta": 0.1}},
        "simpo": {"dpo": {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5}},
        "orpo": {"orpo": {"beta": 0.1}}, "kto": {"kto": {"beta": 0.1}}, "rm": {},
    }
    extra = extras[cfg["stage"]]
    spec = JobSpec.model_validate({
        "base_model": "bench", "training_file": "file-bench", "stage": stage,
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}},
        "hyperparameters": {"max_steps": cfg["steps"], "batch_size": cfg["batch"], "learning_rate": cfg["lr"],
                            "lr_scheduler": "constant", "max_seq_length": cfg["cutoff"], "logging_steps": 1,
                            "save_steps": None, "eval_steps": None, "precision": "fp32"},
        "seed": 42, **extra,
    })
    job = JobConfig.model_validate({
        "job_id": "ftjob-bench", "spec": resolve_spec(spec, cfg["rows"]).model_dump(mode="json"),
        "base_model": {"id": "bench", "path": cfg["model"], "template": cfg.get("template")},
        "training_file": cfg["jsonl"], "output_dir": cfg["out"],
    })
    cpu = time.process_time()
    result = train(job, Reporter(io.StringIO()))
    return {"total_cpu_s": time.process_time() - cpu, "steps": result.steps,
            "losses": step_losses(result.trainer.state.log_history)}


def run_trl(cfg: dict[str, Any]) -> dict[str, Any]:
    import warnings

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    warnings.simplefilter("ignore")
    stage = cfg["stage"]
    common: dict[str, Any] = {
        "output_dir": cfg["out"], "per_device_train_batch_size": cfg["batch"], "max_steps": cfg["steps"],
        "learning_rate": cfg["lr"], "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "use_cpu": True, "seed": 42, "bf16": False,
        "gradient_checkpointing": False, "disable_tqdm": True, "max_length": cfg["cutoff"],
        "model_init_kwargs": {"dtype": "float32"},
    }
    cpu = time.process_time()
    dataset = load_dataset("json", data_files=cfg["jsonl"], split="train")
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    lora: dict[str, Any] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
    trainer: Any
    args: Any
    if stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True, **common)
        trainer = DPOTrainer(model=cfg["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **lora))
    elif stage == "kto":
        from trl import KTOConfig, KTOTrainer

        args = KTOConfig(beta=0.1, precompute_ref_log_probs=True, **common)
        trainer = KTOTrainer(model=cfg["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **lora))
    elif stage == "rm":
        from trl import RewardConfig, RewardTrainer

        args = RewardConfig(**common)
        trainer = RewardTrainer(model=cfg["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                                peft_config=LoraConfig(task_type="SEQ_CLS", **lora))
    elif stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(beta=0.1, **common)
        trainer = ORPOTrainer(model=cfg["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=LoraConfig(task_type="CAUSAL_LM", **lora))
    else:  # simpo: CPO with SimPO's loss and no NLL term
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(loss_type="simpo", beta=2.0, simpo_gamma=0.5, cpo_alpha=0.0, **common)
        trainer = CPOTrainer(model=cfg["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **lora))
    trainer.train()
    return {"total_cpu_s": time.process_time() - cpu, "steps": trainer.state.global_step,
            "losses": step_losses(trainer.state.log_history)}


def child(system: str, config_path: str) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    time_training()
    cfg = json.loads(Path(config_path).read_text())
    outcome = (run_tunequeue if system == "tunequeue" else run_trl)(cfg)
    print("BENCH " + json.dumps({**outcome, **TIMES}), flush=True)


# --- the parent: inputs, runs, table ---------------------------------------------------------------------------


def run_child(system: str, cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    path = work / f"{system}-{cfg['stage']}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(work / "datasets-cache"), "TRL_EXPERIMENTAL_SILENCE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, "--child", system, str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{system} {cfg['stage']} failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len("BENCH "):]))


def median_range(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """Per stage and system: the losses of the first run (every run of a system logs the same), the loop's CPU
    time per step and the total CPU time, median (range) over the runs."""
    lines = ["| stage | system | loss, step 1 | loss, last step | loop CPU ms / step | total CPU s |",
             "|---|---|---:|---:|---:|---:|"]
    for stage, systems in results.items():
        for system, runs in systems.items():
            per_step = [1000 * run["loop_cpu_s"] / run["steps"] for run in runs]
            first, last = runs[0]["losses"][0], runs[0]["losses"][-1]
            lines.append(f"| {stage} | {system} | {first:.4f} | {last:.4f} | {median_range(per_step, 0)} | "
                         f"{median_range([run['total_cpu_s'] for run in runs])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, help="a local model folder (default: the tiny Llama, built here)")
    parser.add_argument("--template", default=None, help="TuneQueue's template name for --model (tiny: chatml)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--table", type=Path, help="only print the table of an earlier run's results.json")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return

    sys.path.insert(0, str(REPO))
    work = args.work or Path(tempfile.mkdtemp(prefix="stage-vs-trl-"))
    work.mkdir(parents=True, exist_ok=True)
    template = args.template
    if args.model is None:
        from worker.tiny_model import build_tiny_model

        args.model, template = build_tiny_model(work / "tiny-llama"), template or "chatml"
    rows = args.steps * args.batch
    pairs = preference_rows(rows)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for stage in args.stages:
        data = kto_rows(pairs) if stage == "kto" else pairs
        jsonl = work / f"{stage}.jsonl"
        jsonl.write_text("".join(json.dumps(row) + "\n" for row in data), encoding="utf-8")
        for repeat in range(args.repeats):
            for system in ("tunequeue", "trl") if repeat % 2 == 0 else ("trl", "tunequeue"):
                cfg = {"stage": stage, "model": str(args.model), "template": template, "jsonl": str(jsonl),
                       "rows": rows, "steps": args.steps, "batch": args.batch, "lr": 5e-4, "cutoff": 256,
                       "out": str(work / f"out-{system}-{stage}-{repeat}")}
                outcome = run_child(system, cfg, work)
                results.setdefault(stage, {}).setdefault(system, []).append(outcome)
                print(stage, system, repeat, json.dumps(outcome), flush=True)

    print("\n" + table(results))
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
