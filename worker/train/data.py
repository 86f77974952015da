"""Chat JSONL → token ids and labels, with the loss on assistant tokens only.

Masking is done here, not left to TRL: each conversation is rendered with a training chat template whose
`{% generation %}` markers wrap every assistant turn (content + end-of-turn token). transformers maps those
character spans onto tokens (`return_assistant_tokens_mask`); every other token (system, user, tool, the
role headers) gets the label -100. TRL receives `input_ids` + `labels` and uses the labels as they are.
Doing it here lets the worker count trainable tokens, drop rows that have none, and say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.train.errors import INVALID_TRAINING_FILE, UNSUPPORTED_ON_WORKER, TrainingError
from worker.train.templates import TEMPLATES, has_generation_markers

IGNORE_INDEX = -100


def read_jsonl(path: Path, *, param: str, keys: tuple[str, ...], shape: str) -> list[dict[str, Any]]:
    """Every non-blank line of a JSONL file the parent wrote, each an object with `keys`."""
    what = param.replace("_", " ")
    if not path.is_file():
        raise TrainingError(
            INVALID_TRAINING_FILE,
            f"The {what} {path} is not on this worker; upload it again and resubmit the job.",
            param=param,
        )
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [key for key in keys if key not in row]
                if missing:
                    raise KeyError(f"no {missing[0]!r}")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise TrainingError(
                    INVALID_TRAINING_FILE,
                    f"Line {line_no} of the {what} is not a row of this stage ({exc}); each line must be {shape}.",
                    param=param,
                ) from exc
            rows.append(row)
    return rows


def read_chat_file(path: Path, *, param: str = "training_file") -> list[list[dict[str, Any]]]:
    """The `messages` list of every non-blank line of an OpenAI chat JSONL file."""
    rows = read_jsonl(path, param=param, keys=("messages",),
                      shape='{"messages": [{"role": ..., "content": ...}, ...]}')
    for line_no, row in enumerate(rows, start=1):
        if not isinstance(row["messages"], list):
            raise TrainingError(INVALID_TRAINING_FILE, f"Row {line_no} of the {param.replace('_', ' ')}: "
                                "'messages' is not a list.", param=param)
    return [normalize_messages(row["messages"]) for row in rows]


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_normalize(message) for message in messages]


def _normalize(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI allows content as a list of text parts; templates expect a string."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return {**message, "content": text}
    return message


def resolve_chat_template(tokenizer: Any, template_name: str | None, model_id: str) -> str:
    """The training template: the registered one by name, else the tokenizer's own with generation markers
    (or TRL's marked version of it for the templates TRL knows)."""
    if template_name is not None:
        if template_name not in TEMPLATES:
            raise TrainingError(
                UNSUPPORTED_ON_WORKER,
                f"Base model {model_id} is registered with template {template_name!r}, which this worker does not "
                f"know. Known templates: {', '.join(sorted(TEMPLATES))}; or register it without a template to use "
                "the tokenizer's own.",
                param="base_model",
            )
        return TEMPLATES[template_name]
    own = tokenizer.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if not own:
        raise TrainingError(
            UNSUPPORTED_ON_WORKER,
            f"Base model {model_id} has no chat template, so chat rows cannot be rendered. Register it with a "
            f"template, e.g. 'chatml'.",
            param="base_model",
        )
    if has_generation_markers(own):
        return own
    try:
        from trl.chat_template_utils import get_training_chat_template

        patched = get_training_chat_template(tokenizer)
    except Exception:  # any failure here means "TRL has no marked version of this template"
        patched = None
    if patched:
        return patched
    raise TrainingError(
        UNSUPPORTED_ON_WORKER,
        f"The chat template of base model {model_id} does not mark assistant turns with "
        "{% generation %}…{% endgeneration %}, so the worker cannot tell which tokens to train on. Register the "
        "model with template 'chatml' if it uses ChatML, or add the markers to its chat template.",
        param="base_model",
    )


def tokenize_chat(
    tokenizer: Any, messages: list[dict[str, Any]], chat_template: str, *, train_on_inputs: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that keep only the assistant tokens (all tokens with
    `train_on_inputs`). An assistant message with `"weight": 0` (OpenAI's field) is context, not trained."""
    encoded = tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    input_ids = list(encoded["input_ids"])
    if train_on_inputs:
        return input_ids, list(input_ids)
    mask = list(encoded["assistant_masks"])
    weights = [message.get("weight", 1) for message in messages if message.get("role") == "assistant"]
    if any(weight == 0 for weight in weights):
        mask = _drop_unweighted_turns(mask, weights)
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, mask, strict=True)]
    return input_ids, labels


def _drop_unweighted_turns(mask: list[int], weights: list[Any]) -> list[int]:
    """Zero the k-th span of assistant tokens when the k-th assistant message has weight 0. Spans and messages
    match one to one in every template that puts a header between turns; if they do not, nothing is dropped."""
    spans, start = [], None
    for i, keep in enumerate([*mask, 0]):
        if keep and start is None:
            start = i
        elif not keep and start is not None:
            spans.append((start, i))
            start = None
    if len(spans) != len(weights):
        return mask
    mask = list(mask)
    for (begin, end), weight in zip(spans, weights, strict=True):
        if weight == 0:
            mask[begin:end] = [0] * (end - begin)
    return mask


def encode_completion(
    tokenizer: Any, prompt: list[dict[str, Any]], completion: list[dict[str, Any]], chat_template: str
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion and a 0/1 mask of the completion's trained tokens: the assistant tokens
    (the template's generation spans) after the rendered prompt with its generation header."""
    ids, labels = tokenize_chat(tokenizer, [*prompt, *completion], chat_template)
    prompt_ids = tokenizer.apply_chat_template(prompt, chat_template=chat_template, tokenize=True,
                                               add_generation_prompt=True, return_dict=True)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    mask = [int(i >= start and label != IGNORE_INDEX) for i, label in enumerate(labels)]
    return ids, mask


@dataclass
class PreparedData:
    """Tokenized rows ready for the trainer, and what happened on the way."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    rows_read: int
    rows_truncated: int
    rows_dropped: int

    @property
    def rows(self) -> int:
        return len(self.input_ids)

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    @property
    def trainable_tokens(self) -> int:
        return sum(sum(label != IGNORE_INDEX for label in row) for row in self.labels)

    def rows_as_dicts(self) -> list[dict[str, Any]]:
        return [{"input_ids": ids, "labels": labels} for ids, labels in zip(self.input_ids, self.labels,
                                                                             strict=True)]


def prepare_chat_data(
    path: Path,
    tokenizer: Any,
    chat_template: str,
    max_seq_length: int,
    *,
    param: str = "training_file",
    warn: Callable[[str], None] | None = None,
    train_on_inputs: bool = False,
) -> PreparedData:
    """Read, render, mask and truncate (keeping the start) a chat file; rows left without an assistant token
    are dropped, and a file with no trainable row at all is an `invalid_training_file` error."""
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingError(
            UNSUPPORTED_ON_WORKER,
            "The base model's tokenizer has no fast (tokenizers) version, which assistant-only masking needs; "
            "register a model that ships tokenizer.json.",
            param="base_model",
        )
    conversations = read_chat_file(path, param=param)
    all_ids, all_labels = [], []
    truncated = dropped = 0
    for messages in conversations:
        input_ids, labels = tokenize_chat(tokenizer, messages, chat_template, train_on_inputs=train_on_inputs)
        if len(input_ids) > max_seq_length:
            truncated += 1
            input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        all_ids.append(input_ids)
        all_labels.append(labels)

    what = param.replace("_", " ")
    if not all_ids:
        raise TrainingError(
            INVALID_TRAINING_FILE,
            f"No row of the {what} has an assistant token within the first {max_seq_length} tokens "
            f"({len(conversations)} rows read), so there is nothing to train on. Every row needs an assistant "
            "message; if they have one, raise hyperparameters.max_seq_length or shorten the turns before it.",
            param=param,
        )
    if warn is not None and truncated:
        warn(f"{truncated} of {len(conversations)} rows of the {what} are longer than max_seq_length "
             f"({max_seq_length} tokens) and were cut at the end.")
    if warn is not None and dropped:
        warn(f"{dropped} of {len(conversations)} rows of the {what} have no assistant token within "
             f"max_seq_length ({max_seq_length} tokens) and were skipped.")
    return PreparedData(all_ids, all_labels, len(conversations), truncated, dropped)
