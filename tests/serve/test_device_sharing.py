"""serve yields its device to training (worker/serve/bases.py, server.py `on_training`): a worker's announcement on
tunequeue:models that a training process started on this host's device releases serve's idle base models, and the
announcement that it ended loads them again; announcements for another host or device change nothing. On a CPU the
protocol is the same as on a GPU (where it matters: the memory it frees is the card's), so it is tested here with
the tiny model, through the real Redis channel and a real listener."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.model_events import announce_training
from common.settings import Settings
from worker.serve.catalog import Catalog
from worker.serve.server import ModelServer


@pytest.fixture
def server(serve_settings: Settings) -> Iterator[ModelServer]:
    """A serve of its own (the shared one's base models stay loaded for the other tests), listening on Redis."""
    own = ModelServer(serve_settings, catalog=Catalog(serve_settings, lookup=lambda _: None))
    own.start(warm=False)
    assert own.listener is not None and own.listener.ready.wait(10)
    yield own
    own.close()


def eventually(check: Callable[[], Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_training_on_this_device_releases_the_idle_base_model_and_its_end_loads_it_again(server) -> None:  # type: ignore[no-untyped-def]
    server.pool.get("tiny-llama")
    host = socket.gethostname()
    announce_training("training_started", host=host, device="cpu", job_id="ftjob-sharing")
    eventually(lambda: "tiny-llama" not in server.pool.loaded)
    assert server.pool.released == ["tiny-llama"] and server.pool.training == {"ftjob-sharing"}
    announce_training("training_ended", host=host, device="cpu", job_id="ftjob-sharing")
    eventually(lambda: "tiny-llama" in server.pool.loaded)
    assert server.pool.released == [] and server.pool.training == set()


def test_the_base_models_come_back_only_when_the_last_training_on_the_device_ends(server) -> None:  # type: ignore[no-untyped-def]
    server.pool.get("tiny-llama")
    host = socket.gethostname()
    for job in ("ftjob-one", "ftjob-two"):
        announce_training("training_started", host=host, device="cpu", job_id=job)
    eventually(lambda: server.pool.training == {"ftjob-one", "ftjob-two"})
    announce_training("training_ended", host=host, device="cpu", job_id="ftjob-one")
    eventually(lambda: server.pool.training == {"ftjob-two"})
    time.sleep(0.5)
    assert "tiny-llama" not in server.pool.loaded, "another training still holds the device"
    announce_training("training_ended", host=host, device="cpu", job_id="ftjob-two")
    eventually(lambda: "tiny-llama" in server.pool.loaded)


@pytest.mark.parametrize(("host", "device"), [("another-host", "cpu"), (socket.gethostname(), "cuda:0")])
def test_training_on_another_host_or_device_changes_nothing(server, host: str, device: str) -> None:  # type: ignore[no-untyped-def]
    server.pool.get("tiny-llama")
    announce_training("training_started", host=host, device=device, job_id="ftjob-elsewhere")
    announce_training("training_started", host=socket.gethostname(), device="cpu", job_id="ftjob-marker")
    eventually(lambda: "ftjob-marker" in server.pool.training)  # the listener has read past the first message
    assert server.pool.training == {"ftjob-marker"}, "the other host's or device's training is not counted"
