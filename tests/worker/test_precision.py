"""The precision policy (docs/job-spec.md, Precision; worker/train/runtime.py, worker/train/precision.py): where a
CPU runs bf16 fast, an adapter job's frozen base loads in bf16 while everything that trains stays fp32 and the
activations between the bf16 matmuls are fp32, the job's first event says so and why, and the training loss
stays within `LOSS_RTOL` of the same job in fp32 — on the tiny model and on SmolLM2-135M-Instruct."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from common.schemas.job_spec import JobSpec, ResolvedJobSpec, stored_spec, training_spec
from tests.support.real_model import require_real_model
from tests.support.training import fixed_reply_rows, pair_rows, write_job_dir
from worker.train.config import load_job
from worker.train.reporter import Reporter
from worker.train.run import TrainResult, train
from worker.train.runtime import CPU_BF16_FLAGS, bf16_matmul_speedup, cpu_bf16, cpu_flags, decide_device_choices

# The documented tolerance: per logged step, |loss(bf16 base) − loss(fp32)| ≤ 3 % of the fp32 loss. Measured at
# most 0.03 % on the tiny model (8 steps) and 1.3 % on SmolLM2-135M-Instruct (12 steps, lr 2e-4); with bf16
# activations instead of fp32 the real model's second step was 21 % off.
LOSS_RTOL = 0.03

needs_fast_cpu_bf16 = pytest.mark.skipif(torch.cuda.is_available() or not cpu_bf16().fast,
                                         reason=f"the CPU policy with a bf16 base: {cpu_bf16().reason}")


def resolved(method: str = "lora", lora: dict[str, Any] | None = None, **hyperparameters: Any) -> ResolvedJobSpec:
    body: dict[str, Any] = {"type": method, **({"lora": lora} if lora else {})}
    if method == "freeze":
        body["freeze"] = {"trainable_layers": 1}
    spec = JobSpec.model_validate({"base_model": "tiny-llama", "training_file": "file-train", "method": body,
                                   "hyperparameters": hyperparameters})
    return training_spec(stored_spec(spec, 16))


def test_the_cpu_decision_follows_its_flags_and_times_only_without_them() -> None:
    decision, flags = cpu_bf16(), cpu_flags()
    if flags is None:
        assert "a bf16 matmul ran" in decision.reason and "as fast as fp32" in decision.reason
    elif flags & CPU_BF16_FLAGS:
        assert decision.fast and decision.reason == f"this CPU has {', '.join(sorted(flags & CPU_BF16_FLAGS))}"
    else:
        assert not decision.fast and "no bf16 instructions" in decision.reason
    speedup = bf16_matmul_speedup(repeats=1)
    assert math.isfinite(speedup) and speedup > 0


def test_the_probe_leaves_the_seeded_random_state_alone() -> None:
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    bf16_matmul_speedup(repeats=1)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU policy")
def test_on_a_cpu_auto_keeps_fp32_compute_and_only_adapter_bases_go_bf16() -> None:
    fast = cpu_bf16().fast
    for method in ("lora", "dora"):
        choices = decide_device_choices(resolved(method), cuda=False)
        assert (choices.precision, choices.autocast_dtype) == ("fp32", None)
        assert choices.weights_dtype(adapter=True) == (torch.bfloat16 if fast else torch.float32)
        assert choices.precision_reason == f"auto: {cpu_bf16().reason}"
    pissa = decide_device_choices(resolved(lora={"init": "pissa"}), cuda=False)  # it rewrites the base weights
    assert pissa.weights_dtype(adapter=True) == torch.float32 and "PiSSA" in pissa.precision_reason
    for method in ("full", "freeze"):
        choices = decide_device_choices(resolved(method), cuda=False)
        assert choices.weights_dtype(adapter=False) == torch.float32 and choices.autocast_dtype is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU policy")
def test_an_explicit_precision_overrides_the_cpu_probe() -> None:
    fp32 = decide_device_choices(resolved(precision="fp32"), cuda=False)
    assert (fp32.weights_dtype(adapter=True), fp32.autocast_dtype) == (torch.float32, None)
    assert fp32.precision_reason == "hyperparameters.precision is 'fp32'"
    bf16 = decide_device_choices(resolved(precision="bf16"), cuda=False)
    assert (bf16.weights_dtype(adapter=True), bf16.autocast_dtype) == (torch.bfloat16, torch.bfloat16)
    assert bf16.weights_dtype(adapter=False) == torch.float32  # full/freeze keep fp32 master weights


def run(tmp_path: Path, base: Path, name: str, rows: list[dict[str, Any]], **options: Any
        ) -> tuple[TrainResult, Reporter]:
    options = {"n_epochs": 2, "lr_scheduler": "constant", **options}
    job = load_job(write_job_dir(tmp_path / name, base, rows, **options))
    reporter = Reporter(io.StringIO())
    return train(job, reporter), reporter


def losses(reporter: Reporter) -> list[float]:
    return [e["loss"] for e in reporter.events if e["type"] == "progress" and e["loss"] is not None]


def first_log(reporter: Reporter) -> str:
    return next(e["message"] for e in reporter.events if e["type"] == "log" and e["message"].startswith("loaded"))


def dtypes(model: torch.nn.Module, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad == trainable}


def assert_losses_agree(bf16_events: Reporter, fp32_events: Reporter, steps: int) -> list[float]:
    bf16_losses, fp32_losses = losses(bf16_events), losses(fp32_events)
    assert len(bf16_losses) == len(fp32_losses) == steps
    assert bf16_losses != fp32_losses, "the two runs computed in different dtypes"
    for step, (got, want) in enumerate(zip(bf16_losses, fp32_losses, strict=True), start=1):
        assert abs(got - want) <= LOSS_RTOL * abs(want), (step, got, want)
    return bf16_losses


@pytest.mark.slow
@needs_fast_cpu_bf16
def test_a_lora_run_on_a_bf16_base_matches_the_fp32_run_within_the_tolerance(tmp_path: Path,
                                                                               tiny_model_dir: Path) -> None:
    rows = fixed_reply_rows(16)
    auto, auto_events = run(tmp_path, tiny_model_dir, "auto", rows)
    exact, exact_events = run(tmp_path, tiny_model_dir, "fp32", rows, precision="fp32")

    assert dtypes(auto.model, trainable=False) == {torch.bfloat16}  # the tiny model is fp32 on disk
    assert dtypes(auto.model, trainable=True) == {torch.float32}
    assert {name.split(".")[-2] for name, p in auto.model.named_parameters() if p.requires_grad} == {"default"}
    assert dtypes(exact.model, trainable=False) == dtypes(exact.model, trainable=True) == {torch.float32}
    assert ("cpu: frozen base weights bf16, trained weights fp32, bf16 matmuls with fp32 activations (auto: this "
            "CPU has") in first_log(auto_events)
    assert "frozen base weights fp32, trained weights fp32, fp32 compute (hyperparameters.precision is 'fp32')" in \
        first_log(exact_events)
    bf16_losses = assert_losses_agree(auto_events, exact_events, steps=8)
    assert bf16_losses[-1] < bf16_losses[0] - 0.5  # and it learns


@pytest.mark.slow
@needs_fast_cpu_bf16
def test_on_the_real_model_a_bf16_base_learns_as_fast_as_fp32(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct is bf16 on disk. Six LoRA steps at the default learning rate: each loss within
    LOSS_RTOL of the fp32 run's (bf16 activations would fail at step 2: 3.68 against 3.05)."""
    base = require_real_model()
    rows, options = fixed_reply_rows(8), {"n_epochs": 3, "learning_rate": 2e-4}
    auto, auto_events = run(tmp_path, base, "auto", rows, **options)
    _, exact_events = run(tmp_path, base, "fp32", rows, precision="fp32", **options)
    assert dtypes(auto.model, trainable=False) == {torch.bfloat16}
    bf16_losses = assert_losses_agree(auto_events, exact_events, steps=6)
    assert bf16_losses[-1] < bf16_losses[0] / 2


@pytest.mark.slow
@needs_fast_cpu_bf16
def test_modules_to_save_and_a_value_head_train_in_fp32_over_a_bf16_base(tmp_path: Path,
                                                                          tiny_model_dir: Path) -> None:
    saved, saved_events = run(tmp_path, tiny_model_dir, "saved", fixed_reply_rows(16),
                              lora={"modules_to_save": ["embed_tokens", "lm_head"]})
    rm, rm_events = run(tmp_path, tiny_model_dir, "rm", pair_rows(16), stage="rm", learning_rate=5e-3)
    for result, events, module in ((saved, saved_events, "embed_tokens"), (rm, rm_events, "score")):
        copies = {p.dtype for name, p in result.model.named_parameters() if f"{module}.modules_to_save" in name}
        assert copies == {torch.float32}, module
        assert dtypes(result.model, trainable=False) == {torch.bfloat16}
        assert dtypes(result.model, trainable=True) == {torch.float32}
        trained = losses(events)
        assert all(math.isfinite(loss) for loss in trained) and trained[-1] < trained[0], (module, trained)
