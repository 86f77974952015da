"""What an attempt leaves behind: the published weights (an adapter, or full weights for full/freeze) and an
optional merged model.

Every directory is written beside its target and moved in whole, so the parent never uploads half a folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from worker.train.config import JobConfig


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def save_published(model: Any, tokenizer: Any, target: Path, *, pissa_init_dir: Path | None = None,
                   state_dict: dict[str, Any] | None = None) -> Path:
    """An adapter method writes PEFT's adapter_config.json + adapter_model.safetensors (a PiSSA adapter converted
    to a plain LoRA of the original base); full/freeze write the whole model. The tokenizer, with the chat
    template it was trained with, goes along. `state_dict`: the full weights gathered from FSDP's shards."""
    extra: dict[str, Any] = {"state_dict": state_dict} if state_dict is not None else {}
    with staged(target) as staging:
        if pissa_init_dir is not None:
            model.save_pretrained(str(staging), safe_serialization=True,
                                  path_initial_model_for_weight_conversion=str(pissa_init_dir), **extra)
        else:
            model.save_pretrained(str(staging), safe_serialization=True, **extra)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's model card template; nothing of ours
    return target


def save_merged(job: JobConfig, adapter_dir: Path, tokenizer: Any, *, reward_model: bool, dtype: torch.dtype) -> Path:
    """The base model with the published adapter folded in, built on the CPU from the files just written (a
    QLoRA adapter merges into the full-precision base)."""
    from peft import PeftModel

    from worker.train.loading import load_base_model

    base = load_base_model(job.base_model, dtype=dtype, reward_model=reward_model,
                           pad_token_id=tokenizer.pad_token_id)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with staged(job.merged_dir.absolute()) as staging:
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return job.merged_dir.absolute()
