"""One training attempt end to end: `train(job, reporter)`, a plain function that tests and the benchmark call.

decide_runtime → tokenizer and template → the stage prepares its rows → base model → method (adapter, full,
freeze) → reference pass (dpo, kto) → `StageTrainer.train()` (resuming when the parent fetched a checkpoint)
→ the published weights (+ a merged model) → the result event.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainingArguments, set_seed

from common.schemas.job_spec import ADAPTER_METHODS, auto_interval
from common.text.templates import resolve_chat_template
from worker.train.callbacks import ProgressCallback
from worker.train.config import JobConfig
from worker.train.errors import TrainingCancelled, TrainingPreempted
from worker.train.loading import load_base_model, load_tokenizer
from worker.train.methods import apply_method, quantization_config
from worker.train.reporter import Reporter
from worker.train.runtime import Runtime, decide_runtime, needs_gradient_checkpointing
from worker.train.saving import save_merged, save_published
from worker.train.stages import make_stage
from worker.train.stages.base import RowDataset, Stage, StageData, StageTrainer

CHECKPOINTS_KEPT = 3  # the parent uploads each one as its event arrives, and may delete it after


@dataclass
class TrainResult:
    """What a successful attempt produced. `model` is the trained model, for callers in this process."""

    adapter_dir: Path
    first_loss: float | None
    last_loss: float | None
    train_loss: float | None
    trained_tokens: int
    steps: int
    stage: str = "sft"
    method: str = "lora"
    merged_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)
    trainer: Any = field(default=None, repr=False, compare=False)

    def event_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "adapter_dir": str(self.adapter_dir), "first_loss": self.first_loss, "last_loss": self.last_loss,
            "train_loss": self.train_loss, "trained_tokens": self.trained_tokens, "steps": self.steps,
            "stage": self.stage, "method": self.method,
        }
        if self.merged_dir is not None:
            fields["merged_dir"] = str(self.merged_dir)
        return fields


def split_validation(job: JobConfig) -> JobConfig:
    """spec.validation_split: hold out that fraction of the training rows (seeded), at least one row."""
    fraction = job.spec.validation_split
    if not fraction or job.validation_file is not None:
        return job
    lines = [line for line in job.training_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(job.spec.seed).shuffle(lines)
    held = max(1, round(len(lines) * fraction))
    if held >= len(lines):
        return job
    folder = job.output_dir / "split"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(lines[held:]) + "\n", encoding="utf-8")
    (folder / "validation.jsonl").write_text("\n".join(lines[:held]) + "\n", encoding="utf-8")
    return job.model_copy(update={"training_file": folder / "train.jsonl",
                                  "validation_file": folder / "validation.jsonl"})


def plan_steps(job: JobConfig, rows: int) -> tuple[int, int | None, int | None]:
    """(total steps, save interval, eval interval) for the real number of training rows (packing changes it).
    'auto' intervals are recomputed here with the API's own rule."""
    hp, spec_hp = job.hyperparameters, job.spec.hyperparameters
    per_epoch = max(1, math.ceil(math.ceil(rows / hp.micro_batch) / hp.gradient_accumulation_steps))
    total = hp.max_steps or per_epoch * hp.n_epochs
    save = auto_interval(total) if "auto" in (spec_hp.save_steps, hp.save_steps) else hp.save_steps
    evaluate = min(per_epoch, total) if "auto" in (spec_hp.eval_steps, hp.eval_steps) else hp.eval_steps
    return total, save if isinstance(save, int) and save else None, \
        evaluate if isinstance(evaluate, int) and evaluate else None


def training_arguments(job: JobConfig, runtime: Runtime, *, save_steps: int | None, eval_steps: int | None,
                       has_eval: bool, gradient_checkpointing: bool, group_by_length: bool) -> TrainingArguments:
    hp = job.hyperparameters
    return TrainingArguments(
        output_dir=str(job.checkpoints_dir.absolute()),
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps or -1,
        per_device_train_batch_size=hp.micro_batch,
        per_device_eval_batch_size=hp.micro_batch,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler if hp.lr_scheduler != "constant" else "constant_with_warmup",
        warmup_steps=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        optim=runtime.optimizer,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval and eval_steps else "no",
        eval_steps=eval_steps if has_eval and eval_steps else None,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=CHECKPOINTS_KEPT,
        report_to="none",
        disable_tqdm=True,
        activation_checkpointing=gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        bf16=runtime.precision == "bf16",
        fp16=runtime.precision == "fp16",
        use_cpu=runtime.device == "cpu",
        seed=job.spec.seed,
        data_seed=job.spec.seed,
        neftune_noise_alpha=hp.neftune_noise_alpha,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        # Batches of rows of similar length (shuffled megabatches): little padding, same rows per epoch.
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        include_num_input_tokens_seen="no",  # StageTrainer counts non-padding tokens itself
    )


def reference_pass(stage: Stage, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int,
                   runtime: Runtime) -> None:
    """Score every row with the model as it starts training (eval mode, no grad): that is the reference policy
    of DPO and KTO — the base model for a fresh adapter, the loaded adapter for from_model, the initial weights
    for full/freeze. Computed again on resume, before the checkpoint's weights are loaded, so it is the same."""
    device = next(model.parameters()).device
    if runtime.device == "cuda" and device.type != "cuda":  # a quantized model is already there (and cannot move)
        device = torch.device("cuda")
        model.to(device)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=runtime.autocast_dtype, enabled=runtime.autocast_dtype is not None)
    with torch.no_grad(), autocast:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                     for key, value in stage.collate(chunk).items()}
            for row, values in zip(chunk, stage.reference_pass(model, batch).tolist(), strict=True):
                row["reference"] = values
    model.train(was_training)


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(job: JobConfig, reporter: Reporter, *, stop: threading.Event | None = None,
          preempt: threading.Event | None = None, padding_free: bool | None = None,
          group_by_length: bool = False) -> TrainResult:
    """Run one attempt and report it. Raises TrainingError, TrainingCancelled, TrainingPreempted or whatever
    broke (the caller maps it with `describe_failure`).

    sft/pt batches: with flash-attention, padding-free (the batch's rows end to end in one row, `position_ids`
    restarting per row: no padding at all); otherwise rows padded to the longest in the batch. Padding-free
    with sdpa costs attention over the whole batch length, so it is only the default where varlen kernels
    exist; `padding_free` forces either way. `group_by_length` batches rows of similar length (less padding,
    but batches no longer mix lengths; off by default, the benchmark measures it)."""
    stop = stop or threading.Event()
    spec, hp, method = job.spec, job.hyperparameters, job.spec.method
    runtime = decide_runtime(spec, hp)
    adapter = method.type in ADAPTER_METHODS
    set_seed(spec.seed)
    job = split_validation(job)

    tokenizer = load_tokenizer(job.base_model)
    template = None
    if spec.stage != "pt":
        template = resolve_chat_template(tokenizer, spec.template or job.base_model.template, job.base_model.id)
        tokenizer.chat_template = template  # saved with the adapter, so serving renders chats the same way

    def warn(message: str) -> None:
        reporter.log(message, "warning")

    if padding_free is None:
        padding_free = runtime.attention == "flash_attention_2"
    stage = make_stage(job, tokenizer, template, padding_free=padding_free)
    data: StageData = stage.prepare(warn)
    total, save_steps, eval_steps = plan_steps(job, len(data.train))

    base = load_base_model(
        job.base_model, dtype=runtime.weights_dtype(adapter), reward_model=stage.task_type == "SEQ_CLS",
        attention=runtime.attention, pad_token_id=tokenizer.pad_token_id, seed=spec.seed,
        quantization=quantization_config(method, runtime.autocast_dtype or torch.bfloat16),
    )
    base_params = base.num_parameters()
    checkpointing = runtime.gradient_checkpointing
    if checkpointing is None:
        checkpointing = needs_gradient_checkpointing(base, hp.micro_batch, hp.max_seq_length, runtime.precision)
    model = apply_method(base, method, seed=spec.seed, task_type=stage.task_type, warn=warn,
                         init_adapter_dir=job.init_adapter_dir, gradient_checkpointing=checkpointing)
    pissa_init = None
    if adapter and job.init_adapter_dir is None and method.lora is not None and method.lora.init == "pissa":
        pissa_init = job.output_dir.absolute() / "pissa-init"
        save_published(model, tokenizer, pissa_init)
    if spec.stage in ("dpo", "kto"):
        _disable_dropout(model)  # the policy and its reference must agree at step 0 (TRL does the same)
    if stage.reference:
        reference_pass(stage, model, data.train, hp.micro_batch, runtime)
        if data.eval:
            reference_pass(stage, model, data.eval, hp.micro_batch, runtime)

    callback = ProgressCallback(
        reporter, stop, preempt, evaluates=bool(data.eval and eval_steps),
        early_stopping_patience=hp.early_stopping_patience,
        oom_at_step=job.fault.oom_at_step if job.fault else None,
    )
    args = training_arguments(job, runtime, save_steps=save_steps, eval_steps=eval_steps,
                              has_eval=bool(data.eval), gradient_checkpointing=checkpointing,
                              group_by_length=group_by_length and spec.stage in ("sft", "pt") and not padding_free
                              and not hp.packing)
    trainer = StageTrainer(
        model=model, args=args, train_dataset=RowDataset(data.train),
        eval_dataset=RowDataset(data.eval) if data.eval else None, data_collator=stage.collate,
        processing_class=tokenizer, callbacks=[callback], stage=stage, autocast_dtype=runtime.autocast_dtype,
        loraplus_lr_ratio=method.lora.loraplus_lr_ratio if adapter and method.lora else None,
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off it print()s every log dict to stdout
    resume = job.resume_from_checkpoint
    notes = "; ".join(data.notes)
    reporter.log(
        f"loaded base model {job.base_model.id} ({_millions(base_params)} params), stage {spec.stage}: "
        f"{stage.describe(data)}{'; ' + notes if notes else ''}; {total} steps of {hp.batch_size} "
        f"({hp.micro_batch} × {hp.gradient_accumulation_steps}); training {_millions(_trainable(model))} "
        f"{method.type} parameters; {runtime.describe().replace('auto', 'on' if checkpointing else 'off')}"
        + (f"; resuming from {resume.name}" if resume else "")
    )
    if stop.is_set():
        raise TrainingCancelled(0, total)

    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state
    if callback.cancelled or stop.is_set():
        raise TrainingCancelled(state.global_step, state.max_steps)
    if callback.preempted:
        raise TrainingPreempted(state.global_step, callback.last_checkpoint)

    if job.checkpoints_dir.is_dir() and not any(job.checkpoints_dir.iterdir()):
        job.checkpoints_dir.rmdir()  # the Trainer makes it even when it saves nothing
    adapter_dir = save_published(model, tokenizer, job.adapter_dir.absolute(), pissa_init_dir=pissa_init)
    merged_dir = None
    if spec.publish.merged and adapter:
        merged_dir = save_merged(job, adapter_dir, tokenizer, reward_model=stage.task_type == "SEQ_CLS",
                                 dtype=runtime.autocast_dtype or torch.float32)
    result = TrainResult(
        adapter_dir=adapter_dir, first_loss=callback.first_loss, last_loss=callback.last_loss,
        train_loss=float(output.training_loss), trained_tokens=int(state.num_input_tokens_seen),
        steps=state.global_step, stage=spec.stage, method=method.type, merged_dir=merged_dir,
        model=model, trainer=trainer,
    )
    reporter.result(**result.event_fields())
    return result
