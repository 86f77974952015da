"""Loading the base model and its tokenizer from the registry entry the parent resolved: safetensors only,
remote code only when an admin registered the model with it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from worker.model_build_lock import MODEL_BUILD_LOCK
from worker.train.config import BaseModelRef
from worker.train.errors import TrainingError
from worker.train.protocol import BASE_MODEL_UNAVAILABLE


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


def check_present(ref: BaseModelRef) -> None:
    if _is_local(ref.path) and not Path(ref.path).is_dir():
        raise TrainingError(
            BASE_MODEL_UNAVAILABLE,
            f"Base model {ref.id} is registered at {ref.path}, which does not exist on this worker host. "
            "Build or copy the model there, or fix its entry in TUNEQUEUE_BASE_MODELS.",
            param="base_model",
        )


def load_tokenizer(ref: BaseModelRef) -> Any:
    check_present(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=ref.revision,
                                                  trust_remote_code=ref.trust_remote_code)
    except Exception as exc:
        raise _unavailable(ref, "tokenizer", exc) from exc
    if tokenizer.pad_token is None:  # batches need one; it is never trained (labels -100, attention 0)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    ref: BaseModelRef,
    *,
    dtype: torch.dtype,
    reward_model: bool = False,
    attention: str | None = None,
    quantization: Any = None,
    pad_token_id: int | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """The base model in `dtype` (a causal LM, or for a reward model the same backbone with a one-output value
    head `score`, initialised from `seed`), on the CPU unless quantized (bitsandbytes places it on the GPU)."""
    check_present(ref)
    kwargs: dict[str, Any] = {
        "revision": ref.revision, "trust_remote_code": ref.trust_remote_code, "use_safetensors": True,
        "dtype": dtype,
    }
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        with MODEL_BUILD_LOCK:  # tests train in a process where serve's threads may build too
            if reward_model:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)  # the new value head's initial weights
                    model = AutoModelForSequenceClassification.from_pretrained(ref.path, num_labels=1, **kwargs)
                if pad_token_id is not None:
                    model.config.pad_token_id = pad_token_id
                return model
            return AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        raise _unavailable(ref, "weights", exc) from exc
