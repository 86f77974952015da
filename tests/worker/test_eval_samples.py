"""Generated samples during training (`hyperparameters.eval_samples`, worker/train/samples.py): the real training
child answers the first N validation prompts greedily at each evaluation and reports them as an `eval_samples`
event, which a separate greedy generate on that step's checkpoint reproduces; the training itself is the same with
and without them; what a prompt and a reference are per stage; and the parent's relay stores one job event per
evaluation in the shape the dashboard reads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.factories import make_tenant
from tests.support.jobs import claim, job_events, lose_lease, queued_job, relay
from tests.support.training import (
    FIXED_REPLY,
    ROWS_BY_STAGE,
    events_of,
    fixed_reply_rows,
    start_child,
    text_rows,
    write_job_dir,
)
from worker.train.config import load_job
from worker.train.loading import load_tokenizer
from worker.train.protocol import EVENT_PREFIX, EXIT_OK, EvalSamplesEvent, parse_line
from worker.train.reporter import Reporter
from worker.train.run import train
from worker.train.samples import prepare_samples


def validation_rows() -> list[dict[str, Any]]:
    """Three held-out prompts of different lengths (the first two are answered in one left-padded batch)."""
    rows = fixed_reply_rows(19)[16:]
    rows[1]["messages"][1]["content"] += " Please answer in one short sentence, as you always do."
    return rows


def greedy_answer(model: Any, tokenizer: Any, messages: list[dict[str, Any]], reference: str) -> str:
    """Independently of worker/train/samples.py: one prompt, no padding, the tokenizer's own chat template with
    the generation prompt, as many new tokens as the reference and its end-of-turn token, stopping at it."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = torch.tensor([list(prompt["input_ids"])])
    budget = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) + 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                             do_sample=False, eos_token_id=[end_of_turn, tokenizer.eos_token_id],
                             pad_token_id=tokenizer.pad_token_id)
    return str(tokenizer.decode(out[0, ids.size(1):].tolist(), skip_special_tokens=True))


@pytest.mark.slow
def test_each_evaluation_reports_greedy_answers_that_a_separate_generate_on_its_checkpoint_reproduces(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    held_out = validation_rows()
    job_dir = write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(16), validation_rows=held_out, n_epochs=2,
                            eval_steps=4, save_steps=4, learning_rate=5e-3, lr_scheduler="constant",
                            precision="fp32", eval_samples=2)
    child = start_child(job_dir)
    stdout, _ = child.communicate(timeout=600)
    assert child.returncode == EXIT_OK, stdout[-2000:]
    events = events_of(stdout)
    assert all(parse_line(line) is not None for line in stdout.splitlines() if line.startswith(EVENT_PREFIX))
    sampled = [e for e in events if e["type"] == "eval_samples"]
    assert [e["step"] for e in sampled] == [4, 8], "one event per evaluation, the final one included"
    for event in sampled:  # right after the progress event that carries the same evaluation's numbers
        before = events[events.index(event) - 1]
        assert before["type"] == "progress" and before["step"] == event["step"] and "valid_loss" in before
        assert event["seconds"] >= 0

    tokenizer = load_tokenizer(load_job(job_dir).base_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for event in sampled:
        samples = event["samples"]
        assert [s["prompt"] for s in samples] == [row["messages"][1]["content"] for row in held_out[:2]]
        assert [s["reference"] for s in samples] == [FIXED_REPLY, FIXED_REPLY]
        checkpoint = job_dir / "output" / "checkpoints" / f"checkpoint-{event['step']}"
        model = PeftModel.from_pretrained(base, checkpoint).eval()
        assert [s["answer"] for s in samples] == [
            greedy_answer(model, tokenizer, row["messages"][:2], FIXED_REPLY) for row in held_out[:2]]
        base = model.unload()
    first, last = (e["samples"] for e in sampled)
    # The answers are the model's and it learns: nonsense at step 4, the reply at the end (not the prompt echoed).
    assert all(s["answer"] != FIXED_REPLY and s["answer"] and s["prompt"] not in s["answer"] for s in first), first
    assert all(s["answer"] == FIXED_REPLY for s in last), last


@pytest.mark.slow
def test_training_losses_and_weights_are_the_same_with_and_without_eval_samples(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """Same seed, lora dropout on (it draws from the RNG every step), the device's own precision: generating at
    each evaluation changes no training loss, gradient norm, validation loss or trained weight."""
    runs = []
    for samples in (0, 3):
        job = load_job(write_job_dir(tmp_path / f"samples-{samples}", tiny_model_dir, fixed_reply_rows(16),
                                     validation_rows=validation_rows(), n_epochs=2, eval_steps=2,
                                     learning_rate=5e-3, eval_samples=samples))
        reporter = Reporter(io.StringIO())
        result = train(job, reporter)
        runs.append((reporter.events, result))
    (plain, plain_result), (sampled, sampled_result) = runs
    assert [e["step"] for e in sampled if e["type"] == "eval_samples"] == [2, 4, 6, 8]
    assert not [e for e in plain if e["type"] == "eval_samples"]

    def numbers(events: list[Any]) -> list[tuple[Any, ...]]:
        return [(e["step"], e["loss"], e["grad_norm"], e.get("valid_loss"), e.get("valid_mean_token_accuracy"))
                for e in events if e["type"] == "progress"]

    assert numbers(sampled) == numbers(plain)
    assert len(numbers(plain)) == 8 and all(n[1] is not None for n in numbers(plain))
    weights = {k: v for k, v in plain_result.model.state_dict().items() if "lora_" in k}
    others = {k: v for k, v in sampled_result.model.state_dict().items() if "lora_" in k}
    assert weights.keys() == others.keys() and weights
    assert all(torch.equal(weights[k], others[k]) for k in weights)
    assert sampled_result.model.training == plain_result.model.training


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pt", "dpo", "orpo", "kto"])
def test_every_stage_that_writes_answers_reports_samples_at_each_evaluation(tmp_path: Path, tiny_model_dir: Path,
                                                                            stage: str) -> None:
    rows = ROWS_BY_STAGE[stage](12)
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, rows[:8], validation_rows=rows[8:], stage=stage,
                                 n_epochs=2, eval_steps=1, batch_size=4, eval_samples=2))
    reporter = Reporter(io.StringIO())
    train(job, reporter)
    sampled = [e for e in reporter.events if e["type"] == "eval_samples"]
    total = [e for e in reporter.events if e["type"] == "progress"][-1]["total_steps"]
    assert [e["step"] for e in sampled] == list(range(1, total + 1)) and total >= 2  # pt packs its texts: fewer steps
    expected = {"pt": None, "dpo": FIXED_REPLY, "orpo": FIXED_REPLY, "kto": FIXED_REPLY}[stage]  # kto: desirable
    for event in sampled:
        assert len(event["samples"]) == 2 and all(isinstance(s["answer"], str) for s in event["samples"])
        if expected is not None:
            assert [s["reference"] for s in event["samples"]] == [expected, expected]
        else:  # pt: the prompt and the reference are the two halves of a validation text
            for sample, row in zip(event["samples"], rows[8:], strict=False):
                assert row["text"].startswith(sample["prompt"]) and sample["reference"].strip() in row["text"]


# --- what a prompt and a reference are, per stage (no training) ---------------------------------------------------


def samples_of(tmp_path: Path, base: Path, stage: str, rows: list[dict[str, Any]], n: int,
               **options: Any) -> tuple[Any, list[str]]:
    job = load_job(write_job_dir(tmp_path, base, rows, validation_rows=rows, stage=stage, eval_samples=n, **options))
    warnings: list[str] = []
    tokenizer = load_tokenizer(job.base_model)
    template = None
    if stage != "pt":
        from common.text.templates import choose_template

        template = choose_template(tokenizer, model_id="tiny-llama", job_template=None,
                                   registry_template="chatml").text
    return prepare_samples(job, tokenizer, template, warnings.append), warnings


def test_sft_samples_answer_the_last_assistant_turn_of_the_first_conversations(tmp_path: Path,
                                                                                 tiny_model_dir: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": f"Status {i}?"}, {"role": "assistant", "content": f"OK {i}."}]}
            for i in range(4)]
    prepared, warnings = samples_of(tmp_path, tiny_model_dir, "sft", rows, 3)
    assert prepared is not None and not warnings
    assert [(s.prompt, s.reference) for s in prepared.samples] == [(f"Status {i}?", f"OK {i}.") for i in range(3)]
    tokenizer = load_tokenizer(load_job(tmp_path).base_model)
    first = prepared.samples[0]
    # the prompt as training renders it, up to the assistant header; the answer may be as long as the reference
    assert tokenizer.decode(first.prompt_ids).endswith("<|im_start|>user\nStatus 0?<|im_end|>\n<|im_start|>assistant\n")
    assert first.max_new_tokens == len(tokenizer("OK 0.", add_special_tokens=False)["input_ids"]) + 1
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in prepared.stop_ids


def test_pair_stages_take_the_chosen_answer_and_kto_only_desirable_completions(tmp_path: Path,
                                                                                tiny_model_dir: Path) -> None:
    pairs = [{"prompt": [{"role": "user", "content": f"Q{i}"}], "chosen": [{"role": "assistant", "content": "good"}],
              "rejected": [{"role": "assistant", "content": "bad"}]} for i in range(3)]
    for stage in ("dpo", "orpo"):
        prepared, _ = samples_of(tmp_path / stage, tiny_model_dir, stage, pairs, 2)
        assert prepared is not None
        assert [(s.prompt, s.reference) for s in prepared.samples] == [("Q0", "good"), ("Q1", "good")]
    kto = [{"prompt": [{"role": "user", "content": f"Q{i}"}], "completion": f"answer {i}", "label": i % 2 == 1}
           for i in range(6)]
    prepared, _ = samples_of(tmp_path / "kto", tiny_model_dir, "kto", kto, 2)
    assert prepared is not None
    assert [(s.prompt, s.reference) for s in prepared.samples] == [("Q1", "answer 1"), ("Q3", "answer 3")]


def test_pt_samples_continue_the_first_half_of_each_text(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = text_rows(4)
    prepared, _ = samples_of(tmp_path, tiny_model_dir, "pt", rows, 2)
    assert prepared is not None and len(prepared.samples) == 2
    tokenizer = load_tokenizer(load_job(tmp_path).base_model)
    for sample, row in zip(prepared.samples, rows, strict=False):
        ids = tokenizer(row["text"])["input_ids"]
        assert sample.prompt_ids == ids[:len(ids) // 2]
        assert sample.max_new_tokens == len(ids) - len(ids) // 2
        assert (sample.prompt + sample.reference).replace(" ", "") == row["text"].replace(" ", "")


def test_answers_are_capped_at_the_workers_token_limit_and_fewer_usable_prompts_are_said(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "Tell me a long story."},
                          {"role": "assistant", "content": "Once upon a time " * 40}]}]
    prepared, warnings = samples_of(tmp_path, tiny_model_dir, "sft", rows, 4,
                                    job_extra={"eval_sample_max_tokens": 16})
    assert prepared is not None and [s.max_new_tokens for s in prepared.samples] == [16]
    assert warnings == ["hyperparameters.eval_samples asks for 4 samples; the validation data has 1 usable prompts"]


def test_a_spec_the_api_would_refuse_trains_without_samples_and_says_why(tmp_path: Path,
                                                                          tiny_model_dir: Path) -> None:
    prepared, warnings = samples_of(tmp_path, tiny_model_dir, "sft", fixed_reply_rows(4), 2, eval_steps=None)
    assert prepared is None and len(warnings) == 1 and "eval_steps is None (never)" in warnings[0]


# --- the protocol and the parent's relay ---------------------------------------------------------------------------


def test_the_event_parses_back_and_the_relay_stores_one_job_event_per_evaluation() -> None:
    reporter = Reporter(io.StringIO())
    samples = [{"prompt": "Status?", "reference": "All good.", "answer": "All good."},
               {"prompt": "And now?", "reference": "Fine.", "answer": "Fi"}]
    reporter.eval_samples(step=4, samples=samples, seconds=0.25)  # type: ignore[arg-type]
    line = reporter._stream.getvalue().strip()  # type: ignore[union-attr]
    event = parse_line(line)
    assert event == {"type": "eval_samples", "step": 4, "samples": samples, "seconds": 0.25}

    tenant_id, _ = make_tenant()
    job_id = queued_job(tenant_id)
    attempt = claim(job_id)
    parent = relay(job_id, tenant_id, attempt)
    assert event is not None and event["type"] == "eval_samples"
    parent.handle(event)
    later: EvalSamplesEvent = {"type": "eval_samples", "step": 8, "samples": [event["samples"][0]]}
    parent.handle(later)
    stored = [e for e in job_events(job_id) if e.type == "eval_samples"]
    assert [(e.message, e.data, e.level, e.attempt) for e in stored] == [
        ("2 generated samples at step 4 (0.2 s)", {"step": 4, "samples": samples}, "info", attempt),
        ("1 generated sample at step 8", {"step": 8, "samples": samples[:1]}, "info", attempt)]

    odd = {"type": "eval_samples", "step": 9, "samples": [
        {"prompt": "a\x00b", "reference": "r", "answer": None, "logits": [1, 2]}, "not a sample"]}
    parent.handle(odd)  # type: ignore[arg-type]
    assert [e for e in job_events(job_id) if e.type == "eval_samples"][-1].data == {
        "step": 9, "samples": [{"prompt": "ab", "reference": "r", "answer": ""}]}

    lose_lease(job_id)  # another attempt owns the job now: the old relay writes nothing more
    parent.handle(later)
    assert len([e for e in job_events(job_id) if e.type == "eval_samples"]) == 3
