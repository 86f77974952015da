from pathlib import Path

import pytest

from common.errors import InvalidRequest
from common.registry import is_local, is_s3, local_path, resolve
from common.settings import BaseModelEntry, Settings


@pytest.mark.parametrize(("path", "local"), [
    ("/abs/model", True), ("./rel", True), ("~/m", True), ("var/models/tiny-llama", True),
    ("meta-llama/Llama-3.2-1B", False), ("gpt2", False),
    ("s3://bucket/models/tiny-llama", False),  # each host's model cache fetches it: common/model_cache.py
])
def test_local_or_hub(path: str, local: bool) -> None:
    assert is_local(BaseModelEntry(path=path)) is local


def test_an_s3_folder_is_neither_a_local_folder_nor_a_hub_id() -> None:
    entry = BaseModelEntry(path="s3://bucket/models/tiny-llama")
    assert is_s3(entry) and local_path(entry) is None
    assert not is_s3(BaseModelEntry(path="org/name")) and not is_s3(BaseModelEntry(path="/abs/s3:/x"))


def test_relative_folder_resolves_against_cwd_even_before_it_exists(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    assert local_path(BaseModelEntry(path="var/models/tiny-llama")) == tmp_path / "var/models/tiny-llama"


def test_shorthand_and_unknown_model() -> None:
    settings = Settings(base_models='{"a": "org/a", "b": {"path": "/m/b", "revision": "v1"}}')  # type: ignore[arg-type]
    assert resolve(settings, "b").revision == "v1"
    with pytest.raises(InvalidRequest) as info:
        resolve(settings, "c")
    assert info.value.param == "base_model" and "a, b" in info.value.message
