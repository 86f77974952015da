"""Base models in a bucket of the test's S3-compatible server (tests/support/s3_server.py): a model folder
uploaded as s3://bucket/prefix, the way an operator registers one in TUNEQUEUE_BASE_MODELS."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def upload_folder(client: Any, bucket: str, prefix: str, folder: Path) -> str:
    """Every file under `folder` to s3://bucket/prefix/<relative path>; returns that s3:// URL."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def put_fake_model(client: Any, bucket: str, prefix: str, weights: bytes, *, tokenizer: bytes = b"{}") -> str:
    """A model-shaped folder (config.json, tokenizer.json, model.safetensors) of the given contents: what the
    cache handles is files, so its tests need no real model."""
    client.put_object(Bucket=bucket, Key=f"{prefix}/config.json", Body=b'{"model_type": "llama"}')
    client.put_object(Bucket=bucket, Key=f"{prefix}/tokenizer.json", Body=tokenizer)
    client.put_object(Bucket=bucket, Key=f"{prefix}/model.safetensors", Body=weights)
    return f"s3://{bucket}/{prefix}"
