"""common/memory_estimate.py: the estimate's terms move the way the training child's memory does, the precision
policy it restates agrees with the worker's, and on a CPU it lands within a stated tolerance of the peak RSS of a
real training child."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.memory_estimate import (
    CHUNK_ELEMENTS,
    MIB,
    estimate_training_memory,
    fits,
    frozen_dtype,
    largest_micro_batch,
    load_model_config,
)
from common.schemas.job_spec import JobSpec, ResolvedJobSpec, resolve_spec
from tests.support.servers import REPO
from tests.support.training import events_of, fixed_reply_rows, start_child, write_job_dir

# Llama-2-7B's shape (config.json fields only; no weights involved).
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False, "torch_dtype": "float16"}
GIB = 2**30


def spec(stage: str = "sft", method: str = "lora", **hyperparameters: Any) -> ResolvedJobSpec:
    hp = {"batch_size": 4, "max_seq_length": 1024, **hyperparameters}
    return resolve_spec(JobSpec.model_validate({"base_model": "m", "training_file": "file-x", "stage": stage,
                                                "method": {"type": method}, "hyperparameters": hp}), 100)


def test_qlora_4bit_estimate_of_a_7b_config_is_far_below_the_bf16_lora_one() -> None:
    qlora = estimate_training_memory(LLAMA_7B, spec(method="qlora"), device="cuda")
    lora = estimate_training_memory(LLAMA_7B, spec(method="lora"), device="cuda")
    assert lora.breakdown["weights"] > 12.5 * GIB  # 6.7B weights in bf16
    assert qlora.breakdown["weights"] < 0.35 * lora.breakdown["weights"]
    assert lora.total_bytes - qlora.total_bytes > 8 * GIB
    assert qlora.assumptions["weight_bits"] == 4 and lora.assumptions["weight_bits"] == 16


def test_gradient_checkpointing_lowers_the_activation_term() -> None:
    for method in ("lora", "full"):
        off = estimate_training_memory(LLAMA_7B, spec(method=method, gradient_checkpointing=False), device="cuda")
        on = estimate_training_memory(LLAMA_7B, spec(method=method, gradient_checkpointing=True), device="cuda")
        assert on.breakdown["activations"] < 0.3 * off.breakdown["activations"]
        assert {k: v for k, v in on.breakdown.items() if k != "activations"} == \
            {k: v for k, v in off.breakdown.items() if k != "activations"}


def test_full_fine_tuning_optimizer_states_are_twice_the_fp32_params_with_adamw_and_less_with_adamw_8bit() -> None:
    adamw = estimate_training_memory(LLAMA_7B, spec(method="full", optimizer="adamw"), device="cuda")
    eight_bit = estimate_training_memory(LLAMA_7B, spec(method="full", optimizer="adamw_8bit"), device="cuda")
    fp32_params = adamw.breakdown["trainable_parameters"]
    assert 6.5e9 * 4 < fp32_params < 7e9 * 4
    assert adamw.breakdown["optimizer_states"] == 2 * fp32_params
    assert eight_bit.breakdown["optimizer_states"] <= fp32_params / 2
    assert adamw.breakdown["gradients"] == fp32_params


def test_a_cpu_worker_counts_adamw_whatever_the_spec_says() -> None:
    """A CPU worker refuses bitsandbytes optimizers, so it never trains with them."""
    estimate = estimate_training_memory(LLAMA_7B, spec(method="full", optimizer="adamw_8bit"), device="cpu")
    assert estimate.breakdown["optimizer_states"] == 2 * estimate.breakdown["trainable_parameters"]


def test_pair_stages_hold_twice_the_activations_of_sft_and_dpo_adds_no_reference_model() -> None:
    sft = estimate_training_memory(LLAMA_7B, spec("sft"), device="cuda")
    rm = estimate_training_memory(LLAMA_7B, spec("rm"), device="cuda")
    dpo = estimate_training_memory(LLAMA_7B, spec("dpo"), device="cuda")
    assert rm.assumptions["sequences_per_row"] == dpo.assumptions["sequences_per_row"] == 2
    assert rm.breakdown["activations"] > 1.8 * sft.breakdown["activations"]
    assert dpo.breakdown["weights"] == sft.breakdown["weights"]  # reference log-probs are precomputed
    assert dpo.breakdown["activations"] > rm.breakdown["activations"]  # all scored logits at once, not chunked


def test_freeze_trains_and_holds_activations_for_its_layers_only() -> None:
    full = estimate_training_memory(LLAMA_7B, spec(method="full"), device="cpu")
    freeze = estimate_training_memory(LLAMA_7B, spec(method="freeze"), device="cpu")  # last 2 of 32 layers
    assert freeze.assumptions["layers_holding_activations"] == 2
    assert freeze.breakdown["trainable_parameters"] < full.breakdown["trainable_parameters"] / 10
    assert freeze.breakdown["weights"] + freeze.breakdown["trainable_parameters"] == \
        full.breakdown["trainable_parameters"]  # every weight fp32, frozen or trained


def test_activations_grow_linearly_with_the_micro_batch() -> None:
    one, four = (estimate_training_memory(LLAMA_7B, spec(), device="cuda", micro_batch_size=n) for n in (1, 4))
    assert one.breakdown["activations"] * 3.5 < four.breakdown["activations"] <= one.breakdown["activations"] * 4


def test_largest_micro_batch_is_monotone_in_budget_and_its_answer_fits_while_one_more_does_not() -> None:
    job = spec(gradient_checkpointing=False, max_seq_length=256)
    answers = []
    for gib in (20, 24, 40, 80, 141):
        budget = gib * GIB
        best = largest_micro_batch(LLAMA_7B, job, device="cuda", budget_bytes=budget)
        answers.append(best)
        assert best >= 1
        assert estimate_training_memory(LLAMA_7B, job, device="cuda", micro_batch_size=best).total_bytes <= budget
        assert estimate_training_memory(LLAMA_7B, job, device="cuda", micro_batch_size=best + 1).total_bytes > budget
    assert answers == sorted(answers) and answers[-1] > answers[0]


def test_largest_micro_batch_is_zero_when_one_row_does_not_fit() -> None:
    assert largest_micro_batch(LLAMA_7B, spec(), device="cuda", budget_bytes=8 * GIB) == 0


def test_auto_gradient_checkpointing_on_cuda_fits_what_only_fits_with_checkpointing() -> None:
    """The worker turns checkpointing on when activations would not fit, so placement counts it on."""
    job = spec(batch_size=8, max_seq_length=4096)
    with_it = estimate_training_memory(LLAMA_7B, job, device="cuda", gradient_checkpointing=True).total_bytes
    without = estimate_training_memory(LLAMA_7B, job, device="cuda").total_bytes
    budget = (with_it + without) // 2
    assert fits(LLAMA_7B, job, device="cuda", budget_bytes=budget, micro_batch_size=8)
    explicit_off = spec(batch_size=8, max_seq_length=4096, gradient_checkpointing=False)
    assert not fits(LLAMA_7B, explicit_off, device="cuda", budget_bytes=budget, micro_batch_size=8)


def test_an_auto_batch_size_needs_a_micro_batch() -> None:
    unresolved = JobSpec.model_validate({"base_model": "m", "training_file": "file-x"})
    with pytest.raises(ValueError, match="largest_micro_batch"):
        estimate_training_memory(LLAMA_7B, unresolved, device="cuda")
    explicit = JobSpec.model_validate({"base_model": "m", "training_file": "file-x",
                                       "hyperparameters": {"batch_size": 8, "gradient_accumulation_steps": 4}})
    assert estimate_training_memory(LLAMA_7B, explicit, device="cuda").assumptions["micro_batch_size"] == 2


def test_the_estimate_serialises_to_json() -> None:
    data = json.loads(json.dumps(estimate_training_memory(LLAMA_7B, spec(), device="cpu").to_dict()))
    assert set(data["breakdown"]) == {"weights", "trainable_parameters", "gradients", "optimizer_states",
                                      "activations", "overhead"}
    assert data["total_bytes"] == sum(data["breakdown"].values())
    assert data["assumptions"]["max_seq_length"] == 1024


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, common.memory_estimate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_chunk_size_is_the_chunked_losses() -> None:
    from worker.train.chunked_loss import CHUNK_ELEMENTS as LOSS_CHUNK

    assert CHUNK_ELEMENTS == LOSS_CHUNK


@pytest.mark.parametrize("method", ["lora", "qlora", "dora", "full", "freeze"])
@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16", "fp32"])
@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("bf16_hardware", [False, True])
def test_frozen_dtype_is_the_workers_precision_policy(monkeypatch: pytest.MonkeyPatch, method: str, precision: str,
                                                      cuda: bool, bf16_hardware: bool) -> None:
    import torch

    from worker.train import runtime
    from worker.train.errors import TrainingError

    monkeypatch.setattr(runtime, "cpu_bf16", lambda: runtime.CpuBf16(bf16_hardware, "test"))
    monkeypatch.setattr(runtime, "has_module", lambda name: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_hardware)
    job = spec(method=method, precision=precision)
    try:
        choices = runtime.decide_device_choices(job, cuda=cuda)
    except TrainingError:
        pytest.skip("the worker refuses this combination")
    expected = runtime.DTYPES[choices.frozen_dtype] if method in ("lora", "qlora", "dora") else torch.float32
    ours = frozen_dtype(job, "cuda" if cuda else "cpu", cpu_bf16=bf16_hardware, cuda_bf16=bf16_hardware)
    assert runtime.DTYPES[ours] == expected


# The tolerance of the CPU estimate against a real child's peak RSS. The tiny model's own terms are a few MiB, so
# this checks the runtime overhead (CPU_RUNTIME_BYTES + CPU_TRAINING_SLACK_BYTES) above all; the SmolLM2 rows of
# benchmarks/results/memory_estimate_cpu.txt check the model terms.
CPU_TOLERANCE = 0.15


def test_cpu_estimate_is_within_15_percent_of_a_training_childs_peak_rss(tmp_path: Path, tiny_model: Path) -> None:
    job_dir = write_job_dir(tmp_path / "job", tiny_model, fixed_reply_rows(8), method="full", max_steps=3,
                            batch_size=2, max_seq_length=64)
    child = start_child(job_dir)
    assert child.stdout is not None
    events = child.stdout.read()
    assert child.wait() == 0, events[-2000:]
    # the child's own peak (VmHWM), from its result event: not the rusage of wait4, which carries this test
    # process's high-water mark over the child's exec
    (result,) = [e for e in events_of(events) if e["type"] == "result"]
    peak = result["peak_memory"]["rss_peak_bytes"]
    job = ResolvedJobSpec.model_validate(json.loads((job_dir / "job.json").read_text())["spec"])
    from worker.train.runtime import cpu_bf16

    estimate = estimate_training_memory(load_model_config(tiny_model), job, device="cpu", cpu_bf16=cpu_bf16().fast)
    error = (estimate.total_bytes - peak) / peak
    assert abs(error) <= CPU_TOLERANCE, (f"estimate {estimate.total_bytes / MIB:.0f} MiB, measured peak "
                                         f"{peak / MIB:.0f} MiB ({error:+.0%}): {estimate.breakdown}")
