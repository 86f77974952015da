"""The shared inputs of benchmarks/train_throughput.py: the random Llama every system trains (or the real
SmolLM2-135M-Instruct, see `real_model`), the synthetic instruction rows (the same ones every time; held-out
rows from another seed), and the files each system reads them from."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer briefly.", "You are a support bot for a queue service."]
WORDS = [
    'the', 'worker', 'trains', 'answers', 'reads', 'writes', 'checks', 'returns', 'loads', 'saves', 'sends',
    'waits', 'learns', 'explains', 'a', 'small', 'model', 'queue', 'team', 'service', 'fine-tuning', 'job',
    'adapter', 'tokenizer', 'every', 'request', 'scheduler', 'user', 'assistant', 'data', 'short', 'reply',
    'training', 'file', 'one', 'question', 'weights', 'new', 'checkpoint', 'loss', 'each', 'token', 'results',
    'friendly', 'message', 'GPU', 'next', 'batch', 'today', 'before', 'noon', 'without', 'errors', 'in', 'few',
    'seconds', 'on', 'step', 'as', 'expected', 'again', 'whole',
]


def instruction_rows(n: int = 512, seed: int = 0) -> list[dict[str, Any]]:
    """Chat rows of very different lengths (10-140 words of question, 5-160 of answer), so that batches need
    padding and some rows exceed a 256-token cutoff."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 140)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 160)))
        messages = [{"role": "user", "content": f"Task {i}: {question}?"},
                    {"role": "assistant", "content": answer.capitalize() + "."}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]})
        rows.append({"messages": messages})
    return rows


def held_out_rows(n: int = 32) -> list[dict[str, Any]]:
    """Rows none of the systems trains on (another seed, numbered after any training row): the eval loss."""
    rows = instruction_rows(n, seed=1)
    for i, row in enumerate(rows):
        turn = next(m for m in row["messages"] if m["role"] == "user")
        turn["content"] = turn["content"].replace(f"Task {i}:", f"Task {10_000 + i}:", 1)
    return rows


def real_model(root: Path) -> Path:
    """SmolLM2-135M-Instruct as bf16 safetensors (var/models/smollm2-135m-instruct, made by the
    `tunequeue dev` build command; see tests/support/real_model.py)."""
    path = root / "var" / "models" / "smollm2-135m-instruct"
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is missing: build the real model first (see tests/support/real_model.py)")
    return path


def build_cpu_model(path: Path) -> Path:
    """The CPU benchmark's model: a random Llama, hidden 512, 4 layers, 8 heads, a 32,000-row vocabulary (the
    tokenizer itself, trained on a tiny corpus, uses the first couple of thousand)."""
    from worker.tiny_model import build_tiny_model

    return build_tiny_model(path, hidden_size=512, num_layers=4, num_heads=8, vocab_size=32_000,
                            initializer_range=0.02)


def build_gpu_model(path: Path) -> Path:
    """The GPU benchmark's model: a random Llama with Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV
    heads, MLP 4864, 151,936-row tied vocabulary: 494M parameters), bf16, and the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from worker.tiny_model import build_tiny_model

    if (path / "config.json").is_file():
        return path
    tokenizer_dir = build_tiny_model(path.parent / "tokenizer-source")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_rows(rows: list[dict[str, Any]], folder: Path,
               eval_rows: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """train.jsonl (+ eval.jsonl) for TuneQueue and TRL; bench.json (+ bench_eval.json) + dataset_info.json for
    LLaMA-Factory (OpenAI-style messages through its sharegpt reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"jsonl": folder / "train.jsonl", "dataset_dir": folder}
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}
    info = {}
    for name, chunk, jsonl in (("bench", rows, "train.jsonl"), ("bench_eval", eval_rows, "eval.jsonl")):
        if chunk is None:
            continue
        (folder / jsonl).write_text("".join(json.dumps(row) + "\n" for row in chunk), encoding="utf-8")
        (folder / f"{name}.json").write_text(json.dumps(chunk), encoding="utf-8")
        info[name] = {"file_name": f"{name}.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                      "tags": tags}
    if eval_rows is not None:
        files["eval_jsonl"] = folder / "eval.jsonl"
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return files
