"""`tunequeue dev setup`'s model step (cli/dev.py): it converts the real demo model only where that is missing or
an earlier conversion is incomplete, and never replaces a folder that holds a model it did not build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.dev import ensure_demo_models
from common.settings import REAL_MODEL_ID, Settings
from tests.support.real_model import require_real_model
from worker.gguf_convert import MANIFEST


def _settings(path: Path) -> Settings:
    return Settings.model_validate({"base_models": {REAL_MODEL_ID: {"path": str(path)}}})


def test_a_folder_with_another_model_is_left_as_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / REAL_MODEL_ID
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "note": "copied by an operator"}))
    ensure_demo_models(_settings(folder))
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    assert "did not build: left as it is" in capsys.readouterr().out


def test_a_complete_conversion_is_not_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = require_real_model()
    manifest_before = (built / MANIFEST).stat().st_mtime_ns
    ensure_demo_models(_settings(built))
    assert (built / MANIFEST).stat().st_mtime_ns == manifest_before
    assert capsys.readouterr().out == ""


def test_the_dev_key_file_is_created_owner_only_even_under_a_permissive_umask(tmp_path: Path) -> None:
    import os
    import stat

    from common.private_files import write_private

    path = tmp_path / "var" / "dev-api-key"
    path.parent.mkdir()
    path.write_text("an older key\n")
    old = os.umask(0)
    try:
        assert write_private(path, "tq-secret\n", replace=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "tq-secret\n"
