"""Settings of the `serve` process. They are fields of the one shared `Settings` class (common/settings.py,
TUNEQUEUE_SERVE_*); these names remain for the serve modules that import them."""

from __future__ import annotations

from common.settings import Settings, get_settings

VLLM_DEFAULT_MAX_LORA_RANK = 16

ServeSettings = Settings


def get_serve_settings() -> Settings:
    return get_settings()
