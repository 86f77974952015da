"""What every stage shares: the `Stage` interface, padding, log-probabilities that score only the positions a
loss needs, and `StageTrainer`, the transformers `Trainer` every stage trains with.

Why not TRL's trainers (measured per stage in docs/training.md): each stage here is a data layout plus a loss
(worker/train/losses.py, equal to TRL's: tests/worker/test_loss_oracle.py), computed from the tokenisation the
file check and SFT use (the chat template's assistant spans decide which tokens count) and the same speed path:
the LM head projects only the positions the loss reads (assistant tokens, completions) instead of every
position, and reference log-probabilities are computed once before training. TRL's trainers tokenise the rows
their own way, and its ORPO and SimPO (CPO) live in `trl.experimental`.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import Trainer

from common.text.masks import IGNORE_INDEX

Row = dict[str, Any]
Batch = dict[str, Any]
Metrics = dict[str, float]


class RowDataset(Dataset):
    """Tokenised rows as plain dicts: nothing is re-tokenised or cached on disk."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]


@dataclass
class StageData:
    """A stage's prepared rows and what happened on the way (for the first log event)."""

    train: list[Row]
    eval: list[Row] | None
    tokens: int  # every non-padding token of one pass over `train`
    trained_tokens: int  # the tokens a loss reads
    notes: list[str] = field(default_factory=list)


def pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    longest = max(len(seq) for seq in sequences)
    return torch.tensor([seq + [value] * (longest - len(seq)) for seq in sequences], dtype=torch.long)


def padded_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = pad(sequences, pad_id)
    attention = pad([[1] * len(seq) for seq in sequences], 0)
    return ids, attention


def backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    """The decoder stack and LM head of a causal LM (inside a PeftModel too), or (None, None) when the model
    does not expose them; then callers fall back to the full forward. Also (None, None) in a job of several ranks:
    DDP synchronises gradients, and FSDP gathers the root's weights, only for a forward through their wrapper."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        return None, None
    wrapped: Any = model
    base: Any = wrapped.get_base_model() if hasattr(wrapped, "get_base_model") else model
    backbone = getattr(base, "base_model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or backbone is base or head is None:
        return None, None
    return backbone, head


def scored_logits(model: torch.nn.Module, batch: Batch, targets: torch.Tensor) -> torch.Tensor:
    """Logits at the positions where `targets` (aligned with input_ids: targets[:, t] is the token that follows
    position t) is not IGNORE_INDEX, as a [n, vocab] float tensor; the LM head sees only those positions."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
    keep = targets != IGNORE_INDEX
    backbone, head = backbone_and_head(model)
    if backbone is None or head is None:
        return model(**inputs, use_cache=False).logits[keep].float()
    hidden = backbone(**inputs, use_cache=False).last_hidden_state
    return head(hidden[keep]).float()


def shifted(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """targets[:, t] = ids[:, t + 1] where mask[:, t + 1] is set, else IGNORE_INDEX."""
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    return targets


def sequence_logps(model: torch.nn.Module, batch: Batch, completion_mask: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """Per row: the sum of log-probabilities of the completion tokens, and how many there are."""
    targets = shifted(batch["input_ids"], completion_mask)
    logits = scored_logits(model, batch, targets)
    keep = targets != IGNORE_INDEX
    token_logps = -F.cross_entropy(logits, targets[keep], reduction="none")
    rows = torch.arange(keep.size(0), device=keep.device).unsqueeze(1).expand_as(keep)[keep]
    sums = torch.zeros(keep.size(0), device=token_logps.device, dtype=token_logps.dtype)
    return sums.index_add(0, rows, token_logps), keep.sum(dim=1).clamp(min=1)


class Stage:
    """One training stage. Subclasses prepare rows, collate them and compute the loss; `StageTrainer` does
    the rest. `reference` stages score their rows with the initial model before training (`reference_pass`)."""

    name = "sft"
    task_type = "CAUSAL_LM"
    reference = False
    # True: the loss is already normalised over the whole accumulated batch (token-level losses get the
    # accumulated token count); False: it is a per-micro-batch mean and the Trainer divides by the accumulation.
    loss_scaled_for_accumulation = False

    def __init__(self, job: Any, tokenizer: Any, template: str | None) -> None:
        self.job, self.tokenizer, self.template = job, tokenizer, template
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def prepare(self, warn: Callable[[str], None]) -> StageData:
        raise NotImplementedError

    def collate(self, rows: list[Row]) -> Batch:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Batch, num_items: Any) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def reference_pass(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """[rows, k] reference numbers for a batch (reference stages only)."""
        raise NotImplementedError

    def describe(self, data: StageData) -> str:
        return f"{len(data.train)} rows, {data.trained_tokens} of {data.tokens} tokens trained"


class StageTrainer(Trainer):
    """A `Trainer` whose loss is the stage's. It also counts trained tokens (the non-padding tokens of every
    batch that went through forward and backward), averages the stage's metrics over each logging window, and
    applies autocast itself (the stage losses call the decoder directly, past the wrapped forward)."""

    def __init__(self, *args: Any, stage: Stage, autocast_dtype: torch.dtype | None = None,
                 loraplus_lr_ratio: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.autocast_dtype = autocast_dtype
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.loss_is_scaled_for_ga = stage.loss_scaled_for_accumulation
        self.model_accepts_loss_kwargs = stage.loss_scaled_for_accumulation  # → num_items_in_batch is counted
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        stack = super().compute_loss_context_manager()
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.args.device.type, dtype=self.autocast_dtype))
        return stack

    def training_step(self, model: torch.nn.Module, inputs: Batch, num_items_in_batch: Any = None) -> torch.Tensor:
        tokens = inputs.pop("num_tokens", None)
        if tokens is not None:
            if self.args.world_size > 1:  # every rank's tokens: each rank trains its own rows
                tokens = self.accelerator.reduce(torch.tensor(int(tokens), device=self.args.device), reduction="sum")
            self.state.num_input_tokens_seen += int(tokens)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: torch.nn.Module, inputs: Batch, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs.pop("num_tokens", None)
        loss, metrics = self.stage.loss(model, inputs, num_items_in_batch)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs \
                and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # A token-level loss divided by every rank's token count (the Trainer gathers it); DDP then averages
            # the ranks' gradients, so undo that mean: the sum over ranks is the whole batch's token mean, as on
            # one device (transformers' own compute_loss does the same).
            loss = loss * self.args.world_size
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(float(value))
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model: torch.nn.Module, inputs: Batch, prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[torch.Tensor, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer(model)
        from peft.optimizers import create_loraplus_optimizer

        peft_model: Any = self.model
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, peft_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = create_loraplus_optimizer(
            peft_model, optimizer_cls, lr=self.args.learning_rate, loraplus_lr_ratio=self.loraplus_lr_ratio,
            weight_decay=self.args.weight_decay, **optimizer_kwargs,
        )
        return self.optimizer

