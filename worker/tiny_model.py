"""A tiny random-weight Llama model with a locally trained tokenizer, built without any network access.

It is the demo base model that `make up` registers and the model every training test uses: small enough to
train in seconds on a CPU, real enough (Llama architecture, byte-level BPE, ChatML template with generation
markers) that TRL and PEFT treat it like any hub model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from common.text.named_templates import CHATML_TEMPLATE

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]

# Written last: its presence with the same parameters means a complete earlier build (idempotence).
_MANIFEST = "tunequeue_tiny_model.json"
_FORMAT = 1

_SUBJECTS = [
    "the worker", "a small model", "the queue", "our team", "the service", "a fine-tuning job",
    "the adapter", "the tokenizer", "every request", "the scheduler", "a user", "the assistant",
]
_VERBS = [
    "trains", "answers", "reads", "writes", "checks", "returns", "loads", "saves", "sends", "waits for",
    "learns", "explains",
]
_OBJECTS = [
    "the data", "a short reply", "the training file", "one question", "the weights", "a new checkpoint",
    "the loss", "each token", "the results", "a friendly message", "the GPU", "the next batch",
]
_ENDINGS = [
    "today.", "before noon.", "without errors.", "in a few seconds.", "on every step.", "as expected.",
    "again and again.", "for the whole team.",
]
_PHRASES = [
    "Hello! How can I help you today?",
    "Thank you for your question, here is the answer.",
    "I am sorry, I do not know that yet.",
    "Please upload a file and start a job.",
    "The answer is 42, and the reason is simple.",
    "What is the capital of France? It is Paris.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024.",
    "Yes, of course. No, not at all. Maybe later, if you like.",
    "def main():\n    return {\"status\": \"ok\", \"items\": [1, 2, 3]}",
    "You are a helpful assistant. Answer briefly and politely.",
]


def tiny_corpus() -> list[str]:
    """About 7 KB of plain English generated from word lists; the same text every time."""
    lines = list(_PHRASES)
    for i, subject in enumerate(_SUBJECTS):
        for j, verb in enumerate(_VERBS):
            obj = _OBJECTS[(i + 2 * j) % len(_OBJECTS)]
            ending = _ENDINGS[(i * j + j) % len(_ENDINGS)]
            lines.append(f"{subject.capitalize()} {verb} {obj} {ending}")
    return lines


def _build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tiny_corpus(), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        extra_special_tokens=[IM_START],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _build_model(tokenizer, *, hidden_size: int, num_layers: int, num_heads: int, vocab_size: int, seed: int,
                 initializer_range: float):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny_model(
    path: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 1024,
    seed: int = 0,
    initializer_range: float = 0.1,
) -> Path:
    """Write a tiny Llama causal LM and its tokenizer to `path` and return it as an absolute Path.

    The directory loads offline with `AutoModelForCausalLM.from_pretrained(path)` and
    `AutoTokenizer.from_pretrained(path)`. The same arguments give the same files (weights seeded with `seed`);
    if `path` already holds a complete build with the same arguments, nothing is rebuilt. The default
    `initializer_range` is wider than Llama's 0.02 so that a LoRA at lr 1e-3 visibly moves the loss within a few
    dozen steps; the tokenizer has at most `vocab_size` tokens (fewer when the corpus has no more merges).
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    target = Path(path).absolute()
    params: dict[str, float] = {
        "format": _FORMAT, "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
        "vocab_size": vocab_size, "seed": seed,
    }
    if initializer_range != 0.1:  # absent from manifests of the default build, so existing builds stay valid
        params["initializer_range"] = initializer_range
    manifest = target / _MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == params:
        return target

    tokenizer = _build_tokenizer(vocab_size)
    model = _build_model(
        tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
        vocab_size=vocab_size, seed=seed, initializer_range=initializer_range,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and move the files in, the manifest last, so a reader never sees a half model.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        target.mkdir(exist_ok=True)
        (target / _MANIFEST).unlink(missing_ok=True)
        for item in sorted(staging.iterdir()):
            os.replace(item, target / item.name)
        tmp_manifest = staging / _MANIFEST
        tmp_manifest.write_text(json.dumps(params, indent=2) + "\n")
        os.replace(tmp_manifest, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
