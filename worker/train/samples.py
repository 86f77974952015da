"""Generated samples during training (`hyperparameters.eval_samples`, docs/progress.md "Generated samples").

At each evaluation the model answers the first N prompts of the validation data greedily, and the answers go to
the parent beside the reference answers (an `eval_samples` event), so a person watching the job sees the model
learn. What a prompt and its reference are, per stage:

- sft: a conversation up to its last assistant message (the prompt, rendered with the job's chat template exactly
  as training renders it, up to the assistant header) and that message (the reference);
- dpo, orpo: the prompt and the chosen answer; kto: the prompt and the completion of a desirable row (rows
  labelled undesirable are passed over: their completion is what the model should not say);
- pt: the first half of the text's tokens, and the tokens that follow it (as many as an answer may have);
- rm: none (a reward model scores answers; the API refuses the field for it).

Each answer is at most as long as its reference and at most `eval_sample_max_tokens` tokens (job.json, from
TUNEQUEUE_EVAL_SAMPLE_MAX_TOKENS, 128 by default), and stops at the end-of-turn token or EOS. The prompts are
answered in batches of the evaluation's micro-batch size (left-padded), in eval mode under `torch.no_grad` with the
training's autocast; train mode and every random generator's state are restored afterwards, so a run's training
losses are the same with and without samples (tests/worker/test_eval_samples.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from common.schemas.job_spec import eval_samples_problem
from common.text.chat import encode_completion
from worker.train.config import JobConfig
from worker.train.data import read_jsonl
from worker.train.protocol import EvalSample
from worker.train.reporter import Reporter
from worker.train.stages.dpo import as_messages
from worker.train.stages.kto import _label as kto_label

MAX_TEXT_CHARS = 2000  # a prompt keeps its last, a reference and an answer their first, this many characters


@dataclass
class Sample:
    """One validation prompt, ready to generate from."""

    prompt: str  # what a person reads: the message before the reference, or the text's first half (pt)
    reference: str
    prompt_ids: list[int]
    max_new_tokens: int


@dataclass
class Samples:
    samples: list[Sample]
    stop_ids: list[int]  # generation ends at any of these (EOS, the template's end-of-turn token)
    pad_id: int


def _clip_end(text: str) -> str:
    text = text.replace("\x00", "")  # Postgres' JSONB cannot hold a NUL (a byte-level token decodes to one)
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"


def _clip_start(text: str) -> str:
    text = text.replace("\x00", "")
    return text if len(text) <= MAX_TEXT_CHARS else "…" + text[-MAX_TEXT_CHARS:]


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _chat_pairs(job: JobConfig) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """(prompt messages, reference message) of the validation rows, in file order."""
    assert job.validation_file is not None
    stage, param = job.spec.stage, "validation_file"
    if stage == "sft":
        pairs = []
        for row in read_jsonl(job.validation_file, param=param, keys=("messages",), shape='{"messages": [...]}'):
            messages = as_messages(row["messages"])
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("weight", 1)),
                       default=None)
            if last is not None:
                pairs.append((messages[:last], messages[last]))
        return pairs
    if stage == "kto":
        rows = read_jsonl(job.validation_file, param=param, keys=("completion", "label"), shape="a kto row")
        rows = [row for row in rows if kto_label(row["label"])]
        key = "completion"
    else:  # dpo, orpo
        rows = read_jsonl(job.validation_file, param=param, keys=("chosen",), shape="a preference pair")
        key = "chosen"
    pairs = []
    for row in rows:
        completion = as_messages(row[key])
        if completion:
            pairs.append((as_messages(row.get("prompt") or []), completion[-1]))
    return pairs


def prepare_samples(job: JobConfig, tokenizer: Any, template: str | None,
                    warn: Callable[[str], None]) -> Samples | None:
    """The first `eval_samples` usable validation prompts, or None when the job asks for none (or cannot have
    them: then a warning says why)."""
    spec = job.spec
    wanted = spec.hyperparameters.eval_samples
    if not wanted:
        return None
    problem = eval_samples_problem(spec)
    if problem is None and job.validation_file is None:
        problem = "hyperparameters.eval_samples: this attempt has no validation rows"
    if problem is not None or job.validation_file is None:
        warn(f"no generated samples: {problem}")
        return None
    cap = job.eval_sample_max_tokens
    window = spec.hyperparameters.max_seq_length
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    samples: list[Sample] = []
    if spec.stage == "pt":
        rows = read_jsonl(job.validation_file, param="validation_file", keys=("text",), shape='{"text": "..."}')
        for row in rows:
            ids = list(tokenizer(str(row["text"]))["input_ids"])
            half = len(ids) // 2
            if half < 1:
                continue
            prompt_ids, reference_ids = ids[:half][-window:], ids[half:half + cap]
            samples.append(Sample(
                prompt=_clip_start(tokenizer.decode(prompt_ids, skip_special_tokens=True)),
                reference=_clip_end(tokenizer.decode(reference_ids, skip_special_tokens=True)),
                prompt_ids=prompt_ids, max_new_tokens=len(reference_ids)))
            if len(samples) == wanted:
                break
    else:
        assert template is not None
        for prompt, reference in _chat_pairs(job):
            ids, mask = encode_completion(tokenizer, prompt, [reference], template)
            if 1 not in mask:
                continue
            start = mask.index(1)
            answer_ids = [token for token, keep in zip(ids, mask, strict=True) if keep]
            if start >= window:  # training would have cut this row before its answer
                continue
            if answer_ids[-1] in special:  # the template's end-of-turn token
                stop.add(answer_ids[-1])
            samples.append(Sample(
                prompt=_clip_start(_text(prompt[-1]) if prompt else ""), reference=_clip_end(_text(reference)),
                prompt_ids=ids[:start], max_new_tokens=min(cap, len(answer_ids))))
            if len(samples) == wanted:
                break
    if not samples:
        warn("no generated samples: no validation row has a prompt and a reference answer to generate for")
        return None
    if len(samples) < wanted:
        warn(f"hyperparameters.eval_samples asks for {wanted} samples; the validation data has {len(samples)} "
             "usable prompts")
    return Samples(samples, sorted(stop), pad_id)


def generate_answers(model: torch.nn.Module, tokenizer: Any, prepared: Samples, *, batch_size: int,
                     autocast_dtype: torch.dtype | None = None,
                     interrupted: Callable[[], bool] | None = None) -> list[str] | None:
    """Greedy answers to `prepared.samples`, in their order: new tokens only, cut at the first stop token, decoded
    without special tokens; None when `interrupted()` (a cancel or a preemption) became true between two batches.
    Leaves the model's mode and every random generator's state as they were."""
    where = next(model.parameters()).device
    was_training = model.training
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    samples = prepared.samples
    answers: list[str] = [""] * len(samples)
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_ids))  # less padding per batch
    config = GenerationConfig(do_sample=False, num_beams=1, eos_token_id=prepared.stop_ids,
                              pad_token_id=prepared.pad_id, use_cache=True,
                              max_new_tokens=max(s.max_new_tokens for s in samples))
    autocast = torch.autocast(where.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    model.eval()
    try:
        with torch.no_grad(), autocast:
            for begin in range(0, len(order), max(1, batch_size)):
                if interrupted is not None and interrupted():
                    return None
                chunk = order[begin:begin + max(1, batch_size)]
                longest = max(len(samples[i].prompt_ids) for i in chunk)
                ids = torch.tensor([[prepared.pad_id] * (longest - len(samples[i].prompt_ids))
                                    + samples[i].prompt_ids for i in chunk], dtype=torch.long, device=where)
                attention = torch.tensor([[0] * (longest - len(samples[i].prompt_ids))
                                          + [1] * len(samples[i].prompt_ids) for i in chunk], dtype=torch.long,
                                         device=where)
                config.max_new_tokens = max(samples[i].max_new_tokens for i in chunk)
                output = model.generate(input_ids=ids, attention_mask=attention,  # type: ignore[operator]
                                        generation_config=config)
                for row, index in enumerate(chunk):
                    new = output[row, longest:longest + samples[index].max_new_tokens].tolist()
                    for at, token in enumerate(new):
                        if token in prepared.stop_ids:
                            new = new[:at]
                            break
                    answers[index] = _clip_end(tokenizer.decode(new, skip_special_tokens=True))
    finally:
        model.train(was_training)
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return answers


class SamplesCallback(TrainerCallback):
    """After each evaluation (the Trainer's `on_evaluate`, the last step's too): generate and report."""

    def __init__(self, reporter: Reporter, tokenizer: Any, prepared: Samples, *, batch_size: int,
                 autocast_dtype: torch.dtype | None, stop: threading.Event | None = None,
                 preempt: threading.Event | None = None) -> None:
        self.reporter, self.tokenizer, self.prepared = reporter, tokenizer, prepared
        self.batch_size, self.autocast_dtype = batch_size, autocast_dtype
        self.signals = [event for event in (stop, preempt) if event is not None]

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: torch.nn.Module | None = None, **kw: Any) -> None:
        if model is None:
            return
        started = time.monotonic()
        answers = generate_answers(model, self.tokenizer, self.prepared, batch_size=self.batch_size,
                                   autocast_dtype=self.autocast_dtype,
                                   interrupted=lambda: any(event.is_set() for event in self.signals))
        if answers is None:  # a cancel or a preemption: it is not worth the time
            return
        samples: list[EvalSample] = [{"prompt": s.prompt, "reference": s.reference, "answer": answer}
                                     for s, answer in zip(self.prepared.samples, answers, strict=True)]
        self.reporter.eval_samples(step=state.global_step, samples=samples, seconds=time.monotonic() - started)
