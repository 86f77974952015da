"""Reward modelling on (prompt, chosen, rejected) rows: the base model with a one-output value head (`score`,
transformers' `AutoModelForSequenceClassification` with num_labels=1) learns r(chosen) > r(rejected) with the
Bradley-Terry loss −log σ(r_c − r_r). The reward of a conversation is the head's output at its last token.

What is published loads back as a scorer: with an adapter method, the adapter dir holds the LoRA weights and
the trained value head (PEFT `modules_to_save`), so
`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=1), adapter_dir)`
gives the trained reward model; with full/freeze the dir is a complete sequence-classification model.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.train.losses import pairwise_reward_losses
from worker.train.stages.base import Batch, Metrics
from worker.train.stages.dpo import PairStage, preference_metrics


def rewards(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return output.logits[:, 0].float()


class RewardModelling(PairStage):
    name = "rm"
    task_type = "SEQ_CLS"

    def loss(self, model: torch.nn.Module, batch: Batch, num_items: Any) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected = rewards(model, batch).view(2, -1)
        losses = pairwise_reward_losses(chosen, rejected)
        return losses.mean(), preference_metrics(chosen, rejected)

    def describe(self, data: Any) -> str:
        return f"{len(data.train)} pairs ({data.tokens} tokens); the value head scores each answer's last token"
