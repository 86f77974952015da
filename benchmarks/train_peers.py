"""The three systems of benchmarks/train_throughput.py, each run in a fresh interpreter that prints one JSON
line `BENCH {...}`: tokens (non-padding tokens trained), train_seconds and train_cpu_seconds (wall and CPU time
of `Trainer.train`, the same wrapper for all three), final_loss (the last logged loss, a mean over the last
`logging_steps` steps), train_loss (mean over the run), eval_loss (on the held-out rows after the epoch, when
CONFIG names eval_jsonl, by the system's own evaluation and labels), adapter_dir (the trained adapter, for
benchmarks/score_held_out.py), peak_mb, and what the run really computed with: the dtypes of the frozen and the
trained weights, whether autocast was on, gradient checkpointing, torch threads.

    python benchmarks/train_peers.py tunequeue|trl CONFIG.json     (this repository's .venv)
    <lf-venv>/bin/python benchmarks/train_peers.py llamafactory CONFIG.json    (benchmarks/install_peers.sh)

CONFIG holds model, jsonl, dataset_dir, out, rows, batch, cutoff, lr, rank, logging_steps, device, and
optionally eval_jsonl (+ the `bench_eval` dataset in dataset_dir), gradient_checkpointing (peers only:
true/false; absent = the peer's default), base_dtype (TRL only: the dtype its base loads in) and max_steps
(peers only: stop after that many steps).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

TIMES: dict[str, Any] = {}


def describe_precision(trainer: Any) -> dict[str, Any]:
    """What the loop computes with, read off the model itself: the dtypes of the frozen and of the trained
    parameters, and whether the Trainer autocasts (bf16/fp16 arguments, or TuneQueue's own autocast)."""
    import torch

    frozen: dict[str, int] = {}
    trained: dict[str, int] = {}
    for parameter in trainer.model.parameters():
        into = trained if parameter.requires_grad else frozen
        name = str(parameter.dtype).removeprefix("torch.")
        into[name] = into.get(name, 0) + parameter.numel()
    autocast = getattr(trainer, "autocast_dtype", None)
    if autocast is None and (trainer.args.bf16 or trainer.args.fp16):
        autocast = "bfloat16" if trainer.args.bf16 else "float16"
    return {"frozen_dtypes": frozen, "trained_dtypes": trained,
            "autocast": str(autocast).removeprefix("torch.") if autocast is not None else None,
            "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)
                                           or getattr(trainer.args, "activation_checkpointing", False)
                                           or getattr(trainer.args, "gradient_checkpointing", False)),
            "threads": torch.get_num_threads()}


def time_training() -> None:
    """Wrap `transformers.Trainer.train` (all three systems train with it) to measure the training loop alone:
    wall time, and CPU time of the process (all threads). With one thread and other work on the machine, the
    CPU time is what the loop cost; wall time also counts the time other processes held the core. The same
    wrapper records what the model computes with (`describe_precision`) and, after the epoch, the loss on the
    held-out rows when the trainer has some (`Trainer.evaluate`, outside the timed loop)."""
    import transformers

    original = transformers.Trainer.train

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        TIMES.update(describe_precision(self))
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            TIMES["train_cpu_seconds"] = time.process_time() - cpu
            TIMES["train_seconds"] = time.perf_counter() - wall
            if self.eval_dataset is not None:
                TIMES["eval_loss"] = self.evaluate(metric_key_prefix="eval")["eval_loss"]

    transformers.Trainer.train = timed  # type: ignore[method-assign]


def peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def last_loss(log_history: list[dict[str, Any]]) -> float | None:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return losses[-1] if losses else None


def run_tunequeue(cfg: dict[str, Any]) -> dict[str, Any]:
    import io

    from common.schemas.job_spec import JobSpec, resolve_spec
    from worker.train.config import JobConfig
    from worker.train.reporter import Reporter
    from worker.train.run import train

    method = cfg.get("method", "lora")
    lora = {"r": cfg["rank"], "alpha": 2 * cfg["rank"], "dropout": 0.0, "target_modules": "all-linear"}
    spec = JobSpec.model_validate({
        "base_model": "bench", "training_file": "file-bench", "stage": "sft",
        "method": {"type": method, **({"lora": lora} if method in ("lora", "qlora", "dora") else {})},
        "hyperparameters": {"n_epochs": 1, "batch_size": cfg["batch"], "learning_rate": cfg["lr"],
                            "max_seq_length": cfg["cutoff"], "logging_steps": cfg["logging_steps"],
                            "save_steps": None, "eval_steps": None, "lr_scheduler": "cosine",
                            **cfg.get("hyperparameters", {})},
        "seed": 42,
    })
    job = JobConfig.model_validate({
        "job_id": "ftjob-bench", "spec": resolve_spec(spec, cfg["rows"]).model_dump(mode="json"),
        "base_model": {"id": "bench", "path": cfg["model"], "template": "chatml"},
        "training_file": cfg["jsonl"], "validation_file": cfg.get("eval_jsonl"), "output_dir": cfg["out"],
    })
    events = io.StringIO()
    reporter = Reporter(events)
    started = time.perf_counter()
    result = train(job, reporter, padding_free=cfg.get("padding_free"),
                   group_by_length=cfg.get("group_by_length", False))
    metrics = next(entry for entry in reversed(result.trainer.state.log_history) if "train_runtime" in entry)
    return {"tokens": result.trained_tokens, "trainer_runtime": metrics["train_runtime"],
            "wall_in_process": time.perf_counter() - started, "final_loss": result.last_loss,
            "train_loss": result.train_loss, "steps": result.steps, "peak_mb": peak_mb(cfg["device"]),
            "padding_free": result.trainer.stage.padding_free, "adapter_dir": str(result.adapter_dir),
            # The job's own account of its device choices (precision and why): its first log events.
            "job_log": [event["message"] for event in (json.loads(line.split(" ", 1)[1])
                                                         for line in events.getvalue().splitlines()[:6])
                        if event.get("type") == "log"]}


def run_trl(cfg: dict[str, Any]) -> dict[str, Any]:
    """A plain TRL script: SFTTrainer with a LoRA config and its defaults (gradient checkpointing on unless
    CONFIG says), assistant-only loss. TRL refuses assistant_only_loss with a template that has no
    `{% generation %}` markers (SmolLM2's own has none), so it trains with the same ChatML template as the
    others (common/text/named_templates.py), which has them. The base loads as TRL loads it (float32) unless
    CONFIG names base_dtype."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from common.text.named_templates import CHATML_TEMPLATE

    dataset = load_dataset("json", data_files=cfg["jsonl"], split="train")
    eval_dataset = load_dataset("json", data_files=cfg["eval_jsonl"], split="train") if cfg.get("eval_jsonl") \
        else None
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    tokenizer.chat_template = CHATML_TEMPLATE
    best = {} if cfg.get("gradient_checkpointing") is None else \
        {"gradient_checkpointing": cfg["gradient_checkpointing"]}
    if cfg.get("base_dtype"):  # TRL loads the base in float32 unless told; its best on a bf16 CPU is bf16
        best["model_init_kwargs"] = {"dtype": cfg["base_dtype"]}
    if cfg.get("max_steps"):  # a rate over the first steps only (train_throughput.py says when)
        best["max_steps"] = cfg["max_steps"]
    args = SFTConfig(
        output_dir=cfg["out"], per_device_train_batch_size=cfg["batch"], per_device_eval_batch_size=cfg["batch"],
        num_train_epochs=1, learning_rate=cfg["lr"], lr_scheduler_type="cosine", max_length=cfg["cutoff"],
        assistant_only_loss=True, logging_steps=cfg["logging_steps"], save_strategy="no", report_to="none",
        bf16=False, use_cpu=cfg["device"] == "cpu", include_num_input_tokens_seen="non_padding", seed=42,
        disable_tqdm=True, **best,
    )
    peft_config = LoraConfig(r=cfg["rank"], lora_alpha=2 * cfg["rank"], lora_dropout=0.0,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=cfg["model"], args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config)
    output = trainer.train()
    trainer.save_model(str(Path(cfg["out"]) / "adapter"))
    return {"adapter_dir": str(Path(cfg["out"]) / "adapter"), "tokens": trainer.state.num_input_tokens_seen,
            "trainer_runtime": output.metrics["train_runtime"],
            "final_loss": last_loss(trainer.state.log_history), "train_loss": output.training_loss,
            "steps": trainer.state.global_step, "peak_mb": peak_mb(cfg["device"])}


def run_llamafactory(cfg: dict[str, Any]) -> dict[str, Any]:
    """`llamafactory-cli train` with LLaMA-Factory's defaults (gradient checkpointing on unless CONFIG says,
    padded batches, the base in the checkpoint's own dtype whatever `bf16:` says), in-process so that the peak
    RSS is its own."""
    import importlib.machinery
    import importlib.util
    import types

    import yaml  # LLaMA-Factory depends on it

    # llamafactory 0.9.5 imports torchaudio at module level for its audio plugin; torchaudio has no build for
    # torch 2.13. A text-only run never calls it, so an empty module stands in when it is missing.
    for optional in ("torchaudio",):
        if importlib.util.find_spec(optional) is None:
            stand_in = types.ModuleType(optional)
            stand_in.__spec__ = importlib.machinery.ModuleSpec(optional, None)
            sys.modules[optional] = stand_in
    from llamafactory.cli import main

    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model_name_or_path": cfg["model"], "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": cfg["rank"], "lora_alpha": 2 * cfg["rank"], "lora_dropout": 0.0, "lora_target": "all",
        "dataset": "bench", "dataset_dir": cfg["dataset_dir"], "template": "chatml", "cutoff_len": cfg["cutoff"],
        "overwrite_cache": True, "preprocessing_num_workers": 1, "output_dir": str(out / "lf"),
        "overwrite_output_dir": True, "per_device_train_batch_size": cfg["batch"],
        "gradient_accumulation_steps": 1, "learning_rate": cfg["lr"], "num_train_epochs": 1.0,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.0, "logging_steps": cfg["logging_steps"],
        "save_strategy": "no", "report_to": "none", "bf16": False, "fp16": False, "seed": 42,
        "include_num_input_tokens_seen": "non_padding", "plot_loss": False, "disable_tqdm": True,
        "use_cpu": cfg["device"] == "cpu", "per_device_eval_batch_size": cfg["batch"],
    }
    if cfg.get("eval_jsonl"):
        config["eval_dataset"] = "bench_eval"
    if cfg.get("gradient_checkpointing") is not None:
        config["disable_gradient_checkpointing"] = not cfg["gradient_checkpointing"]
    if cfg.get("max_steps"):  # a rate over the first steps only (train_throughput.py says when)
        config["max_steps"] = cfg["max_steps"]
    path = out / "llamafactory.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    sys.argv = ["llamafactory-cli", "train", str(path)]
    main()
    state = json.loads((out / "lf" / "trainer_state.json").read_text())
    history = state["log_history"]
    summary = next(entry for entry in reversed(history) if "train_runtime" in entry)
    return {"adapter_dir": str(out / "lf"), "tokens": state.get("num_input_tokens_seen"),
            "trainer_runtime": summary["train_runtime"],
            "final_loss": last_loss(history), "train_loss": summary.get("train_loss"),
            "steps": state["global_step"], "peak_mb": peak_mb(cfg["device"])}


RUNNERS = {"tunequeue": run_tunequeue, "trl": run_trl, "llamafactory": run_llamafactory}

if __name__ == "__main__":
    system, config_path = sys.argv[1], sys.argv[2]
    if system == "tunequeue":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    time_training()
    outcome = RUNNERS[system](json.loads(Path(config_path).read_text()))
    print("BENCH " + json.dumps({**outcome, **TIMES}), flush=True)
