"""KTO (Ethayarajh et al. 2024) on (prompt, completion, label) rows: desirable completions are pushed above,
undesirable ones below, the reference point z = max(0, KL estimate). The KL estimate pairs each prompt with
another row's completion (a fixed, seeded pairing, so its reference log-probability can be computed once before
training like the completion's); it is measured under no_grad, as in the paper and TRL.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from worker.train.data import read_jsonl
from worker.train.errors import TrainingError
from worker.train.losses import kto_losses
from worker.train.protocol import INVALID_TRAINING_FILE
from worker.train.stages.base import Batch, Metrics, Row, Stage, StageData, pad, padded_batch, sequence_logps
from worker.train.stages.dpo import as_messages, encode_truncated

KTO_SHAPE = '{"prompt": [messages...], "completion": [{"role": "assistant", ...}], "label": true|false}'


def _label(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "desirable")
    return bool(value)


class Kto(Stage):
    name = "kto"
    reference = True

    def prepare(self, warn: Callable[[str], None]) -> StageData:
        train = self._rows(self.job.training_file, "training_file", warn)
        eval_rows = self._rows(self.job.validation_file, "validation_file", warn) if self.job.validation_file \
            else None
        tokens = sum(len(row["ids"]) for row in train)
        trained = sum(sum(row["mask"]) for row in train)
        desirable = sum(row["label"] for row in train)
        notes = [f"{desirable} desirable and {len(train) - desirable} undesirable rows"]
        if not desirable or desirable == len(train):
            warn("the training file has only " + ("desirable" if desirable else "undesirable") + " rows; KTO "
                 "learns best from both kinds")
        return StageData(train, eval_rows, tokens, trained, notes)

    def _rows(self, path: Any, param: str, warn: Callable[[str], None]) -> list[Row]:
        raw = read_jsonl(path, param=param, keys=("completion", "label"), shape=KTO_SHAPE)
        prompts = [as_messages(row.get("prompt") or []) for row in raw]
        # Each prompt's KL sample takes the completion of the next row in a seeded shuffle (never its own).
        order = list(range(len(raw)))
        random.Random(self.job.spec.seed).shuffle(order)
        partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
        rows, dropped = [], 0
        for index, row in enumerate(raw):
            ids, mask = encode_truncated(self, prompts[index], row["completion"])
            kl_ids, kl_mask = encode_truncated(self, prompts[index], raw[partner[index]]["completion"])
            if not any(mask):
                dropped += 1
                continue
            if not any(kl_mask):  # a pairing that does not fit is replaced by the row itself
                kl_ids, kl_mask = ids, mask
            rows.append({"index": index, "ids": ids, "mask": mask, "kl_ids": kl_ids, "kl_mask": kl_mask,
                         "label": _label(row["label"])})
        if not rows:
            raise TrainingError(INVALID_TRAINING_FILE, f"No row of the {param.replace('_', ' ')} has a completion "
                                "token within max_seq_length; raise hyperparameters.max_seq_length.", param=param)
        if dropped:
            warn(f"{dropped} of {len(raw)} rows have no completion token within max_seq_length and were skipped.")
        return rows

    def collate(self, rows: list[Row]) -> Batch:
        ids, attention = padded_batch([row["ids"] for row in rows], self.pad_id)
        kl_ids, kl_attention = padded_batch([row["kl_ids"] for row in rows], self.pad_id)
        batch: Batch = {
            "input_ids": ids, "attention_mask": attention, "completion_mask": pad([row["mask"] for row in rows], 0),
            "kl_input_ids": kl_ids, "kl_attention_mask": kl_attention,
            "kl_completion_mask": pad([row["kl_mask"] for row in rows], 0),
            "label": torch.tensor([row["label"] for row in rows], dtype=torch.bool),
            "num_tokens": sum(len(row["ids"]) for row in rows),
        }
        if "reference" in rows[0]:
            batch["reference"] = torch.tensor([row["reference"] for row in rows], dtype=torch.float32)
        return batch

    def _logps(self, model: torch.nn.Module, batch: Batch, kl: bool) -> torch.Tensor:
        prefix = "kl_" if kl else ""
        inputs = {"input_ids": batch[prefix + "input_ids"], "attention_mask": batch[prefix + "attention_mask"]}
        sums, _ = sequence_logps(model, inputs, batch[prefix + "completion_mask"])
        return sums

    def reference_pass(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return torch.stack([self._logps(model, batch, kl=False), self._logps(model, batch, kl=True)], dim=1).float()

    def loss(self, model: torch.nn.Module, batch: Batch, num_items: Any) -> tuple[torch.Tensor, Metrics]:
        options = self.job.spec.kto
        logps = self._logps(model, batch, kl=False)
        with torch.no_grad():
            kl_logps = self._logps(model, batch, kl=True)
        reference = batch["reference"].to(logps.dtype)
        desirable = batch["label"]
        losses, kl, rewards = kto_losses(logps, reference[:, 0], kl_logps, reference[:, 1], desirable,
                                         beta=options.beta, desirable_weight=options.desirable_weight,
                                         undesirable_weight=options.undesirable_weight)
        metrics: Metrics = {"kl": kl.item()}
        with torch.no_grad():
            if desirable.any():
                metrics["rewards_desirable"] = rewards[desirable].mean().item()
            if (~desirable).any():
                metrics["rewards_undesirable"] = rewards[~desirable].mean().item()
            if desirable.any() and (~desirable).any():
                metrics["preference_accuracy"] = preference_accuracy(rewards[desirable], rewards[~desirable])
        return losses.mean(), metrics


def preference_accuracy(desirable: torch.Tensor, undesirable: torch.Tensor) -> float:
    """KTO's rows are unpaired: over every (desirable, undesirable) pair of rows in the batch, how often the
    desirable one's implicit reward β·(log π − log π_ref) is the higher (ties count as wrong). A batch with one
    kind of row only has none."""
    return (desirable[:, None] > undesirable[None, :]).float().mean().item()
