"""In-process fixtures for the inference server: the tiny base model loaded once, adapters written to the
artifact store the way the worker publishes them, and one adapter trained to answer a fixed phrase."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import Settings
from tests.support.adapters import train_phrase_adapter
from tests.support.serving import OTHER_MESSAGES, OTHER_PHRASE, PHRASE, PHRASE_MESSAGES, SERVE_TOKEN, publish
from worker.serve.catalog import Catalog
from worker.serve.server import ModelServer


@pytest.fixture(scope="session")
def serve_settings(tiny_model: Path) -> Settings:
    return Settings.model_validate({"base_models": {"tiny-llama": {"path": str(tiny_model), "template": "chatml"}},
                                    "serve_max_adapters": 4, "serve_max_batch": 8, "serve_queue_size": 16,
                                    "serve_token": SERVE_TOKEN})


@pytest.fixture(scope="session")
def model_server(serve_settings: Settings) -> Iterator[ModelServer]:
    # Ids come from publish() here (no Postgres rows): an unknown id is simply unknown.
    server = ModelServer(serve_settings, catalog=Catalog(serve_settings, lookup=lambda _: None))
    server.start(listen=False)
    yield server
    server.close()


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="session")
def phrase_adapter(tiny_model: Path, adapters_dir: Path, model_server: ModelServer) -> str:
    out = train_phrase_adapter(tiny_model, adapters_dir / "phrase", PHRASE_MESSAGES, PHRASE)
    publish(model_server, out, "ft:tiny-llama:phrase:ftjob-phrase")
    return "ft:tiny-llama:phrase:ftjob-phrase"


@pytest.fixture(scope="session")
def other_adapter(tiny_model: Path, adapters_dir: Path, model_server: ModelServer) -> str:
    out = train_phrase_adapter(tiny_model, adapters_dir / "other", OTHER_MESSAGES, OTHER_PHRASE, seed=1)
    publish(model_server, out, "ft:tiny-llama:other:ftjob-other")
    return "ft:tiny-llama:other:ftjob-other"
