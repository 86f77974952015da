"""Webhook delivery tests: a real receiver per test (tests/support/webhook_receiver.py) and the sender's settings
with loopback allowed, since the receiver listens on 127.0.0.1 (refused by default)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.settings import Settings, get_settings
from tests.support.webhook_receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def loopback_allowed() -> Settings:
    return get_settings().model_copy(update={"webhook_allow": "127.0.0.1", "webhook_timeout_seconds": 3.0})
