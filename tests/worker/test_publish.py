"""What gets published: PEFT's two files for adapter methods, the whole model for full/freeze; sha256 of each."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.artifacts import LocalArtifactStore
from common.models import Job
from worker.publish import PublishError, model_name, upload_adapter


def _job(suffix: str | None = "bot") -> Job:
    return Job(id="ftjob-x", tenant_id="tenant-t", base_model="tiny-llama", spec={"suffix": suffix})


def _write(folder: Path, names: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in names.items():
        (folder / name).write_bytes(data)


def test_adapter_publishes_exactly_the_peft_files(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    _write(tmp_path / "out", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"w" * 10,
                              "tokenizer.json": b"{}"})
    key, manifest = upload_adapter(store, _job(), 2, tmp_path / "out")
    assert key == "models/tenant-t/ftjob-x/attempt-2" and manifest["format"] == "peft-lora"
    assert [f["path"] for f in manifest["files"]] == ["adapter_config.json", "adapter_model.safetensors"]
    assert manifest["files"][1] == {"path": "adapter_model.safetensors", "bytes": 10,
                                    "sha256": hashlib.sha256(b"w" * 10).hexdigest()}
    assert store.list_prefix(key) == [f"{key}/adapter_config.json", f"{key}/adapter_model.safetensors"]


def test_full_method_publishes_the_whole_model(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    _write(tmp_path / "out", {"config.json": b"{}", "model.safetensors": b"m" * 7, "tokenizer.json": b"{}"})
    key, manifest = upload_adapter(store, _job(None), 1, tmp_path / "out")
    assert manifest["format"] == "full" and manifest["model"] == "ft:tiny-llama:ftjob-x" == model_name(_job(None))
    assert [f["path"] for f in manifest["files"]] == ["config.json", "model.safetensors", "tokenizer.json"]


def test_nothing_to_publish_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(PublishError):
        upload_adapter(LocalArtifactStore(tmp_path / "store"), _job(), 1, tmp_path / "out")
    _write(tmp_path / "half", {"adapter_config.json": b"{}"})
    with pytest.raises(PublishError, match="adapter_model.safetensors") as caught:
        upload_adapter(LocalArtifactStore(tmp_path / "store"), _job(), 1, tmp_path / "half")
    assert caught.value.job_error() == {  # what the runner records as the job's error
        "code": "publish_failed", "param": None,
        "message": f"the training process produced no adapter_model.safetensors in {tmp_path / 'half'}"}
