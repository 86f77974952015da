"""A job submitted with every default trains with what docs/job-spec.md documents.

The defaults are read from the doc's tables, the job goes through the same resolution as `POST /jobs` and the
worker parent (`stored_spec`, `training_spec`), and what the training really used is read back from the
trainer (its arguments, state, optimizer and model) and from the events the child reports — never from the
spec that went in."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from common.schemas.job_spec import (
    FreezeOptions,
    Hyperparameters,
    JobSpec,
    LoraOptions,
    Method,
    QuantizationOptions,
    stored_spec,
    training_spec,
)
from tests.support.training import fixed_reply_rows, write_jsonl
from worker.train.config import load_job
from worker.train.reporter import Reporter
from worker.train.run import TrainResult, train
from worker.train.runtime import cpu_bf16

DOC = Path(__file__).resolve().parents[2] / "docs" / "job-spec.md"
TRAIN_ROWS = 16  # auto batch_size: 16 / 4 = 4 rows a step, so 4 steps an epoch


def documented(section: str) -> dict[str, Any]:
    """`field → default` from the table under `## {section}` in docs/job-spec.md, as JSON values."""
    text = DOC.read_text(encoding="utf-8").split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    defaults = {}
    for name, value in re.findall(r"^\| `([a-z_.]+)` \| ([^|]+) \|", text, flags=re.MULTILINE):
        value = value.strip().strip("`")
        try:
            defaults[name] = json.loads(value)
        except json.JSONDecodeError:
            defaults[name] = value  # a bare word: auto, cosine, lora, …
    return defaults


def test_the_doc_documents_every_hyperparameter_with_the_models_default() -> None:
    doc = documented("Hyperparameters")
    assert set(doc) == set(Hyperparameters.model_fields)
    assert doc == Hyperparameters().model_dump(mode="json")


def test_the_doc_documents_every_method_option_with_the_models_default() -> None:
    doc = documented("Method")
    blocks: dict[str, type[BaseModel]] = {"lora": LoraOptions, "quantization": QuantizationOptions,
                                          "freeze": FreezeOptions}
    expected = {"type": Method().type}
    for prefix, model in blocks.items():
        expected |= {f"{prefix}.{name}": value for name, value in model().model_dump(mode="json").items()}
    assert doc == expected


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[TrainResult, Reporter]:
    """An sft job of 16 rows with nothing but the required fields and a validation file (so that the
    evaluation cadence shows). One row is longer than max_seq_length's default."""
    job_dir = tmp_path_factory.mktemp("defaults")
    rows = fixed_reply_rows(TRAIN_ROWS)
    rows[0]["messages"][2]["content"] += " All good." * 700  # > 2048 tokens: cut at the end
    submitted = JobSpec.model_validate({"base_model": "tiny-llama", "training_file": "file-train",
                                        "validation_file": "file-valid"})
    job = {
        "job_id": "ftjob-defaults",
        "spec": training_spec(stored_spec(submitted, TRAIN_ROWS)).model_dump(mode="json"),
        "base_model": {"id": "tiny-llama", "path": str(tiny_model_dir), "template": "chatml"},
        "training_file": str(write_jsonl(job_dir / "train.jsonl", rows)),
        "validation_file": str(write_jsonl(job_dir / "valid.jsonl", fixed_reply_rows(2))),
        "output_dir": str(job_dir / "output"),
    }
    (job_dir / "job.json").write_text(json.dumps(job), encoding="utf-8")
    reporter = Reporter(io.StringIO())
    return train(load_job(job_dir), reporter), reporter


def first_log(reporter: Reporter) -> str:
    """The child's account of what it trains with (worker/train/run.py)."""
    return next(e["message"] for e in reporter.events if e["type"] == "log" and e["message"].startswith("loaded"))


def _expected_precision() -> tuple[str, str]:
    """The documented `auto` for an adapter job, (autocast, frozen base weights): CUDA: bf16 where supported,
    else fp16, for both; CPU: no autocast, and bf16 frozen weights where the CPU runs bf16 fast, else fp32."""
    if not torch.cuda.is_available():
        return "fp32", "bf16" if cpu_bf16().fast else "fp32"
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision, precision


def test_auto_epochs_batch_and_learning_rate_are_the_documented_ones(trained: tuple[TrainResult, Reporter]) -> None:
    result, _ = trained
    args, state = result.trainer.args, result.trainer.state
    assert state.num_train_epochs == 3 and state.epoch == pytest.approx(3)  # auto: 3 below 10,000 rows
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 1)  # rows/4, accumulation 1
    assert state.max_steps == state.global_step == 12
    assert args.learning_rate == 2e-4  # auto for sft with an adapter
    assert args.seed == 42


def test_the_scheduler_is_cosine_without_warmup(trained: tuple[TrainResult, Reporter]) -> None:
    result, reporter = trained
    doc = documented("Hyperparameters")
    assert (doc["lr_scheduler"], doc["warmup_ratio"]) == ("cosine", 0)
    assert result.trainer.args.get_warmup_steps(result.trainer.state.max_steps) == 0
    rates = {e["step"]: e["learning_rate"] for e in reporter.events
             if e["type"] == "progress" and e.get("learning_rate") is not None}
    total = result.trainer.state.max_steps
    # The rate step s trained with: cosine from the peak at the first step towards 0, no ramp up.
    assert rates == pytest.approx({s: 2e-4 * 0.5 * (1 + math.cos(math.pi * (s - 1) / total)) for s in rates})
    assert set(rates) == set(range(1, total + 1))  # logging_steps 1: every step reports


def test_checkpoints_and_evaluations_follow_the_auto_cadence(trained: tuple[TrainResult, Reporter]) -> None:
    _, reporter = trained
    saved = [e["step"] for e in reporter.events if e["type"] == "checkpoint"]
    evaluated = [e["step"] for e in reporter.events if e["type"] == "progress" and "valid_loss" in e]
    assert saved == [3, 6, 9, 12]  # about 4 per run: every ceil(12 / 4) steps
    assert evaluated == [4, 8, 12]  # once per epoch of 4 steps
    assert "12 steps of 4 (4 × 1), a checkpoint every 3 steps, evaluation every 4 steps" in first_log(reporter)


def test_precision_attention_optimizer_and_checkpointing_are_the_devices_auto(
        trained: tuple[TrainResult, Reporter]) -> None:
    result, reporter = trained
    args, model = result.trainer.args, result.trainer.model
    precision, frozen_dtype = _expected_precision()
    assert (args.bf16, args.fp16) == (precision == "bf16", precision == "fp16")
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {{"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[frozen_dtype]}
    assert trainable == {torch.float32}  # mixed precision keeps fp32 master weights
    attention = model.get_base_model().config._attn_implementation
    assert attention in (("sdpa", "flash_attention_2") if torch.cuda.is_available() else ("sdpa",))
    optimizer = result.trainer.optimizer.optimizer  # accelerate's wrapper
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(group["weight_decay"] == 0.0 for group in optimizer.param_groups)
    assert args.max_grad_norm == 1.0 and args.neftune_noise_alpha is None
    if not torch.cuda.is_available():
        assert args.activation_checkpointing is False  # auto: off on CPU
        compute = "bf16 matmuls with fp32 activations" if frozen_dtype == "bf16" else "fp32 compute"
        assert (f"cpu: frozen base weights {frozen_dtype}, trained weights fp32, {compute} (auto: this CPU "
                in first_log(reporter))
        assert "attention sdpa, optimizer adamw_torch, gradient checkpointing off" in first_log(reporter)


def test_sft_rows_are_not_packed_and_are_cut_at_2048_tokens(trained: tuple[TrainResult, Reporter]) -> None:
    result, _ = trained
    rows = result.trainer.train_dataset.rows
    assert len(rows) == TRAIN_ROWS and all("position_ids" not in row for row in rows)  # packing: off for sft
    assert max(len(row["input_ids"]) for row in rows) == 2048


def test_the_method_is_a_lora_adapter_with_the_documented_options(trained: tuple[TrainResult, Reporter]) -> None:
    result, _ = trained
    config = result.trainer.model.peft_config["default"]
    lora = documented("Method")
    assert (config.r, config.lora_alpha, config.lora_dropout) == (lora["lora.r"], lora["lora.alpha"],
                                                                  lora["lora.dropout"])
    assert config.use_rslora is False and not config.use_dora and config.modules_to_save is None
    modules = dict(result.trainer.model.named_modules())
    adapted = {name.rsplit(".", 1)[-1] for name, module in modules.items() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    bare = [name for name, module in modules.items() if type(module) is torch.nn.Linear
            and ".lora_" not in name and not name.endswith("base_layer") and not name.endswith("lm_head")]
    assert bare == []  # all-linear: every linear layer but the output head carries an adapter
