"""What deploy/*.Dockerfile copy and run, and what .dockerignore sends to the daemon. No tool reads a Dockerfile
without a Docker daemon, so the instructions are read here; the build context is the one Docker's Python client
(docker-py) computes from .dockerignore."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.support.deploy import (
    app_dockerfiles,
    build_context_files,
    copy_sources,
    dockerfile_of,
    instructions,
    mounts_of,
)
from tests.support.servers import REPO

APP_SERVICES = ("api", "worker", "serve")
DOCKERFILES = sorted((REPO / "deploy").glob("*.Dockerfile"))
IDS = [path.name for path in DOCKERFILES]


def test_compose_builds_every_dockerfile_here() -> None:
    assert app_dockerfiles() == DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_copy_sources_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    sources = copy_sources(dockerfile)
    assert sources, f"{dockerfile.name} copies nothing"
    sent = build_context_files(REPO)
    for source in sources:
        relpath = source.removeprefix("./").rstrip("/") or "."
        path = REPO / relpath
        assert path.exists(), f"{dockerfile.name}: COPY source {source} is not in the repository"
        assert relpath in sent, f"{dockerfile.name}: {source} is excluded by .dockerignore"
        if path.is_dir():
            for file in path.rglob("*.py"):
                if "__pycache__" not in file.parts:
                    rel = file.relative_to(REPO).as_posix()
                    assert rel in sent, f"{rel} is excluded by .dockerignore"


def test_dockerignore_keeps_heavy_and_secret_paths_out(tmp_path: Path) -> None:
    kept_out = [".venv/bin/python", "var/artifacts/x", ".git/HEAD", ".env", "common/__pycache__/x.pyc",
                "tests/test_x.py", ".mypy_cache/x", ".import_linter_cache/x"]
    sent_in = ["pyproject.toml", "README.md", "common/settings.py", "alembic.ini", "migrations/env.py",
               "scripts/prestart.sh", "worker/serve/__main__.py"]
    for relpath in kept_out + sent_in:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_text("x")
    (tmp_path / ".dockerignore").write_text((REPO / ".dockerignore").read_text())

    sent = build_context_files(tmp_path)

    assert not [p for p in kept_out if p in sent], "sent to the Docker daemon"
    assert [p for p in sent_in if p not in sent] == [], "excluded from the build context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_torch_is_installed_before_the_project(dockerfile: Path) -> None:
    runs = [args for keyword, args in instructions(dockerfile) if keyword == "RUN"]
    torch_at = [i for i, args in enumerate(runs) if re.search(r"pip install[^&]*torch==", args)]
    project_at = [
        i for i, args in enumerate(runs) if re.search(r"pip install[^&]*\s[\"']?\.(\[[\w,]+\])?[\"']?", args)
    ]
    assert torch_at and project_at, f"{dockerfile.name}: no torch install or no project install"
    assert torch_at[0] < project_at[0], "the project's torch requirement would pull a default wheel first"

    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))
    for args in runs:
        for group in re.findall(r"\.\[([\w,]+)\]", args):
            assert set(group.split(",")) <= extras, f"{dockerfile.name}: unknown extra in {args}"


def test_api_image_gets_cpu_torch_and_worker_image_cuda_torch() -> None:
    api, worker = dockerfile_of("api"), dockerfile_of("worker")
    assert api is not None and worker is not None and api != worker
    api_text, worker_text = api.read_text(), worker.read_text()
    assert re.search(r"TORCH_INDEX_URL=\S*/whl/cpu\b", api_text)
    assert re.search(r"TORCH_INDEX_URL=\S*/whl/cu\d+", worker_text)
    assert re.search(r"^FROM\s+\S*nvidia/cuda|^ARG\s+CUDA_IMAGE=nvidia/cuda:", worker_text, re.M)
    extras = re.search(r"pip install[^\n]*\.\[([a-z,]+)\]", worker_text)
    assert extras and {"gpu", "trackers"} <= set(extras.group(1).split(",")), \
        "QLoRA needs bitsandbytes (.[gpu]) and integrations their trackers (.[trackers])"
    assert dockerfile_of("serve") == worker


def test_images_run_as_one_non_root_user_owning_the_volume_paths() -> None:
    users = {}
    for name in APP_SERVICES:
        dockerfile = dockerfile_of(name)
        assert dockerfile is not None
        user_lines = [args for keyword, args in instructions(dockerfile) if keyword == "USER"]
        assert user_lines, f"{dockerfile.name} runs as root"
        user = user_lines[-1]
        assert user.split(":")[0] not in ("root", "0"), f"{dockerfile.name} runs as root"
        users[name] = user
        # The mount points exist in the image, owned by that user: a fresh named volume inherits the owner.
        text = dockerfile.read_text()
        for _, target in mounts_of(name):
            assert target in text, f"{dockerfile.name} does not create {target} for its non-root user"
    assert len(set(users.values())) == 1, f"images share volumes but run as different users: {users}"
