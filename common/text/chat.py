"""Conversations → token ids and labels, the loss on assistant tokens only.

A conversation is rendered with the job's chat template (`common.text.templates.choose_template`). When the
template wraps every assistant turn (content + end-of-turn token) in `{% generation %}` markers, transformers maps
those character spans onto tokens (`return_assistant_tokens_mask`); any other template's assistant spans are
derived by rendering turn by turn (`common.text.spans`). Every other token (system, user, tool, the role headers)
gets the label IGNORE_INDEX. The trainer receives `input_ids` + `labels` and uses the labels as they are, and the
file checks count trained tokens with the same functions.
"""

from __future__ import annotations

from typing import Any

from common.text.masks import IGNORE_INDEX, drop_unweighted_turns, labels_from_mask
from common.text.spans import derive_turn_spans
from common.text.templates import has_generation_markers


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI allows content as a list of text parts; templates expect a string."""
    return [_normalize(message) for message in messages]


def _normalize(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return {**message, "content": text}
    return message


def tokenize_chat(
    tokenizer: Any, messages: list[dict[str, Any]], chat_template: str, *, train_on_inputs: bool = False,
    model: str | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation (exactly `apply_chat_template`'s) and labels that keep only the
    assistant tokens (all tokens with `train_on_inputs`). An assistant message with `"weight": 0` (OpenAI's
    field) is context, not trained. `model` names the base model in a refusal (default: the tokenizer's path)."""
    if not has_generation_markers(chat_template):
        if train_on_inputs:
            ids = list(tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=True,
                                                     return_dict=True)["input_ids"])
            return ids, list(ids)
        ids, turns = derive_turn_spans(tokenizer, messages, chat_template, model or str(tokenizer.name_or_path))
        mask = [0] * len(ids)
        for turn in turns:
            if messages[turn.index].get("weight", 1) != 0:
                mask[turn.start:turn.stop] = [1] * (turn.stop - turn.start)
        return ids, labels_from_mask(ids, mask)
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
        mask = drop_unweighted_turns(mask, weights)
    return input_ids, labels_from_mask(input_ids, mask)


def encode_completion(
    tokenizer: Any, prompt: list[dict[str, Any]], completion: list[dict[str, Any]], chat_template: str,
    *, model: str | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion and a 0/1 mask of the completion's trained tokens: the assistant tokens
    (the template's generation spans) after the rendered prompt with its generation header."""
    ids, labels = tokenize_chat(tokenizer, [*prompt, *completion], chat_template, model=model)
    prompt_ids = tokenizer.apply_chat_template(prompt, chat_template=chat_template, tokenize=True,
                                               add_generation_prompt=True, return_dict=True)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    mask = [int(i >= start and label != IGNORE_INDEX) for i, label in enumerate(labels)]
    return ids, mask
