"""Loss masks: which tokens of a sequence are trained. A label is the token id where the token carries loss and
IGNORE_INDEX where it does not (the value PyTorch's cross-entropy skips)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100


def labels_from_mask(input_ids: Sequence[int], mask: Sequence[int]) -> list[int]:
    """The labels of `input_ids` that keep the tokens whose `mask` entry is set."""
    return [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, mask, strict=True)]


def count_trained(labels: Sequence[int]) -> int:
    return sum(1 for label in labels if label != IGNORE_INDEX)


def drop_unweighted_turns(mask: list[int], weights: list[Any]) -> list[int]:
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
