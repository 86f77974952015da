"""One training attempt end to end: `train(job, reporter)`, a plain function that tests and the benchmark call.

It runs in four steps, each a function below:

1. `plan_attempt`: the device choices (worker/train/runtime.py), the validation split, the tokenizer and chat
   template, the stage's prepared rows, and from their number the step count and the save/eval cadence;
2. `load_model`: the base model, the method (adapter, full, freeze) and the reference pass (dpo, kto);
3. `build_trainer`: the `TrainingArguments` and the `StageTrainer` with the progress callback;
4. `run_trainer`: the first log event, `StageTrainer.train()` (resuming when the parent fetched a checkpoint),
   the published weights (+ a merged model) and the result event.

Under torchrun (`resources.devices` > 1, worker/train/ranks.py) every rank runs all four; each trains
`per_device_batches` rows per step, and rank 0 alone reports and publishes.
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

from common.schemas.job_spec import ADAPTER_METHODS, ResolvedHyperparameters, per_device_batches, step_intervals
from common.text.templates import choose_template
from worker.train.callbacks import ProgressCallback
from worker.train.config import JobConfig
from worker.train.errors import TrainingCancelled, TrainingPreempted
from worker.train.loading import load_base_model, load_tokenizer
from worker.train.methods import apply_method, quantization_config
from worker.train.precision import fp32_activations
from worker.train.ranks import Ranks
from worker.train.reporter import Reporter
from worker.train.runtime import DeviceChoices, decide_device_choices, needs_gradient_checkpointing
from worker.train.samples import Samples, SamplesCallback, prepare_samples
from worker.train.saving import save_merged, save_published
from worker.train.stages import make_stage
from worker.train.stages.base import RowDataset, Stage, StageData, StageTrainer
from worker.train.trackers import check_libraries, start_trackers

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


def plan_steps(hp: ResolvedHyperparameters, rows: int, ranks: int = 1) -> tuple[int, int | None, int | None]:
    """(total steps, save interval, eval interval) for the real number of training rows (packing changes it),
    with the spec's rule for the "auto" intervals (common/schemas/job_spec.py `step_intervals`). With several
    ranks each takes every `ranks`-th micro-batch (accelerate's sharded loader evens the last ones out)."""
    micro, accumulation = per_device_batches(hp, ranks)
    per_rank = math.ceil(math.ceil(rows / micro) / ranks)
    per_epoch = max(1, math.ceil(per_rank / accumulation))
    total = hp.max_steps or per_epoch * hp.n_epochs
    save, evaluate = step_intervals(hp, total, per_epoch)
    return total, save, evaluate


@dataclass
class Plan:
    """What the attempt will do, decided before any weights load."""

    job: JobConfig  # with spec.validation_split applied
    device: DeviceChoices
    tokenizer: Any
    stage: Stage
    data: StageData
    padding_free: bool
    total_steps: int
    save_steps: int | None  # None: no checkpoints
    eval_steps: int | None  # None: no evaluation
    samples: Samples | None = None  # hyperparameters.eval_samples: the prompts each evaluation answers
    ranks: Ranks = field(default_factory=Ranks)  # torchrun's ranks; one without it

    def per_device(self) -> tuple[int, int]:
        """(micro-batch, accumulation steps) on each rank: micro × accumulation × ranks = batch_size."""
        return per_device_batches(self.job.spec.hyperparameters, self.ranks.world_size)

    def describe_batch(self) -> str:
        """E.g. "8 (2 × 2 × 2 ranks)": the global batch, and how each step makes it."""
        micro, accumulation = self.per_device()
        ranks = f" × {self.ranks.world_size} ranks" if self.ranks.distributed else ""
        return f"{self.job.spec.hyperparameters.batch_size} ({micro} × {accumulation}{ranks})"

    def describe_cadence(self) -> str:
        saves = f"a checkpoint every {self.save_steps} steps" if self.save_steps else "no checkpoints"
        if not self.data.eval:
            return saves
        evaluates = f"evaluation every {self.eval_steps} steps" if self.eval_steps else "no evaluation"
        if self.eval_steps and self.samples:
            evaluates += f" with {len(self.samples.samples)} generated samples"
        return f"{saves}, {evaluates}"


def plan_attempt(job: JobConfig, reporter: Reporter, *, padding_free: bool | None = None) -> Plan:
    """Everything but the weights. Refuses (TrainingError) a job this device cannot train before anything loads;
    the stage's warnings about its rows (cut, skipped) are reported as they come."""
    device = decide_device_choices(job.spec)
    ranks = Ranks.from_env()
    ranks.bind_device()
    set_seed(job.spec.seed)
    job = split_validation(job)
    tokenizer = load_tokenizer(job.base_model)
    template = None
    if job.spec.stage != "pt":
        template = choose_template(tokenizer, model_id=job.base_model.id, job_template=job.spec.template,
                                   registry_template=job.base_model.template).text
        tokenizer.chat_template = template  # saved with the adapter, so serving renders chats the same way
    if padding_free is None:  # sdpa attends per packed row (worker/train/varlen_attention.py)
        padding_free = device.attention in ("flash_attention_2", "sdpa")
    stage = make_stage(job, tokenizer, template, padding_free=padding_free)
    data = stage.prepare(lambda message: reporter.log(message, "warning"))
    total, save_steps, eval_steps = plan_steps(job.spec.hyperparameters, len(data.train), ranks.world_size)
    samples = prepare_samples(job, tokenizer, template, lambda message: reporter.log(message, "warning")) \
        if data.eval and eval_steps else None
    return Plan(job, device, tokenizer, stage, data, padding_free, total, save_steps, eval_steps, samples, ranks)


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def reference_pass(stage: Stage, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int,
                   device: DeviceChoices) -> None:
    """Score every row with the model as it starts training (eval mode, no grad): that is the reference policy
    of DPO and KTO — the base model for a fresh adapter, the loaded adapter for from_model, the initial weights
    for full/freeze. Computed again on resume, before the checkpoint's weights are loaded, so it is the same."""
    where = next(model.parameters()).device
    if device.device == "cuda" and where.type != "cuda":  # a quantized model is already there (and cannot move)
        where = torch.device("cuda")
        model.to(where)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(where.type, dtype=device.autocast_dtype, enabled=device.autocast_dtype is not None)
    with torch.no_grad(), autocast:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = {key: value.to(where) if isinstance(value, torch.Tensor) else value
                     for key, value in stage.collate(chunk).items()}
            for row, values in zip(chunk, stage.reference_pass(model, batch).tolist(), strict=True):
                row["reference"] = values
    model.train(was_training)


@dataclass
class Loaded:
    """The model that trains, with what loading it decided."""

    model: torch.nn.Module
    base_params: int
    gradient_checkpointing: bool
    pissa_init_dir: Path | None  # the PiSSA adapter before training, to publish a plain LoRA from


def load_model(plan: Plan, reporter: Reporter) -> Loaded:
    """The base model with the method applied, ready to train; for dpo/kto the rows carry their reference
    log-probabilities afterwards."""
    job, device, stage = plan.job, plan.device, plan.stage
    spec, hp, method = job.spec, job.spec.hyperparameters, job.spec.method
    adapter = method.type in ADAPTER_METHODS
    base = load_base_model(
        job.base_model, dtype=device.weights_dtype(adapter), reward_model=stage.task_type == "SEQ_CLS",
        attention=device.attention, pad_token_id=plan.tokenizer.pad_token_id, seed=spec.seed,
        quantization=quantization_config(method, device.autocast_dtype or torch.bfloat16),
    )
    base_params = base.num_parameters()
    checkpointing = device.gradient_checkpointing
    if checkpointing is None:
        checkpointing = needs_gradient_checkpointing(base, hp.micro_batch_size, hp.max_seq_length, device.precision)
    model = apply_method(base, method, seed=spec.seed, task_type=stage.task_type,
                         warn=lambda message: reporter.log(message, "warning"),
                         init_adapter_dir=job.init_adapter_dir, gradient_checkpointing=checkpointing)
    if adapter and device.half_matmuls_fp32_activations:
        fp32_activations(model)  # worker/train/precision.py
    pissa_init = None
    if adapter and job.init_adapter_dir is None and method.lora is not None and method.lora.init == "pissa":
        pissa_init = job.output_dir.absolute() / "pissa-init"
        save_published(model, plan.tokenizer, pissa_init)
    if spec.stage in ("dpo", "kto"):
        _disable_dropout(model)  # the policy and its reference must agree at step 0 (TRL does the same)
    if stage.reference:
        reference_pass(stage, model, plan.data.train, hp.micro_batch_size, device)
        if plan.data.eval:
            reference_pass(stage, model, plan.data.eval, hp.micro_batch_size, device)
    return Loaded(model, base_params, checkpointing, pissa_init)


def training_arguments(plan: Plan, *, gradient_checkpointing: bool, group_by_length: bool) -> TrainingArguments:
    job, device = plan.job, plan.device
    hp = job.spec.hyperparameters
    evaluates = bool(plan.data.eval and plan.eval_steps)
    micro, accumulation = plan.per_device()
    return TrainingArguments(
        **_distributed_arguments(plan),
        output_dir=str(job.checkpoints_dir.absolute()),
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps or -1,
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler if hp.lr_scheduler != "constant" else "constant_with_warmup",
        warmup_steps=hp.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        optim=device.optimizer,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluates else "no",
        eval_steps=plan.eval_steps if evaluates else None,
        save_strategy="steps" if plan.save_steps else "no",
        save_steps=plan.save_steps or 500,
        save_total_limit=CHECKPOINTS_KEPT,
        report_to="none",
        disable_tqdm=True,
        activation_checkpointing=gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        bf16=device.precision == "bf16",
        fp16=device.precision == "fp16",
        use_cpu=device.device == "cpu",
        seed=job.spec.seed,
        data_seed=job.spec.seed,
        neftune_noise_alpha=hp.neftune_noise_alpha,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        # Batches of rows of similar length (shuffled megabatches): little padding, same rows per epoch.
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        include_num_input_tokens_seen="no",  # StageTrainer counts non-padding tokens itself
    )


def _distributed_arguments(plan: Plan) -> dict[str, Any]:
    """The Trainer's settings for a job of several ranks: the backend (gloo on a CPU, NCCL on CUDA) and, for full
    and freeze on CUDA, FSDP2 sharding each decoder layer (worker/train/ranks.py `Ranks.strategy`), whose
    checkpoints and published weights are whole (FULL_STATE_DICT); DDP otherwise, the Trainer's default."""
    if not plan.ranks.distributed:
        return {}
    cuda = plan.device.device == "cuda"
    arguments: dict[str, Any] = {"ddp_backend": plan.ranks.backend(cuda), "ddp_find_unused_parameters": False}
    if plan.ranks.strategy(plan.job.spec.method.type, cuda) == "fsdp":
        arguments["fsdp"] = True
        arguments["fsdp_config"] = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                    "state_dict_type": "FULL_STATE_DICT"}
    return arguments


def build_trainer(plan: Plan, loaded: Loaded, reporter: Reporter, stop: threading.Event,
                  preempt: threading.Event | None, *, group_by_length: bool) -> tuple[StageTrainer, ProgressCallback]:
    """`group_by_length` applies to unpacked sft/pt rows that are padded (not padding-free)."""
    job, data = plan.job, plan.data
    spec, hp, method = job.spec, job.spec.hyperparameters, job.spec.method
    callback = ProgressCallback(
        reporter, stop, preempt, evaluates=bool(data.eval and plan.eval_steps),
        early_stopping_patience=hp.early_stopping_patience,
        oom_at_step=job.fault.oom_at_step if job.fault else None,
    )
    group_by_length = group_by_length and spec.stage in ("sft", "pt") and not plan.padding_free and not hp.packing
    args = training_arguments(plan, gradient_checkpointing=loaded.gradient_checkpointing,
                              group_by_length=group_by_length)
    trainer = StageTrainer(
        model=loaded.model, args=args, train_dataset=RowDataset(data.train),
        eval_dataset=RowDataset(data.eval) if data.eval else None, data_collator=plan.stage.collate,
        processing_class=plan.tokenizer, callbacks=[callback], stage=plan.stage,
        autocast_dtype=plan.device.autocast_dtype,
        loraplus_lr_ratio=method.lora.loraplus_lr_ratio if method.type in ADAPTER_METHODS and method.lora else None,
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off it print()s every log dict to stdout
    if plan.samples is not None and data.eval and plan.eval_steps:  # after the evaluation's progress event
        trainer.add_callback(SamplesCallback(reporter, plan.tokenizer, plan.samples,
                                             batch_size=hp.micro_batch_size, autocast_dtype=plan.device.autocast_dtype,
                                             stop=stop, preempt=preempt))
    return trainer, callback


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _first_log(plan: Plan, loaded: Loaded) -> str:
    job = plan.job
    method, resume = job.spec.method, job.resume_from_checkpoint
    notes = "; ".join(plan.data.notes)
    adapter = method.type in ADAPTER_METHODS
    return (
        f"loaded base model {job.base_model.id} ({_millions(loaded.base_params)} params), stage {job.spec.stage}: "
        f"{plan.stage.describe(plan.data)}{'; ' + notes if notes else ''}; {plan.total_steps} steps of "
        f"{plan.describe_batch()}, {plan.describe_cadence()}; "
        f"training {_millions(_trainable(loaded.model))} {method.type} parameters; "
        f"{plan.device.describe(adapter, loaded.gradient_checkpointing)}"
        + (f"; on {plan.ranks.describe(method.type, plan.device.device == 'cuda')}" if plan.ranks.distributed
           else "")
        + (f"; resuming from {resume.name}" if resume else "")
    )


def run_trainer(plan: Plan, loaded: Loaded, trainer: StageTrainer, callback: ProgressCallback,
                reporter: Reporter, stop: threading.Event) -> TrainResult:
    """Train, then publish and report the result. Raises TrainingCancelled or TrainingPreempted."""
    job, spec = plan.job, plan.job.spec
    reporter.log(_first_log(plan, loaded))
    if stop.is_set():
        raise TrainingCancelled(0, plan.total_steps)
    resume = job.resume_from_checkpoint
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state
    if callback.cancelled or stop.is_set():
        raise TrainingCancelled(state.global_step, state.max_steps)
    if callback.preempted:
        raise TrainingPreempted(state.global_step, callback.last_checkpoint)

    adapter = spec.method.type in ADAPTER_METHODS
    model, state_dict = _for_saving(trainer, loaded.model, plan.ranks)
    if not plan.ranks.reports:  # rank 0 publishes for all of them
        return TrainResult(adapter_dir=job.adapter_dir.absolute(), first_loss=callback.first_loss,
                           last_loss=callback.last_loss, train_loss=float(output.training_loss),
                           trained_tokens=int(state.num_input_tokens_seen), steps=state.global_step,
                           stage=spec.stage, method=spec.method.type, model=loaded.model, trainer=trainer)
    if job.checkpoints_dir.is_dir() and not any(job.checkpoints_dir.iterdir()):
        job.checkpoints_dir.rmdir()  # the Trainer makes it even when it saves nothing
    adapter_dir = save_published(model, plan.tokenizer, job.adapter_dir.absolute(),
                                 pissa_init_dir=loaded.pissa_init_dir, state_dict=state_dict)
    merged_dir = None
    if spec.publish.merged and adapter:
        merged_dir = save_merged(job, adapter_dir, plan.tokenizer, reward_model=plan.stage.task_type == "SEQ_CLS",
                                 dtype=plan.device.autocast_dtype or torch.float32)
    result = TrainResult(
        adapter_dir=adapter_dir, first_loss=callback.first_loss, last_loss=callback.last_loss,
        train_loss=float(output.training_loss), trained_tokens=int(state.num_input_tokens_seen),
        steps=state.global_step, stage=spec.stage, method=spec.method.type, merged_dir=merged_dir,
        model=loaded.model, trainer=trainer,
    )
    reporter.result(**result.event_fields())
    return result


def _for_saving(trainer: StageTrainer, model: torch.nn.Module, ranks: Ranks) -> tuple[torch.nn.Module,
                                                                                      dict[str, Any] | None]:
    """The model to publish and, under FSDP, its full state dict gathered from the shards (a collective: every
    rank calls this). Under DDP and on one rank every rank holds the whole model: no state dict needed."""
    if not ranks.distributed or getattr(trainer, "is_fsdp_enabled", False) is not True:
        return model, None
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    return trainer.accelerator.unwrap_model(trainer.model), state_dict


def train(job: JobConfig, reporter: Reporter, *, stop: threading.Event | None = None,
          preempt: threading.Event | None = None, padding_free: bool | None = None,
          group_by_length: bool = False) -> TrainResult:
    """Run one attempt and report it. Raises TrainingError, TrainingCancelled, TrainingPreempted or whatever
    broke (the caller maps it with `describe_failure`).

    sft/pt batches: with flash-attention or sdpa, padding-free (the batch's rows end to end in one row,
    `position_ids` restarting per row: no padding at all; flash-attention's varlen kernels or sdpa per packed row
    keep the rows apart); with eager attention, rows padded to the longest in the batch. `padding_free` forces
    either way. `group_by_length` batches rows of similar length (less padding,
    but batches no longer mix lengths; off by default, the benchmark measures it)."""
    stop = stop or threading.Event()
    check_libraries(job)  # a tracker this worker cannot import: refused before anything loads
    plan = plan_attempt(job, reporter, padding_free=padding_free)
    loaded = load_model(plan, reporter)
    trainer, callback = build_trainer(plan, loaded, reporter, stop, preempt, group_by_length=group_by_length)
    if not job.spec.integrations or not plan.ranks.reports:  # rank 0 alone reports to the trackers
        return run_trainer(plan, loaded, trainer, callback, reporter, stop)
    trackers = start_trackers(plan.job, reporter, plan.total_steps)  # the ones the job names, none else
    reporter.observers.append(trackers.observe)
    status = "FAILED"
    try:
        result = run_trainer(plan, loaded, trainer, callback, reporter, stop)
        status = "FINISHED"
        return result
    except (TrainingCancelled, TrainingPreempted):
        status = "KILLED"
        raise
    finally:
        reporter.observers.remove(trackers.observe)
        trackers.close(status)
