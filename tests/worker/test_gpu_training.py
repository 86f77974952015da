"""Training paths that need a CUDA GPU: QLoRA (bitsandbytes 4-bit nf4/fp4 with double quantization, and
8-bit), 8-bit and paged optimizers, flash-attention with padding-free batches, bf16 autocast and gradient
checkpointing. Skipped without CUDA; `scripts/gpu-check` runs them on a GPU machine."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from tests.support.training import fixed_reply_rows, loss_drop, write_job_dir
from worker.train.config import BaseModelRef, load_job
from worker.train.loading import load_base_model
from worker.train.methods import quantization_config
from worker.train.reporter import Reporter
from worker.train.run import TrainResult, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
needs_flash = pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
PROBE = torch.tensor([[5, 17, 42, 99, 250, 3, 7, 11]])


@pytest.fixture(autouse=True)
def free_cuda_memory():
    yield
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def run(tmp_path: Path, base: Path, **options: Any) -> tuple[TrainResult, list[Any]]:
    job = load_job(write_job_dir(tmp_path, base, fixed_reply_rows(16), n_epochs=3, **options))
    reporter = Reporter(io.StringIO())
    return train(job, reporter), reporter.events


@needs_bnb
@pytest.mark.parametrize("quantization", [{"bits": 4, "quant_type": "nf4", "double_quant": True},
                                          {"bits": 4, "quant_type": "fp4", "double_quant": False},
                                          {"bits": 8}])
def test_qlora_learns_and_its_adapter_reloads(tmp_path, tiny_model_dir, quantization) -> None:
    result, events = run(tmp_path, tiny_model_dir, method="qlora",
                         spec_extra={"method": {"type": "qlora", "lora": {"r": 8, "alpha": 32, "dropout": 0.0},
                                                "quantization": quantization}})
    assert loss_drop(result) > 0.5
    assert "cuda bf16" in events[0]["message"] or "cuda fp16" in events[0]["message"]
    progress = [e for e in events if e["type"] == "progress"]
    assert 0 < progress[-1]["peak_memory_mb"] < 2000  # torch.cuda.max_memory_allocated, not the host RSS
    base = load_base_model(BaseModelRef(id="tiny-llama", path=str(tiny_model_dir)), dtype=torch.bfloat16,
                           quantization=quantization_config(load_job(tmp_path).spec.method, torch.bfloat16))
    reloaded = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    with torch.no_grad():
        ids = PROBE.cuda()
        torch.testing.assert_close(reloaded(input_ids=ids).logits.float(),
                                   result.model.eval()(input_ids=ids).logits.float(), atol=2e-2, rtol=2e-2)


@needs_bnb
@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw", "paged_adamw_8bit"])
def test_bitsandbytes_optimizers_train(tmp_path, tiny_model_dir, optimizer) -> None:
    result, events = run(tmp_path, tiny_model_dir, optimizer=optimizer)
    assert loss_drop(result) > 0.5
    names = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw": "paged_adamw_32bit", "paged_adamw_8bit": "paged_adamw_8bit"}
    assert f"optimizer {names[optimizer]}" in events[0]["message"]


@needs_flash
def test_flash_attention_trains_padding_free(tmp_path, tiny_model_dir) -> None:
    result, events = run(tmp_path, tiny_model_dir, attention="flash_attention_2", precision="bf16")
    assert "attention flash_attention_2" in events[0]["message"]
    assert loss_drop(result) > 0.5


def test_auto_precision_is_bf16_and_checkpointing_can_be_forced(tmp_path, tiny_model_dir) -> None:
    result, events = run(tmp_path, tiny_model_dir, gradient_checkpointing=True)
    expected = "cuda bf16" if torch.cuda.is_bf16_supported() else "cuda fp16"
    assert expected in events[0]["message"] and "gradient checkpointing on" in events[0]["message"]
    assert loss_drop(result) > 0.5
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8


def test_full_fine_tuning_on_gpu_reloads(tmp_path, tiny_model_dir) -> None:
    result, _ = run(tmp_path, tiny_model_dir, method="full", learning_rate=1e-4)
    assert loss_drop(result) > 0
    assert (result.adapter_dir / "model.safetensors").is_file()
