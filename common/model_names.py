"""The names a job's results go by, as OpenAI gives them: `ft:<base>[:<suffix>]:<job-id>` for the fine-tuned model,
and that name plus `:ckpt-step-<n>` for the checkpoint saved at step n (`fine_tuned_model_checkpoint`), which the
inference routes accept as well as the checkpoint's own id (`ftckpt-…`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_CHECKPOINT_NAME = re.compile(r"(?P<model>ft:.+:(?P<job>ftjob-[A-Za-z0-9_-]+)):ckpt-step-(?P<step>[0-9]{1,12})")


def fine_tuned_model_name(base_model: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base_model}:{suffix}:{job_id}" if suffix else f"ft:{base_model}:{job_id}"


def checkpoint_model_name(model_name: str, step: int) -> str:
    return f"{model_name}:ckpt-step-{step}"


@dataclass(frozen=True)
class CheckpointName:
    model_name: str  # the job's fine-tuned model name, which the whole name must start with
    job_id: str
    step: int


def parse_checkpoint_model_name(name: str) -> CheckpointName | None:
    """The parts of a `fine_tuned_model_checkpoint` name, or None when `name` is not one."""
    match = _CHECKPOINT_NAME.fullmatch(name)
    if match is None:
        return None
    return CheckpointName(match["model"], match["job"], int(match["step"]))
