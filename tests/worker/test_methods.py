"""Method options and publishing: PiSSA (published as a plain LoRA of the original base), rsLoRA, LoRA+,
modules_to_save, freeze by module name, the merged model, continuing a finished adapter (from_model), and the
SFT data details (packing without cross-attention, weight-0 turns)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from common.text.chat import tokenize_chat
from common.text.masks import IGNORE_INDEX
from common.text.templates import resolve_chat_template
from tests.support.training import fixed_reply_rows, loss_drop, write_job_dir
from worker.train.config import BaseModelRef, load_job
from worker.train.loading import load_base_model, load_tokenizer
from worker.train.reporter import Reporter
from worker.train.run import train
from worker.train.stages import make_stage

pytestmark = pytest.mark.slow
PROBE = torch.tensor([[5, 17, 42, 99, 250, 3, 7, 11]])


def base_model(path: Path) -> torch.nn.Module:
    return load_base_model(BaseModelRef(id="tiny-llama", path=str(path)), dtype=torch.float32)


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def test_pissa_adapter_is_published_for_the_original_base(tmp_path, tiny_model_dir) -> None:
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(8), n_epochs=2,
                                 lora={"init": "pissa", "dropout": 0.0}))
    result = train(job, Reporter(io.StringIO()))
    assert loss_drop(result) > 0
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 16  # converted: rank 2r, applies to the unmodified base
    reloaded = PeftModel.from_pretrained(base_model(tiny_model_dir), str(result.adapter_dir))
    torch.testing.assert_close(logits(reloaded), logits(result.model), atol=1e-4, rtol=1e-4)


def test_rslora_loraplus_and_modules_to_save(tmp_path, tiny_model_dir) -> None:
    # precision fp32: the reload below is compared bit for bit with an fp32 base (tests/worker/test_precision.py
    # covers modules_to_save over a bf16 base)
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(8), n_epochs=1, precision="fp32", lora={
        "use_rslora": True, "loraplus_lr_ratio": 16.0, "modules_to_save": ["lm_head"]}))
    reporter = Reporter(io.StringIO())
    result = train(job, reporter)
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["modules_to_save"] == ["lm_head"]
    groups = result.trainer.optimizer.param_groups
    assert {group["initial_lr"] for group in groups if group["params"]} >= {1e-3, 16e-3}  # B learns 16× faster
    assert any(e["type"] == "log" and e["level"] == "warning" and "serving engines" in e["message"]
               for e in reporter.events)
    reloaded = PeftModel.from_pretrained(base_model(tiny_model_dir), str(result.adapter_dir))
    torch.testing.assert_close(logits(reloaded), logits(result.model))


def test_freeze_named_modules_trains_only_those(tmp_path, tiny_model_dir) -> None:
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(8), method="freeze", n_epochs=1,
                                 freeze={"trainable_layers": 2, "trainable_modules": ["mlp"],
                                         "extra_modules": ["lm_head"]}))
    result = train(job, Reporter(io.StringIO()))
    trained = {name for name, param in result.model.named_parameters() if param.requires_grad}
    assert trained == {f"model.layers.{i}.mlp.{proj}.weight" for i in (0, 1)
                       for proj in ("gate_proj", "up_proj", "down_proj")} | {"lm_head.weight"}
    reloaded = AutoModelForCausalLM.from_pretrained(str(result.adapter_dir), use_safetensors=True)
    torch.testing.assert_close(logits(reloaded), logits(result.model))


def test_merged_model_equals_base_plus_adapter(tmp_path, tiny_model_dir) -> None:
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(8), n_epochs=1, method="dora",
                                 precision="fp32", spec_extra={"publish": {"merged": True}}))  # fp32: as above
    reporter = Reporter(io.StringIO())
    result = train(job, reporter)
    done = reporter.events[-1]
    assert done["type"] == "result" and done["merged_dir"] == str(job.output_dir.absolute() / "merged")
    merged_dir = Path(done["merged_dir"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in merged_dir.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), use_safetensors=True)
    torch.testing.assert_close(logits(merged), logits(result.model), atol=1e-4, rtol=1e-4)


def test_from_model_continues_the_published_adapter(tmp_path, tiny_model_dir) -> None:
    rows = fixed_reply_rows(8)
    first = train(load_job(write_job_dir(tmp_path / "first", tiny_model_dir, rows, n_epochs=3)),
                  Reporter(io.StringIO()))
    job = load_job(write_job_dir(tmp_path / "second", tiny_model_dir, rows, n_epochs=1,
                                 spec_extra={"from_model": "ft:tiny-llama:test:ftjob-1"},
                                 job_extra={"init_adapter_dir": str(first.adapter_dir)}))
    second = train(job, Reporter(io.StringIO()))
    assert second.first_loss is not None and first.first_loss is not None
    assert second.first_loss < first.first_loss - 0.5  # it starts where the first job ended
    assert second.first_loss == pytest.approx(first.last_loss, abs=0.5)


def test_packed_rows_do_not_attend_to_each_other(tmp_path, tiny_model_dir) -> None:
    job = load_job(write_job_dir(tmp_path, tiny_model_dir, fixed_reply_rows(6), packing=True, max_seq_length=128))
    tokenizer = load_tokenizer(job.base_model)
    stage = make_stage(job, tokenizer, resolve_chat_template(tokenizer, "chatml", "tiny-llama"))
    windows = stage.prepare(lambda message: None).train
    assert len(windows) < 6  # several rows share a window
    window = max(windows, key=lambda w: w["position_ids"].count(0))
    batch = stage.collate([window])
    model = base_model(tiny_model_dir).eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        starts = [i for i, pos in enumerate(window["position_ids"]) if pos == 0] + [len(window["input_ids"])]
        for begin, end in zip(starts, starts[1:], strict=False):
            alone = model(input_ids=torch.tensor([window["input_ids"][begin:end]])).logits[0]
            torch.testing.assert_close(packed[begin:end], alone, atol=1e-5, rtol=1e-4)
    result = train(job, Reporter(io.StringIO()))
    assert loss_drop(result) > 0


def test_assistant_turns_with_weight_0_are_context(tiny_model_dir) -> None:
    tokenizer = load_tokenizer(BaseModelRef(id="tiny-llama", path=str(tiny_model_dir)))
    template = resolve_chat_template(tokenizer, "chatml", "tiny-llama")
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Skip me.", "weight": 0},
        {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Learn me.", "weight": 1}]
    ids, labels = tokenize_chat(tokenizer, messages, template)
    trained = [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Learn me.<|im_end|>"
    ids, labels = tokenize_chat(tokenizer, messages, template, train_on_inputs=True)
    assert labels == ids
