"""One tenant's generations cannot starve another's: a cap on each tenant's sequences in flight, and a queue that
admits tenants in turn.

Before this, 80 streaming requests (n=16, 2,000 tokens) from one tenant filled serve's queue and another tenant's
2-token request waited 9 s instead of 15 ms. Now:

- `TenantSlots`: a tenant holds at most TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES sequences (prompts × n) waiting or
  decoding, across every base model of this serve process; a request that would pass it is answered at once with
  `429 rate_limit_exceeded` and `Retry-After`, before it is tokenised. Its slots come back when its last sequence
  leaves the engine (finished, cancelled or failed: `GenRequest.done`, worker/serve/engine.py).
- `FairQueue`: the engine's waiting requests, one first-in-first-out line per tenant, admitted round-robin: after
  a request of tenant A joins the batch, every other tenant that waits gets a turn before A's next one, and a
  tenant that had nothing waiting goes first (one short request is not put behind a tenant's backlog)."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from common.errors import InvalidRequest, RateLimited

RETRY_AFTER_SECONDS = 1


class TenantSlots:
    """Sequences in flight per tenant. Thread-safe: taken on the event loop, given back by the engine thread."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._in_use: dict[str, int] = {}

    def acquire(self, tenant: str, rows: int) -> Callable[[], None]:
        """Take `rows` slots for `tenant`; returns the call that gives them back (once, however often called)."""
        if rows > self.cap:
            raise InvalidRequest(f"this request asks for {rows} sequences (prompts × n); a tenant may have at most "
                                 f"{self.cap} in flight (TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES): lower n or send "
                                 "fewer prompts per request", param="n", code="invalid_value")
        with self._lock:
            held = self._in_use.get(tenant, 0)
            if held + rows > self.cap:
                raise RateLimited(
                    f"your generations already hold {held} of the {self.cap} sequences a tenant may have in flight "
                    f"at once (TUNEQUEUE_SERVE_TENANT_MAX_SEQUENCES) and this request asks for {rows}; retry after "
                    "the Retry-After seconds, once one of them has finished", retry_after=RETRY_AFTER_SECONDS)
            self._in_use[tenant] = held + rows
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._in_use.get(tenant, 0) - rows
                if left > 0:
                    self._in_use[tenant] = left
                else:
                    self._in_use.pop(tenant, None)

        return release

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"cap": self.cap, "tenants": len(self._in_use), "sequences": sum(self._in_use.values())}


class Tenanted(Protocol):
    @property
    def tenant(self) -> str: ...


R = TypeVar("R", bound=Tenanted)


class FairQueue(Generic[R]):
    """Waiting requests (the engine's `GenRequest`s): one line per tenant, served round-robin. Guarded by the
    engine's condition lock."""

    def __init__(self) -> None:
        self._lines: OrderedDict[str, deque[R]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[R]:
        return iter([request for line in self._lines.values() for request in line])

    def append(self, request: R) -> None:
        line = self._lines.get(request.tenant)
        if line is None:
            line = self._lines[request.tenant] = deque()
            self._lines.move_to_end(request.tenant, last=False)
        line.append(request)
        self._count += 1

    def head(self) -> R:
        """The next request to admit: the oldest of the tenant whose turn it is."""
        return next(iter(self._lines.values()))[0]

    def pop_head(self) -> R:
        """Take `head()`; its tenant goes to the back of the turn order."""
        tenant, line = next(iter(self._lines.items()))
        request = line.popleft()
        self._count -= 1
        if line:
            self._lines.move_to_end(tenant)
        else:
            del self._lines[tenant]
        return request

    def remove(self, request: R) -> None:
        line = self._lines[request.tenant]
        line.remove(request)
        self._count -= 1
        if not line:
            del self._lines[request.tenant]
