"""The training child: learning happens, only assistant tokens are trained, the adapter reloads, and the
process speaks its event protocol (progress, result, error, cancel)."""

from __future__ import annotations

import io
import json
import signal
import threading
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import PreTrainedModel

from common.text.masks import IGNORE_INDEX
from common.text.templates import resolve_chat_template
from tests.support.training import events_of, loss_drop, start_child
from worker.train.__main__ import main
from worker.train.config import BaseModelRef, JobConfig, load_job
from worker.train.data import prepare_chat_data
from worker.train.errors import TrainingError
from worker.train.loading import load_base_model, load_tokenizer
from worker.train.methods import apply_method
from worker.train.precision import fp32_activations
from worker.train.protocol import EVENT_PREFIX, EXIT_CANCELLED, EXIT_FAILED, Event
from worker.train.reporter import Reporter
from worker.train.run import train
from worker.train.stages import make_stage

pytestmark = pytest.mark.slow


def base_model(path: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    return load_base_model(BaseModelRef(id="tiny-llama", path=str(path)), dtype=dtype)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, write_job, fixed_rows):
    """One LoRA run, in process: 16 rows, 5 epochs of 4 steps at lr 1e-3."""
    job_dir = write_job(tmp_path_factory.mktemp("job"), tiny_model_dir, fixed_rows)
    job = load_job(job_dir)
    reporter = Reporter(io.StringIO())
    result = train(job, reporter)
    return job, reporter.events, result


def test_loss_falls_and_progress_is_reported(trained) -> None:
    job, events, result = trained
    assert result.steps == 20
    assert result.last_loss < result.first_loss - 1.0, (result.first_loss, result.last_loss)

    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == list(range(1, 21))
    assert all(e["total_steps"] == 20 for e in progress)
    assert progress[-1]["epoch"] == pytest.approx(5.0)
    assert progress[0]["loss"] == result.first_loss and progress[-1]["loss"] == result.last_loss
    assert all(e["learning_rate"] > 0 and e["grad_norm"] > 0 and e["tokens_per_second"] > 0 for e in progress[:-1])
    assert progress[-1]["eta_seconds"] == 0
    assert all(e["peak_memory_mb"] > 50 for e in progress)  # the process's peak RSS: torch alone is more
    assert all("valid_loss" not in e for e in progress)  # no validation data: no evaluation

    # Trained tokens: every non-padding token of every row, once per epoch.
    tokenizer = load_tokenizer(job.base_model)
    data = prepare_chat_data(job.training_file, tokenizer, tokenizer.chat_template, 256)
    assert result.trained_tokens == progress[-1]["trained_tokens"] == data.tokens * 5
    assert [e["trained_tokens"] for e in progress] == sorted(e["trained_tokens"] for e in progress)

    assert events[0]["type"] == "log" and "20 steps of 4" in events[0]["message"]
    final = dict(events[-1])
    peak = final.pop("peak_memory")
    assert final == {"type": "result", **result.event_fields()}
    assert peak["rss_peak_bytes"] > 50 * 2**20 and peak["cuda_max_allocated_bytes"] is None  # CPU: torch alone is more


def test_every_lora_parameter_changed(trained, tiny_model_dir: Path) -> None:
    job, _, result = trained
    initial = get_peft_model_state_dict(apply_method(base_model(tiny_model_dir), job.spec.method, seed=7))
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert saved.keys() == initial.keys()
    assert len(saved) == 2 * 7 * 2  # A and B for 7 linear layers in each of 2 blocks
    for name, before in initial.items():
        if "lora_B" in name:
            assert torch.count_nonzero(before) == 0, name
        assert not torch.equal(saved[name], before), f"{name} did not change"


def test_adapter_reloads_to_the_trained_logits(trained, tiny_model_dir: Path) -> None:
    _, _, result = trained
    trained_model = result.model.eval()
    # On a CUDA host the run trained a bf16 base on the GPU, on a CPU with fast bf16 a bf16 base with fp32
    # activations (worker/train/precision.py); compare like with like.
    device, dtype = trained_model.device, trained_model.get_base_model().dtype
    reloaded = PeftModel.from_pretrained(base_model(tiny_model_dir, dtype), result.adapter_dir).to(device).eval()
    plain_model = base_model(tiny_model_dir, dtype).to(device).eval()
    if device.type == "cpu" and dtype != torch.float32:
        fp32_activations(reloaded)
        fp32_activations(plain_model)
    ids = torch.tensor([[5, 17, 42, 99, 250, 3]], device=device)
    with torch.no_grad():
        expected = trained_model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        plain = plain_model(input_ids=ids).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter does something


def test_adapter_dir_holds_the_adapter_and_tokenizer_only(trained) -> None:
    job, _, result = trained
    assert result.adapter_dir == job.output_dir / "adapter"
    assert {p.name for p in result.adapter_dir.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja",
    }
    assert [p.name for p in job.output_dir.iterdir()] == ["adapter"]  # save_steps null: no checkpoints
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_dora"]) == (8, 32, False)


MASKING_ROWS = [
    {"messages": [
        {"role": "system", "content": "SYSTEM TEXT one"},
        {"role": "user", "content": "USER TEXT one"},
        {"role": "assistant", "content": "First answer, alpha."},
    ]},
    {"messages": [
        {"role": "user", "content": "USER TEXT two"},
        {"role": "assistant", "content": "Second answer, beta."},
        {"role": "user", "content": "USER TEXT three"},
        {"role": "tool", "content": "TOOL OUTPUT 99"},
        {"role": "assistant", "content": "Third answer, gamma."},
    ]},
    {"messages": [
        {"role": "system", "content": "SYSTEM TEXT two is much longer than the others, to force padding."},
        {"role": "user", "content": "USER TEXT four"},
        {"role": "assistant", "content": "Fourth answer, delta."},
    ]},
]


def test_only_assistant_tokens_are_trained(tmp_path, tiny_model_dir, write_job) -> None:
    """Decode what the stage's collator marks as targets: exactly the assistant turns + <|im_end|>."""
    job = load_job(write_job(tmp_path, tiny_model_dir, MASKING_ROWS, batch_size=len(MASKING_ROWS)))
    tokenizer = load_tokenizer(job.base_model)
    template = resolve_chat_template(tokenizer, "chatml", "tiny-llama")
    stage = make_stage(job, tokenizer, template)
    batch = stage.collate(stage.prepare(lambda message: None).train)

    trained_texts, context_texts = set(), []
    for ids, labels, targets, attention in zip(batch["input_ids"], batch["labels"], batch["shift_labels"],
                                               batch["attention_mask"], strict=True):
        assert (labels[attention == 0] == IGNORE_INDEX).all()  # padding is never trained
        assert torch.equal(targets[:-1], labels[1:]) and targets[-1] == IGNORE_INDEX  # next-token targets
        trained_texts.add(tokenizer.decode(ids[labels != IGNORE_INDEX]))
        context_texts.append(tokenizer.decode(ids[(labels == IGNORE_INDEX) & (attention == 1)]))
    assert trained_texts == {
        "First answer, alpha.<|im_end|>",
        "Second answer, beta.<|im_end|>Third answer, gamma.<|im_end|>",
        "Fourth answer, delta.<|im_end|>",
    }
    context = "".join(context_texts)
    for text in ("SYSTEM TEXT one", "USER TEXT three", "TOOL OUTPUT 99", "<|im_start|>assistant\n"):
        assert text in context
    assert "answer" not in context


def test_dora_trains_a_magnitude_vector(tmp_path, tiny_model_dir, write_job, fixed_rows) -> None:
    job = load_job(write_job(tmp_path, tiny_model_dir, fixed_rows[:8], method="dora", n_epochs=1))
    result = train(job, Reporter(io.StringIO()))
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in name for name in saved)
    assert result.steps == 2 and loss_drop(result) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a worker without CUDA")
@pytest.mark.parametrize(
    ("changes", "param", "needed"),
    [
        ({"method": "qlora"}, "method.type", "needs a CUDA GPU with bitsandbytes"),
        ({"optimizer": "adamw_8bit"}, "hyperparameters.optimizer", "needs a CUDA GPU with bitsandbytes"),
        ({"optimizer": "paged_adamw"}, "hyperparameters.optimizer", "needs a CUDA GPU with bitsandbytes"),
        ({"attention": "flash_attention_2"}, "hyperparameters.attention", "needs a CUDA GPU with flash-attn"),
        ({"precision": "fp16"}, "hyperparameters.precision", "needs a CUDA GPU"),
    ],
)
def test_cuda_jobs_are_refused_before_loading(tmp_path, write_job, fixed_rows, changes, param, needed) -> None:
    job = load_job(write_job(tmp_path, "/nonexistent/model", fixed_rows, **changes))
    with pytest.raises(TrainingError) as caught:
        train(job, Reporter(io.StringIO()))
    assert (caught.value.code, caught.value.param) == ("unsupported_on_worker", param)
    assert needed in caught.value.message and "this worker does not have" in caught.value.message


def test_rows_without_assistant_tokens_are_an_invalid_training_file(tmp_path, tiny_model_dir, write_job) -> None:
    long_prompt = "Please read all of this. " * 20
    rows = [{"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "Done."}]}]
    job = load_job(write_job(tmp_path, tiny_model_dir, rows, max_seq_length=16))
    with pytest.raises(TrainingError) as caught:
        train(job, Reporter(io.StringIO()))
    assert (caught.value.code, caught.value.param) == ("invalid_training_file", "training_file")
    assert "max_seq_length" in caught.value.message


def test_missing_base_model_is_an_error_event_and_exit_1(tmp_path, write_job, fixed_rows, capsys) -> None:
    job_dir = write_job(tmp_path, tmp_path / "no-such-model", fixed_rows)
    assert main([str(job_dir)]) == EXIT_FAILED
    events = events_of(capsys.readouterr().out)
    assert len(events) == 1 and events[0]["type"] == "error"
    assert (events[0]["code"], events[0]["param"]) == ("base_model_unavailable", "base_model")
    assert "no-such-model" in events[0]["message"] and "TUNEQUEUE_BASE_MODELS" in events[0]["message"]


def test_cancel_stops_at_a_step_boundary_without_result(tmp_path, tiny_model_dir, write_job, fixed_rows) -> None:
    job: JobConfig = load_job(write_job(tmp_path, tiny_model_dir, fixed_rows, n_epochs=50, batch_size=1))
    stop = threading.Event()

    class StopAfterTwoSteps(Reporter):
        def emit(self, event: Event) -> None:
            super().emit(event)
            if event["type"] == "progress" and event["step"] == 2:
                stop.set()

    reporter = StopAfterTwoSteps(io.StringIO())
    # The flag goes up while step 2 is being reported; the next boundary is the end of step 3.
    with pytest.raises(Exception, match="cancelled at step 3 of 800") as caught:
        train(job, reporter, stop=stop)
    assert type(caught.value).__name__ == "TrainingCancelled"
    assert not any(e["type"] == "result" for e in reporter.events)
    assert not (job.output_dir / "adapter").exists()


def test_child_process_reports_progress_and_result(tmp_path, tiny_model_dir, write_job, fixed_rows) -> None:
    job_dir = write_job(
        tmp_path, tiny_model_dir, fixed_rows[:8], validation_rows=fixed_rows[8:10], n_epochs=2, logging_steps=3
    )
    child = start_child(job_dir)
    stdout, _ = child.communicate(timeout=120)
    assert child.returncode == 0, stdout
    assert all(line.startswith(EVENT_PREFIX) for line in stdout.splitlines()), "library output on stdout"
    events = events_of(stdout)
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]  # the first, every 3rd, each evaluation, the last
    assert all(e["loss"] is not None for e in progress)
    assert events[-1]["last_loss"] == progress[-1]["loss"]
    evaluated = [e for e in progress if "valid_loss" in e]  # eval_steps auto: once per epoch (2 steps)
    assert [e["step"] for e in evaluated] == [2, 4]
    assert all(e["valid_loss"] > 0 and 0 <= e["valid_mean_token_accuracy"] <= 1 for e in evaluated)
    assert events[-1]["type"] == "result"
    assert events[-1]["adapter_dir"] == str(job_dir / "output" / "adapter")
    assert events[-1]["steps"] == 4
    assert (job_dir / "output" / "adapter" / "adapter_model.safetensors").is_file()


def test_sigterm_cancels_the_child_with_exit_143(tmp_path, tiny_model_dir, write_job, fixed_rows) -> None:
    job_dir = write_job(tmp_path, tiny_model_dir, fixed_rows, n_epochs=100, batch_size=1)
    child = start_child(job_dir)
    events = []
    assert child.stdout is not None
    for line in child.stdout:
        events.extend(events_of(line))
        if events and events[-1]["type"] == "progress":
            child.send_signal(signal.SIGTERM)
            break
    rest, _ = child.communicate(timeout=60)
    events.extend(events_of(rest))
    assert child.returncode == EXIT_CANCELLED
    assert events[-1]["type"] == "log" and events[-1]["level"] == "warning"
    assert events[-1]["message"].startswith("cancelled at step")
    assert not any(e["type"] in ("result", "error") for e in events)
    last_step = max(e["step"] for e in events if e["type"] == "progress")
    assert last_step < 1600
    assert not (job_dir / "output" / "adapter").exists()
