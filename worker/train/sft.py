"""Supervised fine-tuning with a LoRA or DoRA adapter: `train(job, reporter)` runs one attempt end to end.

The steps are plain functions so that tests (and later stages) can use them one at a time:
`check_supported` → `load_tokenizer` → `prepare_chat_data` → `load_base_model` → `attach_adapter` →
`build_trainer` → `trainer.train()` → `save_adapter`.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PrinterCallback, set_seed
from trl import SFTConfig, SFTTrainer

from common.schemas.job_spec import JobSpec, Method
from worker.train.callbacks import ProgressCallback
from worker.train.config import BaseModelRef, JobConfig
from worker.train.data import PreparedData, prepare_chat_data, resolve_chat_template
from worker.train.errors import (
    BASE_MODEL_UNAVAILABLE,
    TRAINING_ERROR,
    UNSUPPORTED_ON_WORKER,
    TrainingCancelled,
    TrainingError,
)
from worker.train.reporter import Reporter

ADAPTER_METHODS = ("lora", "dora")


@dataclass
class TrainResult:
    """What a successful attempt produced. `model` is the trained PeftModel, for callers in this process."""

    adapter_dir: Path
    first_loss: float | None
    last_loss: float | None
    train_loss: float | None
    trained_tokens: int
    steps: int
    model: Any = field(default=None, repr=False, compare=False)

    def event_fields(self) -> dict[str, Any]:
        return {
            "adapter_dir": str(self.adapter_dir),
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
            "train_loss": self.train_loss,
            "trained_tokens": self.trained_tokens,
            "steps": self.steps,
        }


def check_supported(spec: JobSpec, *, cuda: bool) -> None:
    """Refuse, before loading anything, what this worker cannot run."""
    if spec.stage != "sft":
        raise TrainingError(
            UNSUPPORTED_ON_WORKER,
            f"stage {spec.stage!r} is not available on this worker; it trains stage 'sft' only.",
            param="stage",
        )
    method = spec.method.type
    if method == "qlora":
        why = (
            "qlora needs a CUDA GPU with bitsandbytes and this worker has no GPU"
            if not cuda
            else "qlora is not available in this worker build yet"
        )
        raise TrainingError(
            UNSUPPORTED_ON_WORKER, f"{why}; use method.type 'lora' or 'dora'.", param="method.type"
        )
    if method not in ADAPTER_METHODS:
        raise TrainingError(
            UNSUPPORTED_ON_WORKER,
            f"method.type {method!r} is not available on this worker; use 'lora' or 'dora'.",
            param="method.type",
        )


def _is_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(".") or Path(path).exists()


def _unavailable(ref: BaseModelRef, what: str, exc: BaseException) -> TrainingError:
    return TrainingError(
        BASE_MODEL_UNAVAILABLE,
        f"Could not load the {what} of base model {ref.id} from {ref.path} ({type(exc).__name__}: {exc}). "
        "Check the model registry (TUNEQUEUE_BASE_MODELS) on this worker host: the path must hold a "
        "transformers model with safetensors weights.",
        param="base_model",
    )


def _check_present(ref: BaseModelRef) -> None:
    if _is_local(ref.path) and not Path(ref.path).is_dir():
        raise TrainingError(
            BASE_MODEL_UNAVAILABLE,
            f"Base model {ref.id} is registered at {ref.path}, which does not exist on this worker host. "
            "Build or copy the model there, or fix its entry in TUNEQUEUE_BASE_MODELS.",
            param="base_model",
        )


def load_tokenizer(ref: BaseModelRef) -> Any:
    _check_present(ref)
    try:
        return AutoTokenizer.from_pretrained(
            ref.path, revision=ref.revision, trust_remote_code=ref.trust_remote_code
        )
    except Exception as exc:
        raise _unavailable(ref, "tokenizer", exc) from exc


def load_base_model(ref: BaseModelRef, *, dtype: torch.dtype) -> PreTrainedModel:
    """The base model from safetensors only, in `dtype`, on the CPU (the Trainer moves it)."""
    _check_present(ref)
    try:
        return AutoModelForCausalLM.from_pretrained(
            ref.path,
            revision=ref.revision,
            trust_remote_code=ref.trust_remote_code,
            use_safetensors=True,
            dtype=dtype,
        )
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        raise _unavailable(ref, "weights", exc) from exc


def lora_config(method: Method, model: torch.nn.Module) -> LoraConfig:
    """The one place a job's method turns into a PEFT config (DoRA is LoRA with `use_dora`)."""
    options = method.lora
    targets: str | list[str] = options.target_modules
    if isinstance(targets, list):
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        unknown = [name for name in targets if name not in linear]
        if unknown:
            raise TrainingError(
                TRAINING_ERROR,
                f"method.lora.target_modules names {unknown}, which are not linear layers of this base model; "
                f"use 'all-linear' or some of {linear}.",
                param="method.lora.target_modules",
            )
    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=targets,
        use_dora=method.type == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_adapter(model: PreTrainedModel, method: Method, *, seed: int) -> PeftModel:
    """Wrap the base model with a fresh adapter; the same seed gives the same initial adapter weights."""
    config = lora_config(method, model)
    set_seed(seed)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def build_trainer(
    job: JobConfig,
    model: PeftModel,
    tokenizer: Any,
    train_data: PreparedData,
    eval_data: PreparedData | None = None,
    *,
    callbacks: list[Any] | None = None,
    bf16: bool = False,
) -> SFTTrainer:
    hp = job.hyperparameters
    args = SFTConfig(
        output_dir=str(job.output_dir),
        num_train_epochs=hp.n_epochs,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=hp.learning_rate,
        lr_scheduler_type="linear",
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        logging_first_step=True,
        eval_strategy="epoch" if eval_data is not None else "no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        # TRL turns checkpointing on by default; transformers 5 calls it activation_checkpointing
        activation_checkpointing=False,
        bf16=bf16,  # TRL defaults to True even on CPU
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        seed=job.spec.seed,
        data_seed=job.spec.seed,
        max_length=hp.max_seq_length,
        packing=False,
        padding_free=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_data.to_dataset(),
        eval_dataset=eval_data.to_dataset() if eval_data is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off it print()s every log dict to stdout
    return trainer


def save_adapter(model: PeftModel, tokenizer: Any, adapter_dir: Path) -> Path:
    """PEFT's adapter_config.json + adapter_model.safetensors and the tokenizer (with the chat template the
    adapter was trained with), written beside the target and moved in whole."""
    staging = adapter_dir.with_name(f".{adapter_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "README.md").unlink(missing_ok=True)  # PEFT's model card template; nothing of ours
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(staging, adapter_dir)
    return adapter_dir


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def train(job: JobConfig, reporter: Reporter, *, stop: threading.Event | None = None) -> TrainResult:
    """Run one SFT attempt and report it. Raises TrainingError, TrainingCancelled or whatever broke."""
    stop = stop or threading.Event()
    cuda = torch.cuda.is_available()
    check_supported(job.spec, cuda=cuda)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    hp = job.hyperparameters
    set_seed(job.spec.seed)

    tokenizer = load_tokenizer(job.base_model)
    template = resolve_chat_template(tokenizer, job.base_model.template, job.base_model.id)
    tokenizer.chat_template = template  # saved with the adapter, so serving renders chats the same way

    def warn(message: str) -> None:
        reporter.log(message, "warning")

    train_data = prepare_chat_data(job.training_file, tokenizer, template, hp.max_seq_length, warn=warn)
    eval_data = None
    if job.validation_file is not None:
        eval_data = prepare_chat_data(
            job.validation_file, tokenizer, template, hp.max_seq_length, param="validation_file", warn=warn
        )

    base = load_base_model(job.base_model, dtype=torch.bfloat16 if bf16 else torch.float32)
    base_params = base.num_parameters()
    model = attach_adapter(base, job.spec.method, seed=job.spec.seed)
    trainable, _ = model.get_nb_trainable_parameters()

    callback = ProgressCallback(reporter, stop)
    trainer = build_trainer(job, model, tokenizer, train_data, eval_data, callbacks=[callback], bf16=bf16)
    steps = math.ceil(train_data.rows / hp.batch_size) * hp.n_epochs
    reporter.log(
        f"loaded base model {job.base_model.id} ({_millions(base_params)} params), {train_data.rows} rows, "
        f"{steps} steps; training {_millions(trainable)} {job.spec.method.type} parameters on "
        f"{train_data.trainable_tokens} of {train_data.tokens} tokens (assistant turns only), "
        f"{'cuda bf16' if bf16 else ('cuda fp32' if cuda else 'cpu fp32')}"
    )
    if stop.is_set():
        raise TrainingCancelled(0, steps)

    output = trainer.train()
    state = trainer.state
    if callback.cancelled or stop.is_set():
        raise TrainingCancelled(state.global_step, state.max_steps)

    adapter_dir = save_adapter(model, tokenizer, job.adapter_dir.absolute())
    result = TrainResult(
        adapter_dir=adapter_dir,
        first_loss=callback.first_loss,
        last_loss=callback.last_loss,
        train_loss=float(output.training_loss),
        trained_tokens=int(state.num_input_tokens_seen),
        steps=state.global_step,
        model=model,
    )
    reporter.result(**result.event_fields())
    return result
