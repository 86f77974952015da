"""The tiny demo base model: loads offline like a hub model, is deterministic, and chats in ChatML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.text.templates import has_generation_markers
from worker.tiny_model import build_tiny_model

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "It is 42."},
]


def test_loads_back_with_auto_classes(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    assert model.config.model_type == "llama"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (64, 2)
    assert model.num_parameters() < 1_000_000
    assert len(tokenizer) <= model.config.vocab_size == 1024

    ids = tokenizer("The worker trains the data today.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 1024)
    assert torch.isfinite(logits).all()


def test_special_tokens_and_round_trip(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1
    text = "Hello, café ✓ — numbers 12345 and\ttabs\nnew lines."  # byte-level: anything round-trips
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_chat_template_renders_chatml(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert has_generation_markers(tokenizer.chat_template)
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>tool\n42<|im_end|>\n"
        "<|im_start|>assistant\nIt is 42.<|im_end|>\n"
    )
    prompt = str(tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True))
    assert prompt.endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")

    encoded: Any = tokenizer.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)
    kept = [token for token, keep in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if keep]
    assert tokenizer.decode(kept) == "Hello! How can I help?<|im_end|>It is 42.<|im_end|>"


def test_same_seed_same_files_and_rebuild_is_a_no_op(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name

    weights = again / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "again") == again
    assert weights.stat().st_mtime_ns == before


def test_other_seed_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_rejects_impossible_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of num_heads"):
        build_tiny_model(tmp_path / "bad", hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_model(tmp_path / "bad", vocab_size=100)
