"""The job's JSONL files → the rows the trainer reads: token ids and labels, the loss on assistant tokens only.

Rendering and masking are `common.text.chat`'s (the same functions check a new job's files), not left to a
trainer library: the stage receives `input_ids` + `labels` and uses the labels as they are. Doing it here lets
the worker count trainable tokens, drop rows that have none, and say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.text.chat import normalize_messages, tokenize_chat
from common.text.masks import IGNORE_INDEX, count_trained
from worker.train.errors import TrainingError
from worker.train.protocol import INVALID_TRAINING_FILE, UNSUPPORTED_ON_WORKER


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
        return sum(count_trained(row) for row in self.labels)

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
