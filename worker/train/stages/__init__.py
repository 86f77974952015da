"""Training stages, by the spec's `stage` name (see `worker.train.stages.base.Stage`)."""

from __future__ import annotations

from typing import Any

from worker.train.stages.base import Stage
from worker.train.stages.dpo import Dpo, Orpo
from worker.train.stages.kto import Kto
from worker.train.stages.rm import RewardModelling
from worker.train.stages.sft import LanguageModelling, Pretraining, Sft

STAGES: dict[str, type[Stage]] = {
    "sft": Sft, "pt": Pretraining, "dpo": Dpo, "orpo": Orpo, "kto": Kto, "rm": RewardModelling,
}


def make_stage(job: Any, tokenizer: Any, template: str | None, **options: Any) -> Stage:
    """`options` (padding_free) apply to the language-modelling stages only."""
    cls = STAGES[job.spec.stage]
    if issubclass(cls, LanguageModelling):
        return cls(job, tokenizer, template, **options)
    return cls(job, tokenizer, template)
