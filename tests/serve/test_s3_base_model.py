"""Serve loads an s3:// base model (moto's S3-compatible server on loopback: tests/support/s3_server.py) from a
copy fetched into its host's model cache: the weights it holds are the model's, and the copy is in use only while
it loads (then it is in memory, and the cache may evict it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.errors import NotReady
from common.model_cache import get_model_cache
from common.settings import Settings
from tests.support.model_bucket import upload_folder
from tests.support.s3_server import CREDENTIALS, S3Server
from worker.serve.bases import BasePool


def test_serve_loads_an_s3_base_model_from_its_model_cache(moto_s3: S3Server, tiny_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = moto_s3.new_bucket()
    source = upload_folder(moto_s3.client(), bucket, "models/tiny-llama", tiny_model)
    settings = Settings.model_validate({
        "base_models": {"tiny-s3": {"path": source, "template": "chatml"},
                        "gone-s3": {"path": f"s3://{bucket}/models/gone"}},
        "s3_endpoint_url": moto_s3.endpoint_url, "model_cache_dir": str(tmp_path / "cache"), "serve_device": "cpu"})
    pool = BasePool(settings, adapter_loader=lambda model_id, base: None)  # type: ignore[arg-type,return-value]
    try:
        base = pool.get("tiny-s3")
        expected = load_file(str(tiny_model / "model.safetensors"))
        loaded = dict(base.model.named_parameters())
        name = "model.embed_tokens.weight"
        assert torch.equal(loaded[name].detach().cpu(), expected[name].to(loaded[name].dtype))
        [(entry, meta, _)] = get_model_cache(settings).entries()
        assert meta["source"] == source and meta["part"] == "all"
        assert not get_model_cache(settings)._in_use(entry)  # loaded: the copy is no longer needed
        with pytest.raises(NotReady) as caught:
            pool.get("gone-s3")
        assert (caught.value.code, caught.value.param) == ("base_model_unavailable", "model")
        assert "holds no files" in caught.value.message
    finally:
        for base_id in list(pool.loaded):
            pool.unload(base_id)
