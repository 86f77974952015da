"""What this worker's device makes of a job: compute precision, attention implementation, optimizer and
gradient checkpointing, with the "auto" values decided here. A job that needs what the device lacks (CUDA,
bitsandbytes, flash-attn) is refused before anything loads, with `unsupported_on_worker` and what it needed."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from common.schemas.job_spec import ResolvedJobSpec
from worker.train.errors import TrainingError
from worker.train.protocol import UNSUPPORTED_ON_WORKER

OPTIMIZERS_CUDA = {"adamw": "adamw_torch_fused", "adamw_8bit": "adamw_bnb_8bit",
                   "paged_adamw": "paged_adamw_32bit", "paged_adamw_8bit": "paged_adamw_8bit"}


@dataclass(frozen=True)
class DeviceChoices:
    """The device-dependent settings of one attempt, decided once by `decide_device_choices`; `describe()` goes
    into the first log event."""

    device: str  # "cuda" | "cpu"
    precision: str  # "bf16" | "fp16" | "fp32": the autocast dtype (fp32: none)
    attention: str  # a transformers attn_implementation
    optimizer: str  # a transformers `optim` name
    gradient_checkpointing: bool | None  # None: decide after the model is loaded (auto on CUDA)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def weights_dtype(self, adapter: bool) -> torch.dtype:
        """Frozen base weights of an adapter job are stored in the compute dtype; weights that train stay fp32
        (mixed precision keeps fp32 master weights)."""
        if adapter and self.autocast_dtype is not None:
            return self.autocast_dtype
        return torch.float32

    def describe(self) -> str:
        checkpointing = {True: "on", False: "off", None: "auto"}[self.gradient_checkpointing]
        return (f"{self.device} {self.precision}, attention {self.attention}, optimizer {self.optimizer}, "
                f"gradient checkpointing {checkpointing}")


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _refuse(needed: str, param: str, instead: str) -> TrainingError:
    return TrainingError(UNSUPPORTED_ON_WORKER, f"{needed}, which this worker does not have; {instead}.",
                         param=param)


def decide_device_choices(spec: ResolvedJobSpec, *, cuda: bool | None = None) -> DeviceChoices:
    """Check what the job needs against this device and fill in the "auto" choices."""
    hp = spec.hyperparameters
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if spec.method.type == "qlora":
        if not cuda:
            raise _refuse("method.type 'qlora' needs a CUDA GPU with bitsandbytes", "method.type",
                          "use method.type 'lora' or 'dora', or submit to a GPU worker")
        if not has_module("bitsandbytes"):
            raise _refuse("method.type 'qlora' needs the bitsandbytes package", "method.type",
                          "install tunequeue[gpu] on the worker, or use method.type 'lora'")
    if hp.optimizer != "adamw" and (not cuda or not has_module("bitsandbytes")):
        raise _refuse(f"hyperparameters.optimizer {hp.optimizer!r} needs a CUDA GPU with bitsandbytes",
                      "hyperparameters.optimizer", "use optimizer 'adamw'")
    if hp.attention == "flash_attention_2" and (not cuda or not has_module("flash_attn")):
        raise _refuse("hyperparameters.attention 'flash_attention_2' needs a CUDA GPU with flash-attn installed",
                      "hyperparameters.attention", "use attention 'auto' or 'sdpa'")

    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    precision = hp.precision
    if precision == "auto":
        # On CPU, autocast to bf16 is only a win with AMX and it changes the numbers; fp32 is the safe default.
        precision = ("bf16" if bf16_ok else "fp16") if cuda else "fp32"
    elif precision == "bf16" and cuda and not bf16_ok:
        raise _refuse("hyperparameters.precision 'bf16' needs a GPU with bfloat16 support", "hyperparameters."
                      "precision", "use precision 'auto' or 'fp16'")
    elif precision == "fp16" and not cuda:
        raise _refuse("hyperparameters.precision 'fp16' needs a CUDA GPU", "hyperparameters.precision",
                      "use precision 'auto', 'bf16' or 'fp32'")
    if spec.method.type == "qlora" and precision == "fp32":
        precision = "bf16" if bf16_ok else "fp16"

    attention = hp.attention
    if attention == "auto":
        attention = "flash_attention_2" if cuda and precision != "fp32" and has_module("flash_attn") else "sdpa"
    optimizer = OPTIMIZERS_CUDA[hp.optimizer] if cuda else "adamw_torch"
    checkpointing = hp.gradient_checkpointing
    gradient_checkpointing = checkpointing if isinstance(checkpointing, bool) else (None if cuda else False)
    return DeviceChoices("cuda" if cuda else "cpu", precision, attention, optimizer, gradient_checkpointing)


def needs_gradient_checkpointing(model: torch.nn.Module, micro_batch: int, seq_len: int, precision: str) -> bool:
    """'auto' on CUDA: on when the estimated activations of one micro batch exceed 70% of the free memory after
    the model is loaded. Activation bytes per layer ≈ tokens × hidden × (34 + 5 × heads × seq / hidden) in 16-bit
    (Korthikanti et al. 2022), doubled for fp32."""
    if not torch.cuda.is_available():
        return False
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 1) or 1
    per_layer = micro_batch * seq_len * hidden * (34 + 5 * heads * seq_len / max(1, hidden))
    estimate = per_layer * layers * (2 if precision == "fp32" else 1)
    free, _ = torch.cuda.mem_get_info()
    return estimate > 0.7 * free
