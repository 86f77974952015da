"""Preference stages on (prompt, chosen, rejected) rows: dpo (with its loss variants sigmoid/DPO, ipo, simpo,
hinge) and orpo. Chosen and rejected go through the model in one batch; only their completion tokens are scored.

DPO's reference log-probabilities are the initial model's, computed once before training (`reference_pass`) and
stored with every checkpoint, so a resumed run compares against the same reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from common.schemas.job_spec import dpo_beta
from common.text.chat import encode_completion, normalize_messages
from worker.train.data import read_jsonl
from worker.train.errors import TrainingError
from worker.train.losses import chosen_nll, dpo_losses, orpo_losses, simpo_losses
from worker.train.protocol import INVALID_TRAINING_FILE
from worker.train.stages.base import Batch, Metrics, Row, Stage, StageData, pad, padded_batch, sequence_logps

PAIR_SHAPE = ('{"prompt": [messages...], "chosen": [{"role": "assistant", ...}], '
              '"rejected": [{"role": "assistant", ...}]}')


def as_messages(value: Any) -> list[dict[str, Any]]:
    """Completions may come as a list of messages, one message, or plain text (an assistant message)."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return normalize_messages([value])
    return normalize_messages(list(value or []))


def encode_truncated(stage: Stage, prompt: list[dict[str, Any]], completion: Any) -> tuple[list[int], list[int]]:
    assert stage.template is not None
    ids, mask = encode_completion(stage.tokenizer, prompt, as_messages(completion), stage.template)
    window = stage.job.spec.hyperparameters.max_seq_length
    return ids[:window], mask[:window]


def prepare_pairs(stage: Stage, path: Any, param: str, warn: Callable[[str], None]) -> list[Row]:
    rows = read_jsonl(path, param=param, keys=("chosen", "rejected"), shape=PAIR_SHAPE)
    pairs, dropped = [], 0
    for index, row in enumerate(rows):
        prompt = as_messages(row.get("prompt") or [])
        chosen_ids, chosen_mask = encode_truncated(stage, prompt, row["chosen"])
        rejected_ids, rejected_mask = encode_truncated(stage, prompt, row["rejected"])
        if not any(chosen_mask) or not any(rejected_mask):
            dropped += 1
            continue
        pairs.append({"index": index, "chosen_ids": chosen_ids, "chosen_mask": chosen_mask,
                      "rejected_ids": rejected_ids, "rejected_mask": rejected_mask})
    what = param.replace("_", " ")
    window = stage.job.spec.hyperparameters.max_seq_length
    if not pairs:
        raise TrainingError(INVALID_TRAINING_FILE, f"No pair of the {what} has an answer token within the first "
                            f"{window} tokens ({len(rows)} rows read); raise hyperparameters.max_seq_length or "
                            "shorten the prompts.", param=param)
    if dropped:
        warn(f"{dropped} of {len(rows)} pairs of the {what} have no answer token within max_seq_length "
             f"({window} tokens) and were skipped.")
    return pairs


def collate_pairs(stage: Stage, rows: list[Row]) -> Batch:
    """One batch of 2B sequences: the chosen answers, then the rejected ones."""
    sequences = [row["chosen_ids"] for row in rows] + [row["rejected_ids"] for row in rows]
    ids, attention = padded_batch(sequences, stage.pad_id)
    masks = [row["chosen_mask"] for row in rows] + [row["rejected_mask"] for row in rows]
    batch: Batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": pad(masks, 0),
                    "num_tokens": sum(len(seq) for seq in sequences)}
    if "reference" in rows[0]:
        batch["reference"] = torch.tensor([row["reference"] for row in rows], dtype=torch.float32)
    return batch


class PairStage(Stage):
    def prepare(self, warn: Callable[[str], None]) -> StageData:
        train = prepare_pairs(self, self.job.training_file, "training_file", warn)
        eval_rows = prepare_pairs(self, self.job.validation_file, "validation_file", warn) \
            if self.job.validation_file else None
        tokens = sum(len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in train)
        trained = sum(sum(row["chosen_mask"]) + sum(row["rejected_mask"]) for row in train)
        return StageData(train, eval_rows, tokens, trained)

    def collate(self, rows: list[Row]) -> Batch:
        return collate_pairs(self, rows)

    def describe(self, data: StageData) -> str:
        return f"{len(data.train)} pairs; scoring {data.trained_tokens} answer tokens of {data.tokens}"

    def pair_logps(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of answer log-probabilities [2, B] and answer lengths [2, B] (chosen, rejected)."""
        model_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        sums, counts = sequence_logps(model, model_inputs, batch["completion_mask"])
        return sums.view(2, -1), counts.view(2, -1).to(sums.dtype)


class Dpo(PairStage):
    name = "dpo"

    def __init__(self, job: Any, tokenizer: Any, template: str | None) -> None:
        super().__init__(job, tokenizer, template)
        self.options = job.spec.dpo
        assert self.options is not None
        self.beta = dpo_beta(self.options)
        self.reference = self.options.loss_type != "simpo"

    def reference_pass(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        sums, _ = self.pair_logps(model, batch)
        return sums.t().float()

    def loss(self, model: torch.nn.Module, batch: Batch, num_items: Any) -> tuple[torch.Tensor, Metrics]:
        (chosen, rejected), (n_chosen, n_rejected) = self.pair_logps(model, batch)
        options, beta = self.options, self.beta
        if options.loss_type == "simpo":
            losses, chosen_reward, rejected_reward = simpo_losses(chosen, rejected, n_chosen, n_rejected, beta=beta,
                                                                  gamma=options.simpo_gamma)
        else:
            reference = batch["reference"].to(chosen.dtype)
            losses, chosen_reward, rejected_reward = dpo_losses(
                chosen - reference[:, 0], rejected - reference[:, 1], n_chosen, n_rejected,
                loss_type=options.loss_type, beta=beta, label_smoothing=options.label_smoothing)
        if options.sft_weight:
            losses = losses + options.sft_weight * chosen_nll(chosen, n_chosen)
        return losses.mean(), preference_metrics(chosen_reward, rejected_reward)


class Orpo(PairStage):
    """ORPO (Hong et al. 2024): NLL of the chosen answer minus λ·log σ(log odds ratio of chosen over rejected),
    with per-token average log-probabilities; no reference model."""

    name = "orpo"

    def loss(self, model: torch.nn.Module, batch: Batch, num_items: Any) -> tuple[torch.Tensor, Metrics]:
        (chosen, rejected), (n_chosen, n_rejected) = self.pair_logps(model, batch)
        losses, chosen_reward, rejected_reward = orpo_losses(chosen, rejected, n_chosen, n_rejected,
                                                             lam=self.job.spec.orpo.beta)
        return losses.mean(), preference_metrics(chosen_reward, rejected_reward)


def preference_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> Metrics:
    """The mean rewards and margin, and `preference_accuracy`: how often chosen's reward is above rejected's (a
    tie counts as wrong); an evaluation reports it as `valid_preference_accuracy` (docs/progress.md)."""
    with torch.no_grad():
        margin = chosen - rejected
        return {"rewards_chosen": chosen.mean().item(), "rewards_rejected": rejected.mean().item(),
                "reward_margin": margin.mean().item(),
                "preference_accuracy": (margin > 0).float().mean().item()}

