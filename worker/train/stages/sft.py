"""Language-modelling stages: sft (chat rows, loss on assistant tokens) and pt (plain text, loss on every token).

Both use one collator and one loss: token cross-entropy over the scored positions only, normalised by the
number of scored tokens in the whole accumulated batch, plus next-token accuracy; the LM head runs in chunks
(worker/train/chunked_loss.py). Packing and padding-free batches put several rows in one row with `position_ids`
that restart per row; attention keeps them apart (flash-attention's varlen kernels, or sdpa per packed row:
worker/train/varlen_attention.py; eager gets transformers' block-diagonal mask), so rows never attend to each
other, and the loss never predicts a row's first token from the row before.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from common.text.masks import IGNORE_INDEX
from worker.train.chunked_loss import chunked_cross_entropy
from worker.train.data import prepare_chat_data, read_jsonl
from worker.train.errors import TrainingError
from worker.train.protocol import INVALID_TRAINING_FILE
from worker.train.stages.base import Batch, Metrics, Row, Stage, StageData, backbone_and_head, pad
from worker.train.varlen_attention import packed_attention


def pack_rows(rows: list[Row], window: int) -> list[Row]:
    """Best-fit decreasing: each row (≤ window tokens) goes into the fullest window it still fits in."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]), reverse=True)
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for index in order:
        size = len(rows[index]["input_ids"])
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, slot = free.pop(at)
        else:
            room, slot = window, len(bins)
            bins.append([])
        bins[slot].append(index)
        if room - size > 0:
            bisect.insort(free, (room - size, slot))
    return [_concat([rows[i] for i in members]) for members in bins]


def _concat(rows: list[Row]) -> Row:
    return {
        "input_ids": [token for row in rows for token in row["input_ids"]],
        "labels": [label for row in rows for label in row["labels"]],
        "position_ids": [pos for row in rows for pos in range(len(row["input_ids"]))],
    }


def chunk_stream(docs: list[list[int]], window: int) -> list[Row]:
    """pt packing: the documents end to end, cut into windows of `window` tokens; positions restart at every
    document and at every window."""
    windows: list[Row] = []
    ids: list[int] = []
    positions: list[int] = []
    for doc in docs:
        pos = 0
        for token in doc:
            ids.append(token)
            positions.append(pos)
            pos += 1
            if len(ids) == window:
                windows.append({"input_ids": ids, "labels": list(ids), "position_ids": positions})
                ids, positions, pos = [], [], 0
    if ids:
        windows.append({"input_ids": ids, "labels": list(ids), "position_ids": positions})
    return windows


class LanguageModelling(Stage):
    """sft and pt."""

    loss_scaled_for_accumulation = True

    def __init__(self, job: Any, tokenizer: Any, template: str | None, *, padding_free: bool = False) -> None:
        super().__init__(job, tokenizer, template)
        self.padding_free = padding_free

    def prepare(self, warn: Callable[[str], None]) -> StageData:
        hp = self.job.spec.hyperparameters
        train = self._rows(self.job.training_file, "training_file", warn)
        eval_rows = self._rows(self.job.validation_file, "validation_file", warn) if self.job.validation_file \
            else None
        tokens = sum(len(row["input_ids"]) for row in train)
        trained = sum(sum(label != IGNORE_INDEX for label in row["labels"]) for row in train)
        notes = []
        if hp.packing:
            before = len(train)
            train = self._pack(train)
            eval_rows = self._pack(eval_rows) if eval_rows else eval_rows
            notes.append(f"packed {before} rows into {len(train)} windows of up to {hp.max_seq_length} tokens")
        return StageData(train, eval_rows, tokens, trained, notes)

    def _rows(self, path: Any, param: str, warn: Callable[[str], None]) -> list[Row]:
        raise NotImplementedError

    def _pack(self, rows: list[Row]) -> list[Row]:
        return pack_rows(rows, self.job.spec.hyperparameters.max_seq_length)

    def collate(self, rows: list[Row]) -> Batch:
        if self.padding_free and len(rows) > 1:
            rows = [_concat(rows)] if "position_ids" not in rows[0] else [_concat_packed(rows)]
        ids = pad([row["input_ids"] for row in rows], self.pad_id)
        labels = pad([row["labels"] for row in rows], IGNORE_INDEX)
        batch: Batch = {"input_ids": ids, "labels": labels,
                        "num_tokens": sum(len(row["input_ids"]) for row in rows)}
        targets = torch.full_like(labels, IGNORE_INDEX)
        targets[:, :-1] = labels[:, 1:]
        if "position_ids" in rows[0]:
            # Padding continues as one more segment (positions 0, 1, …), never trained.
            positions = [row["position_ids"] + list(range(ids.size(1) - len(row["position_ids"]))) for row in rows]
            batch["position_ids"] = torch.tensor(positions, dtype=torch.long)
            starts = batch["position_ids"][:, 1:] == 0
            targets[:, :-1] = targets[:, :-1].masked_fill(starts, IGNORE_INDEX)
        else:
            batch["attention_mask"] = pad([[1] * len(row["input_ids"]) for row in rows], 0)
        batch["shift_labels"] = targets
        return batch

    def loss(self, model: torch.nn.Module, batch: Batch, num_items: Any) -> tuple[torch.Tensor, Metrics]:
        targets = batch["shift_labels"]
        total, correct = scored_cross_entropy(model, batch, targets)
        scored = int((targets != IGNORE_INDEX).sum())
        denominator = num_items if num_items is not None else max(1, scored)
        metrics: Metrics = {"token_accuracy": correct.item() / scored} if scored else {}
        return total / denominator, metrics


def scored_cross_entropy(model: torch.nn.Module, batch: Batch, targets: torch.Tensor) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """(sum of the token cross-entropies, number of argmax hits) at the positions where `targets` is not
    IGNORE_INDEX. Packed rows (`position_ids`) attend per row (worker/train/varlen_attention.py); the LM head
    runs in chunks over the scored positions only (worker/train/chunked_loss.py), or — for a head that is not a
    plain `nn.Linear` — over those positions at once."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
    keep = targets != IGNORE_INDEX
    wanted = targets[keep]
    backbone, head = backbone_and_head(model)
    with packed_attention(model) if "position_ids" in batch else contextlib.nullcontext():
        if backbone is None or head is None:
            logits = model(**inputs, use_cache=False).logits[keep].float()
        else:
            hidden = backbone(**inputs, use_cache=False).last_hidden_state[keep]
            if type(head) is torch.nn.Linear:
                return chunked_cross_entropy(hidden, head, wanted)
            logits = head(hidden).float()
    return F.cross_entropy(logits, wanted, reduction="sum"), (logits.argmax(dim=-1) == wanted).sum()


def _concat_packed(rows: list[Row]) -> Row:
    return {key: [value for row in rows for value in row[key]] for key in ("input_ids", "labels", "position_ids")}


class Sft(LanguageModelling):
    name = "sft"

    def _rows(self, path: Any, param: str, warn: Callable[[str], None]) -> list[Row]:
        assert self.template is not None
        data = prepare_chat_data(path, self.tokenizer, self.template, self.job.spec.hyperparameters.max_seq_length,
                                 param=param, warn=warn, train_on_inputs=self.job.spec.train_on_inputs)
        return data.rows_as_dicts()

    def describe(self, data: StageData) -> str:
        what = "all tokens" if self.job.spec.train_on_inputs else "assistant turns only"
        return f"training on {data.trained_tokens} of {data.tokens} tokens ({what})"


class Pretraining(LanguageModelling):
    name = "pt"

    def _rows(self, path: Any, param: str, warn: Callable[[str], None]) -> list[Row]:
        rows = read_jsonl(path, param=param, keys=("text",), shape='{"text": "..."}')
        eos = self.tokenizer.eos_token_id
        docs = []
        for row in rows:
            ids = list(self.tokenizer(str(row["text"]))["input_ids"])
            docs.append(ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids)
        docs = [doc for doc in docs if len(doc) > 1]
        if not docs:
            raise TrainingError(INVALID_TRAINING_FILE, f"The {param.replace('_', ' ')} has no text to train on; "
                                'each line must be {"text": "..."} with some text.', param=param)
        if self.job.spec.hyperparameters.packing:
            return [{"input_ids": doc, "labels": list(doc)} for doc in docs]
        window = self.job.spec.hyperparameters.max_seq_length
        cut = sum(len(doc) > window for doc in docs)
        if cut:
            warn(f"{cut} of {len(docs)} texts are longer than max_seq_length ({window} tokens) and were cut at "
                 "the end; set hyperparameters.packing to keep every token.")
        return [{"input_ids": doc[:window], "labels": doc[:window]} for doc in docs]

    def _pack(self, rows: list[Row]) -> list[Row]:
        return chunk_stream([row["input_ids"] for row in rows], self.job.spec.hyperparameters.max_seq_length)

    def describe(self, data: StageData) -> str:
        return f"training on all {data.tokens} tokens"
