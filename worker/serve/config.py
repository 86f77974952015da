"""Settings of the `serve` process: the shared `Settings` (TUNEQUEUE_* variables) plus the knobs only it reads.

The shared class already has serve_url, serve_host, serve_port, serve_max_adapters and serve_queue_size; the
fields below are read by this process alone (same prefix, same .env file)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field

from common.settings import Settings

VLLM_DEFAULT_MAX_LORA_RANK = 16


class ServeSettings(Settings):
    serve_max_batch: int = Field(default=32, ge=1, le=1024,
                                 description="Sequences decoded together in one forward pass per base model.")
    serve_max_prefill_tokens: int = Field(default=4096, ge=16,
                                          description="Prompt tokens prefilled in one forward pass; more wait.")
    serve_default_max_tokens: int = Field(default=512, ge=1,
                                          description="Chat completions without max_tokens stop here (or at the "
                                                      "end of the context window, whichever is first).")
    serve_memory_mb: int | None = Field(
        default=None, ge=1,
        description="Memory for base model weights; least recently used idle bases are unloaded to stay under it. "
                    "Default: 90% of the GPU's memory, or half of the host's RAM on CPU.")
    serve_device: str = Field(default="auto", description="'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1'.")
    serve_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto': bfloat16 on a GPU that has it, float16 on other GPUs, float32 on CPU.")
    serve_threads: int | None = Field(default=None, ge=1,
                                      description="torch intra-op threads (default on CPU: all cores but one).")
    serve_backend: Literal["local", "vllm"] = Field(
        default="local", description="'local': this process runs the models; 'vllm': forward to a vLLM server.")
    serve_vllm_url: str = Field(default="http://127.0.0.1:8100", description="The vLLM OpenAI server (backend vllm).")
    serve_vllm_max_lora_rank: int = Field(default=VLLM_DEFAULT_MAX_LORA_RANK, ge=1,
                                          description="The --max-lora-rank the vLLM server was started with.")


@lru_cache
def get_serve_settings() -> ServeSettings:
    return ServeSettings()
