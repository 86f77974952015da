"""Polling helper for tests that wait on real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], timeout: float = 15, what: str = "condition", interval: float = 0.05,
               tolerate: tuple[type[BaseException], ...] = ()) -> Any:
    """The first truthy value of `check()`; errors in `tolerate` (a server restarting) count as not yet."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except tolerate as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})"
                                                                             if last_exc else ""))
