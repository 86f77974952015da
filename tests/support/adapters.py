"""Adapters for serve tests, made in-process: trained on a fixed phrase, random, or an edited copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from worker.model_build_lock import MODEL_BUILD_LOCK


def train_phrase_adapter(base: Path, out: Path, messages: list[dict[str, str]], answer: str, *, steps: int = 40,
                         seed: int = 0, r: int = 8) -> Path:
    """A LoRA taught, with plain torch + PEFT, to answer `messages` with `answer` (then <|im_end|>)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    with MODEL_BUILD_LOCK:  # a serve test's preload thread may be building a model meanwhile
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", lora_dropout=0.0))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = str(tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer(full.rstrip("\n"), add_special_tokens=False)["input_ids"]])
    labels = ids.clone()
    labels[0, :len(prompt_ids)] = -100
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out))
    return out


def random_adapter(base: Path, out: Path, seed: int, **config: Any) -> Path:
    """An adapter with random (non-zero) A and B, so that it visibly changes every output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    options: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "init_lora_weights": False}
    options.update(config)
    with MODEL_BUILD_LOCK:  # a serve test's preload thread may be building a model meanwhile
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**options))
    if options.get("use_dora"):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "magnitude" in name:
                    param.mul_(1.0 + 0.3 * torch.rand_like(param))
    model.save_pretrained(str(out))
    return out


def copy_adapter(src: Path, dst: Path, **config_changes: Any) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    config = json.loads((dst / "adapter_config.json").read_text())
    config.update(config_changes)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst
