"""Methods: how a job's `method` becomes trainable weights. One function builds the PEFT config
(`peft_config`), one the bitsandbytes config (`quantization_config`); `apply_method` wraps or freezes the model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, set_seed

from common.schemas.job_spec import ADAPTER_METHODS, LoraOptions, Method
from worker.train.errors import TrainingError
from worker.train.precision import train_saved_modules_in_fp32
from worker.train.protocol import TRAINING_ERROR

SERVING_WARNING = (
    "method.lora.modules_to_save trains {names} in full and stores them in the adapter; TuneQueue's serve (its own "
    "engine and vLLM alike) and most serving engines refuse such adapters. Publish a merged model to serve it."
)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def _pissa_init(model: torch.nn.Module) -> str:
    """Exact SVD for small weights; the fast randomised variant (16 iterations) for big ones."""
    biggest = max((min(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)), default=0)
    return "pissa" if biggest <= 1024 else "pissa_niter_16"


def peft_config(method: Method, model: torch.nn.Module, *, task_type: str = "CAUSAL_LM") -> Any:
    """The one place a job's method turns into a PEFT `LoraConfig` (DoRA is LoRA with `use_dora`)."""
    from peft import LoraConfig

    options = method.lora or LoraOptions()
    targets: str | list[str] = options.target_modules
    if isinstance(targets, list):
        linear = linear_module_names(model)
        unknown = [name for name in targets if name not in linear]
        if unknown:
            raise TrainingError(
                TRAINING_ERROR,
                f"method.lora.target_modules names {unknown}, which are not linear layers of this base model; "
                f"use 'all-linear' or some of {linear}.",
                param="method.lora.target_modules",
            )
    init: Any = {"default": True, "gaussian": "gaussian"}.get(options.init) or _pissa_init(model)
    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=targets,
        use_dora=method.type == "dora",
        use_rslora=options.use_rslora,
        init_lora_weights=init,
        modules_to_save=options.modules_to_save,
        bias="none",
        task_type=task_type,
    )


def quantization_config(method: Method, compute_dtype: torch.dtype) -> Any | None:
    """The one place a job's method turns into a bitsandbytes config (qlora only; None otherwise)."""
    if method.type != "qlora" or method.quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    options = method.quantization
    if options.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def _decoder_layers(model: torch.nn.Module) -> tuple[str, int]:
    """The parameter-name prefix of the decoder layers ("model.layers") and how many there are."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers") and len(module) > 0:
            return name, len(module)
    raise TrainingError(TRAINING_ERROR, "method.type 'freeze' could not find this model's decoder layers; use "
                        "'lora' or 'full'.", param="method.type")


def _matches_module(name: str, module: str) -> bool:
    parts = name.split(".")
    return any(".".join(parts[i:]).startswith(module + ".") for i in range(min(2, len(parts))))


def freeze_for_method(model: torch.nn.Module, method: Method, *, always_trainable: tuple[str, ...] = ()) -> None:
    """method.type 'freeze': only the last N decoder layers (optionally only some modules in them), the extra
    modules and `always_trainable` (a reward model's value head) train."""
    assert method.freeze is not None
    options = method.freeze
    prefix, count = _decoder_layers(model)
    if options.trainable_layers > count:
        raise TrainingError(TRAINING_ERROR, f"method.freeze.trainable_layers is {options.trainable_layers} but the "
                            f"base model has {count} layers; use at most {count}, or method.type 'full'.",
                            param="method.freeze.trainable_layers")
    layers = {f"{prefix}.{i}." for i in range(count - options.trainable_layers, count)}
    extra = list(options.extra_modules) + list(always_trainable)
    trained = 0
    for name, param in model.named_parameters():
        in_layer = any(name.startswith(layer) for layer in layers)
        if in_layer and options.trainable_modules:
            in_layer = any(module in name for module in options.trainable_modules)
        param.requires_grad_(in_layer or any(_matches_module(name, module) for module in extra))
        trained += param.requires_grad
    if not trained:
        raise TrainingError(TRAINING_ERROR, f"method.freeze selects no parameter (trainable_modules "
                            f"{options.trainable_modules}); name modules that exist, e.g. ['mlp', 'self_attn'].",
                            param="method.freeze.trainable_modules")


def apply_method(
    model: PreTrainedModel,
    method: Method,
    *,
    seed: int,
    task_type: str = "CAUSAL_LM",
    init_adapter_dir: Path | None = None,
    gradient_checkpointing: bool = False,
    warn: Any = None,
) -> Any:
    """Return the model to train: a PeftModel for adapter methods (fresh, or from `init_adapter_dir`), else the
    model itself with `requires_grad` set. The same seed gives the same initial adapter."""
    head = ("score",) if task_type == "SEQ_CLS" else ()
    if method.type == "full":
        model.requires_grad_(True)
        return model
    if method.type == "freeze":
        freeze_for_method(model, method, always_trainable=head)
        return model
    assert method.type in ADAPTER_METHODS
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if method.lora is not None and method.lora.modules_to_save and warn is not None:
        warn(SERVING_WARNING.format(names=method.lora.modules_to_save))
    set_seed(seed)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if init_adapter_dir is not None:
            wrapped = PeftModel.from_pretrained(model, str(init_adapter_dir), is_trainable=True)
        else:
            wrapped = get_peft_model(model, peft_config(method, model, task_type=task_type))
    train_saved_modules_in_fp32(wrapped)  # trained weights stay fp32 over a 16-bit base
    return wrapped

