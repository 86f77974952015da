"""The deployment files as the real tools read them: docker-compose.yml through `docker compose config` (or
Debian's `docker-compose config`), deploy/*.Dockerfile instructions, the build context that .dockerignore
leaves (docker-py's matcher, the one Docker's Python client builds contexts with), and deploy/nginx.conf run by the
real nginx in front of a given upstream.

A tool that is missing fails the test that needs it, saying how to install it; .ci/run installs them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.servers import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
NGINX_CONF = REPO / "deploy" / "nginx.conf"
# Profiles to enable so that `config` shows every service: `vllm` (the vLLM server serve can forward to).
PROFILES: tuple[str, ...] = ("vllm",)
# The variables docker-compose.yml requires (`${VAR:?…}`: secrets with no safe default), as an operator sets them.
REQUIRED_VARIABLES = {"TUNEQUEUE_SERVE_TOKEN": "compose-config-serve-token-0123456789abcdef",
                      "POSTGRES_PASSWORD": "compose-config-db-password-0123456789",
                      "MINIO_ROOT_PASSWORD": "compose-config-minio-password-0123456789"}


def require_tool(name: str, package: str) -> str:
    """The path of `name`; the test fails (not skips) where it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")  # nginx lies in sbin
    if path is None:
        pytest.fail(f"`{name}` is not installed: `make deploy-tools` (apt-get install {package}; .ci/run does it)")
    return path


# --- docker compose --------------------------------------------------------------------------------------


@cache
def compose_command() -> tuple[list[str], bool]:
    """(argv prefix, whether it reads the top-level `name`): the docker CLI's Compose v2 where there is one,
    else Debian's docker-compose 1.29, which predates the top-level `name` key."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"], True
    legacy = require_tool("docker-compose", "docker-compose")
    version = subprocess.run([legacy, "version", "--short"], capture_output=True, text=True).stdout.strip()
    return [legacy], not version.startswith("1.")


def without_name(file: Path) -> Path:
    """A copy of a compose file without its top-level `name` (for compose 1.x), or the file if it has none."""
    text = file.read_text()
    if not re.search(r"^name:", text, re.M):
        return file
    copy = Path(tempfile.mkdtemp(prefix="tunequeue-compose-")) / file.name
    copy.write_text(re.sub(r"^name:.*\n", "", text, flags=re.M))
    return copy


@dataclass(frozen=True)
class ComposeRun:
    returncode: int
    stdout: str
    stderr: str

    def config(self) -> dict[str, Any]:
        assert self.returncode == 0, f"compose rejects the file:\n{self.stderr}"
        doc: dict[str, Any] = yaml.safe_load(self.stdout)
        return doc


def run_compose_config(*files: Path, required: dict[str, str] | None = None,
                       profiles: tuple[str, ...] = PROFILES, project_directory: Path = REPO) -> ComposeRun:
    """`compose -f FILE... config` in the repository, with no variables but PATH/HOME and the `required` ones
    (default REQUIRED_VARIABLES) set: what a host with no .env file gets once the secrets are given; `profiles`
    enabled (default: every profile); relative paths from `project_directory` (the first file's folder, as when
    compose is run on it alone). Compose 1.x is given the files without their top-level `name`."""
    argv, reads_name = compose_command()
    paths = [file if reads_name else without_name(file) for file in files]
    base_env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    base_env.update(REQUIRED_VARIABLES if required is None else required)
    command = [*argv, *(arg for f in paths for arg in ("-f", str(f))), "--project-directory", str(project_directory)]
    command += [arg for profile in profiles for arg in ("--profile", profile)]
    done = subprocess.run([*command, "config"], cwd=REPO, env=base_env, capture_output=True,
                          text=True, timeout=60)
    return ComposeRun(done.returncode, done.stdout, done.stderr)


@cache
def compose_run() -> ComposeRun:
    return run_compose_config(COMPOSE_FILE)


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as compose resolves it: variables substituted, anchors merged, long syntax."""
    return compose_run().config()


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def service(name: str) -> dict[str, Any]:
    assert name in services(), f"docker-compose.yml has no service {name!r}"
    return services()[name]


def env_of(name: str, doc: dict[str, Any] | None = None) -> dict[str, str]:
    spec = (doc or compose())["services"][name]
    return {key: "" if value is None else str(value) for key, value in (spec.get("environment") or {}).items()}


def mounts_of(name: str, doc: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(source, target) of each mount: compose 2 prints them as mappings, compose 1 as `source:target:mode`."""
    result = []
    for entry in (doc or compose())["services"][name].get("volumes") or []:
        if isinstance(entry, dict):
            result.append((str(entry.get("source", "")), str(entry["target"])))
        else:
            source, target = entry.split(":")[:2]
            result.append((source, target))
    return result


def depends_on(name: str) -> dict[str, dict[str, Any]]:
    deps: dict[str, dict[str, Any]] = service(name).get("depends_on") or {}
    return deps


def gpu_devices(name: str, doc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    deploy = (doc or compose())["services"][name].get("deploy") or {}
    devices: list[dict[str, Any]] = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    return devices


def duration_seconds(value: str) -> float:
    """A compose duration as printed by either version: `2m`, `2m0s`, `1h30m`, `500ms`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"not a compose duration: {value!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(number) * scale[unit] for number, unit in parts)


# --- Dockerfiles (no tool reads them without a Docker daemon) ----------------------------------------------


def build_context_of(name: str) -> Path:
    return Path(service(name)["build"]["context"])


def dockerfile_of(name: str) -> Path | None:
    build = service(name).get("build")
    if build is None:
        return None
    return build_context_of(name) / build.get("dockerfile", "Dockerfile")


def app_dockerfiles() -> list[Path]:
    return sorted({path for name in services() if (path := dockerfile_of(name)) is not None})


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, f"{dockerfile}: dangling line continuation"
    return result


def exec_form(args: str) -> list[str]:
    if args.startswith("["):
        words: list[str] = json.loads(args)
        return words
    return shlex.split(args)


def image_cmd(dockerfile: Path) -> list[str]:
    cmds = [args for keyword, args in instructions(dockerfile) if keyword == "CMD"]
    assert cmds, f"{dockerfile.name} has no CMD"
    return exec_form(cmds[-1])


def effective_command(name: str) -> list[str]:
    """The service's `command`, else its image's CMD."""
    command = service(name).get("command")
    if command is not None:
        return list(command) if isinstance(command, list) else shlex.split(command)
    dockerfile = dockerfile_of(name)
    assert dockerfile is not None, f"{name}: no command and no image built here"
    return image_cmd(dockerfile)


def copy_sources(dockerfile: Path) -> list[str]:
    """Sources of every COPY/ADD that reads the build context (COPY --from=... reads another stage)."""
    sources: list[str] = []
    for keyword, args in instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        words = exec_form(args)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        assert len(paths) >= 2, f"{dockerfile.name}: {keyword} {args} has no destination"
        sources.extend(paths[:-1])
    return sources


# --- .dockerignore -----------------------------------------------------------------------------------------


def dockerignore_patterns(context: Path) -> list[str]:
    """The patterns as Docker's Python client reads the file: stripped lines, no blanks, no comments."""
    ignore_file = context / ".dockerignore"
    if not ignore_file.is_file():
        return []
    lines = [line.strip() for line in ignore_file.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def build_context_files(context: Path) -> set[str]:
    """Every path (relative, with `/`) that `docker build` would send from `context`."""
    from docker.utils.build import exclude_paths

    return set(exclude_paths(str(context), dockerignore_patterns(context)))


# --- nginx ---------------------------------------------------------------------------------------------------

# deploy/nginx.conf's commented sub-path example starts after this line; `nginx_conf(..., sub_path=True)` enables it.
SUB_PATH_EXAMPLE = "# Under a sub-path"
SUB_PATH = "/tuneq"


def with_sub_path_example(text: str) -> str:
    """The server block with its commented sub-path example (the `location` blocks after SUB_PATH_EXAMPLE)
    uncommented, as an operator would."""
    head, marker, tail = text.partition(SUB_PATH_EXAMPLE)
    assert marker, f"deploy/nginx.conf has no {SUB_PATH_EXAMPLE!r} example"
    uncommented = re.sub(r"^(\s*)# ((?:location |    |\}).*)$", r"\1\2", tail, flags=re.M)
    assert uncommented != tail and f"location {SUB_PATH}/ {{" in uncommented, "the sub-path example changed shape"
    return head + marker + uncommented


def nginx_conf(conf_dir: Path, listen: int, upstream: int, *, sub_path: bool = False) -> Path:
    """A main nginx.conf for an unprivileged run in `conf_dir`, whose http{} includes the project's server block
    with its upstream moved to `upstream` and its listener to `listen` (and its sub-path example enabled when
    asked). gzip is on in http{}, as in Debian's default nginx.conf, so that the block must turn it off where it
    streams."""
    text = NGINX_CONF.read_text()
    api_port = effective_command("api")[effective_command("api").index("--port") + 1]
    assert f"server api:{api_port};" in text, "deploy/nginx.conf no longer proxies to the compose `api` service"
    assert "listen 80;" in text
    text = text.replace(f"server api:{api_port};", f"server 127.0.0.1:{upstream};")
    if sub_path:
        text = with_sub_path_example(text)
    (conf_dir / "default.conf").write_text(text.replace("listen 80;", f"listen 127.0.0.1:{listen};"))
    temp_paths = "".join(f"{kind}_temp_path {conf_dir}/{kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = conf_dir / "nginx.conf"
    main.write_text(
        f"daemon off;\nmaster_process off;\nerror_log {conf_dir}/error.log;\npid {conf_dir}/nginx.pid;\n"
        f"events {{}}\nhttp {{\naccess_log off;\ngzip on;\ngzip_types text/event-stream application/json;\n"
        f"{temp_paths}include {conf_dir}/default.conf;\n}}\n")
    return main


@contextlib.contextmanager
def running_nginx(conf_dir: Path, upstream: int, *, sub_path: bool = False) -> Iterator[int]:
    """The real nginx with the project's server block in front of 127.0.0.1:`upstream`; yields its port."""
    from tests.support.servers import free_port
    from tests.support.waiting import wait_until

    nginx = require_tool("nginx", "nginx")
    port = free_port()
    conf = nginx_conf(conf_dir, port, upstream, sub_path=sub_path)
    proc = subprocess.Popen([nginx, "-p", f"{conf_dir}/", "-c", str(conf), "-e", str(conf_dir / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _listening(port), 10, "nginx to listen", tolerate=(OSError,))
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _listening(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True
