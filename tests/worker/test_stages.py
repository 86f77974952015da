"""Every stage × every CPU method learns: the loss fell, every trainable parameter changed and no frozen one
did, the published weights reload to the trained model's outputs, and the stage's own measure of learning
moved the right way (reward margin, pairwise accuracy, desirable log-probability)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from common.schemas.job_spec import ADAPTER_METHODS
from common.text.templates import resolve_chat_template
from tests.support.training import ROWS_BY_STAGE, pair_rows, write_job_dir
from worker.train.config import JobConfig, load_job
from worker.train.loading import load_base_model, load_tokenizer
from worker.train.methods import apply_method
from worker.train.reporter import Reporter
from worker.train.run import train
from worker.train.stages import make_stage
from worker.train.stages.base import sequence_logps
from worker.train.stages.rm import rewards

pytestmark = pytest.mark.slow

STAGES = ["sft", "pt", "dpo", "orpo", "kto", "rm"]
METHODS = ["lora", "dora", "full", "freeze"]
# Per method, a learning rate at which 6 steps visibly move the tiny model.
LEARNING_RATES = {"lora": 5e-3, "dora": 5e-3, "full": 1e-3, "freeze": 2e-3}
SEED = 7
PROBE = torch.tensor([[5, 17, 42, 99, 250, 3, 7, 11]])


def initial_model(job: JobConfig) -> torch.nn.Module:
    """The model as `train` builds it before the first step: same seed, same adapter init, same value head."""
    rm = job.spec.stage == "rm"
    base = load_base_model(job.base_model, dtype=torch.float32, reward_model=rm, seed=SEED,
                           pad_token_id=load_tokenizer(job.base_model).pad_token_id)
    return apply_method(base, job.spec.method, seed=SEED, task_type="SEQ_CLS" if rm else "CAUSAL_LM")


def reloaded(job: JobConfig, published: Path) -> torch.nn.Module:
    rm = job.spec.stage == "rm"
    if job.spec.method.type in ADAPTER_METHODS:
        tokenizer = load_tokenizer(job.base_model)
        base = load_base_model(job.base_model, dtype=torch.float32, reward_model=rm, seed=SEED + 1,
                               pad_token_id=tokenizer.pad_token_id)  # another value head: the adapter's must win
        return PeftModel.from_pretrained(base, str(published))
    auto = AutoModelForSequenceClassification if rm else AutoModelForCausalLM
    return auto.from_pretrained(str(published), use_safetensors=True)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def stage_measure(job: JobConfig, model: torch.nn.Module) -> dict[str, float]:
    """The stage's own evidence of learning on the training rows, in eval mode."""
    tokenizer = load_tokenizer(job.base_model)
    template = resolve_chat_template(tokenizer, "chatml", "tiny-llama")
    stage = make_stage(job, tokenizer, template)
    rows = stage.prepare(lambda message: None).train
    batch = stage.collate(rows)
    batch.pop("num_tokens")
    model.eval()
    with torch.no_grad():
        if job.spec.stage in ("dpo", "orpo"):
            (chosen, rejected), (n_chosen, n_rejected) = stage.pair_logps(model, batch)  # type: ignore[attr-defined]
            return {"margin": (chosen / n_chosen - rejected / n_rejected).mean().item()}
        if job.spec.stage == "rm":
            chosen, rejected = rewards(model, batch).view(2, -1)
            return {"accuracy": (chosen > rejected).float().mean().item()}
        if job.spec.stage == "kto":
            logps, counts = sequence_logps(model, batch, batch["completion_mask"])
            desirable = batch["label"]
            return {"desirable": (logps / counts)[desirable].mean().item(),
                    "undesirable": (logps / counts)[~desirable].mean().item()}
    return {}


def run_stage(tmp_path: Path, base: Path, stage: str, method: str, **options: Any) -> tuple[JobConfig, Any]:
    rows = ROWS_BY_STAGE[stage](8)
    # precision fp32: the checks below compare with fp32 models bit for bit (tests/worker/test_precision.py covers
    # the bf16 frozen base that `auto` picks on a CPU with fast bf16)
    options = {"n_epochs": 3, "batch_size": 4, "learning_rate": LEARNING_RATES[method], "lr_scheduler": "constant",
               "precision": "fp32", **options}
    job = load_job(write_job_dir(tmp_path, base, rows, stage=stage, method=method, seed=SEED,
                                 lora={"dropout": 0.0}, **options))
    return job, train(job, Reporter(io.StringIO()))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_and_method_learn(tmp_path: Path, tiny_model_dir: Path, stage: str, method: str) -> None:
    # pt unpacked here so that every stage trains the same 6 steps; packing has its own test below
    job, result = run_stage(tmp_path, tiny_model_dir, stage, method, **({"packing": False} if stage == "pt" else {}))
    before = initial_model(job)
    trained = result.model

    assert result.steps == 6 and result.stage == stage and result.method == method
    assert result.last_loss < result.first_loss, (result.first_loss, result.last_loss)

    initial = dict(before.named_parameters())
    trainable = frozen = 0
    for name, param in trained.named_parameters():
        if param.requires_grad:
            trainable += 1
            assert not torch.equal(param.detach(), initial[name].detach()), f"{name} did not change"
        else:
            frozen += 1
            assert torch.equal(param.detach(), initial[name].detach()), f"frozen {name} changed"
    assert trainable > 0
    assert frozen > 0 or method == "full"

    expected = outputs(trained)
    torch.testing.assert_close(outputs(reloaded(job, result.adapter_dir)), expected)
    assert not torch.allclose(outputs(before), expected, atol=1e-4)  # training changed what it computes

    after, start = stage_measure(job, trained), stage_measure(job, before)
    if stage in ("dpo", "orpo"):
        assert after["margin"] > start["margin"] + 0.05, (start, after)
    elif stage == "kto":
        assert after["desirable"] > start["desirable"], (start, after)
        assert after["desirable"] - after["undesirable"] > start["desirable"] - start["undesirable"]


def test_reward_model_overfits_to_pairwise_accuracy(tmp_path: Path, tiny_model_dir: Path) -> None:
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, pair_rows(16), stage="rm", n_epochs=4,
                                 learning_rate=5e-3, lr_scheduler="constant"))
    result = train(job, Reporter(io.StringIO()))
    assert stage_measure(job, result.model)["accuracy"] > 0.9
    assert stage_measure(job, reloaded(job, result.adapter_dir))["accuracy"] > 0.9  # the published scorer


@pytest.mark.parametrize("loss_type", ["simpo", "ipo", "hinge"])
def test_dpo_loss_variants_widen_the_margin(tmp_path: Path, tiny_model_dir: Path, loss_type: str) -> None:
    job, result = run_stage(tmp_path, tiny_model_dir, "dpo", "lora", spec_extra={"dpo": {"loss_type": loss_type}})
    assert result.last_loss < result.first_loss
    assert stage_measure(job, result.model)["margin"] > stage_measure(job, initial_model(job))["margin"] + 0.05


def test_pt_packs_text_into_windows_and_learns(tmp_path: Path, tiny_model_dir: Path) -> None:
    job, result = run_stage(tmp_path, tiny_model_dir, "pt", "lora", max_seq_length=32, batch_size=2)
    assert job.spec.hyperparameters.packing  # auto: on for pt
    tokenizer = load_tokenizer(job.base_model)
    stage = make_stage(job, tokenizer, None)
    windows = stage.prepare(lambda message: None).train
    assert all(len(window["input_ids"]) <= 32 for window in windows)
    assert sum(len(window["input_ids"]) == 32 for window in windows) >= len(windows) - 1  # all full but the last
    batch = stage.collate(windows[:2])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    restarts = batch["position_ids"][:, 1:] == 0  # a new text starts: never predicted from the one before
    assert (batch["shift_labels"][:, :-1][restarts] == -100).all()
    assert result.last_loss < result.first_loss - 0.5
