"""Serve builds base models from background threads (preload on publish, reload after training) while other code in
the same process builds models too. transformers swaps process-wide functions for no-ops while it builds, so two
builds at once could leave them swapped for good (worker/model_build_lock.py): every later load then got an
untied, uninitialised LM head. These tests build on two threads at once and check that nothing is left swapped."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydantic import SecretStr
from transformers import AutoModelForCausalLM

from common.settings import BaseModelEntry, Settings
from tests.support.adapters import random_adapter
from tests.support.serving import SERVE_TOKEN, publish
from worker.model_build_lock import MODEL_BUILD_LOCK, swapped_out_functions
from worker.serve.catalog import Catalog
from worker.serve.server import ModelServer

BASES = [f"tiny-{name}" for name in "abcd"]


def test_serve_preloading_bases_while_another_thread_builds_models_leaves_no_function_swapped(
        tiny_model: Path, tmp_path: Path) -> None:
    # One registered base per published adapter, all the tiny model: each publish makes serve's preload thread
    # build a base model of its own.
    settings = Settings(base_models={b: BaseModelEntry(path=str(tiny_model), template="chatml") for b in BASES},
                        serve_token=SecretStr(SERVE_TOKEN), serve_memory_mb=4096)
    adapter = random_adapter(tiny_model, tmp_path / "adapter", seed=3)
    server = ModelServer(settings, catalog=Catalog(settings, lookup=lambda _: None))
    try:
        stop = threading.Event()
        builds = 0

        def build_meanwhile() -> None:  # as a test helper, or training in the same process, would
            nonlocal builds
            while not stop.is_set():
                with MODEL_BUILD_LOCK:
                    AutoModelForCausalLM.from_pretrained(tiny_model)
                builds += 1

        builder = threading.Thread(target=build_meanwhile, name="test-builder")
        builder.start()
        for i, base in enumerate(BASES):
            publish(server, adapter, f"ft:{base}:lock{i}:ftjob-lock{i}", base_model=base)
        deadline = time.monotonic() + 120
        while set(server.pool.loaded) != set(BASES):
            assert time.monotonic() < deadline, f"preloaded only {sorted(server.pool.loaded)} of {BASES}"
            time.sleep(0.05)
        stop.set()
        builder.join(60)
        assert builds > 0, "the other thread never built a model, so nothing overlapped"

        with MODEL_BUILD_LOCK:
            assert swapped_out_functions() == []
    finally:
        server.close()
