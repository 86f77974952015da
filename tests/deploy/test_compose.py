"""Static checks of docker-compose.yml, deploy/*.Dockerfile, .dockerignore and deploy/nginx.conf.

Docker does not run where the tests run, so these read the files and check the properties whose breakage would
otherwise show only on a GPU host at deploy time: wiring between services, volumes, GPU reservations, what the
images copy and run, and what the proxy does with streams and uploads.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
DEPLOY_README = ROOT / "deploy" / "README.md"

APP_SERVICES = ("api", "worker", "serve")
GPU_SERVICES = ("worker", "serve")
# What each process's command must start (docs/architecture.md, "Processes").
ENTRY_POINTS = {
    "migrate": "scripts/prestart.sh",
    "api": "api.main",
    "worker": "worker.celery_app",
    "serve": "worker.serve",
}
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
# Files the images COPY that docs/architecture.md names but other work has not landed yet. While one is missing its check
# is skipped with this reason; once it exists the check is a real one.
PENDING_FILES = {
    "README.md": "the root README.md (pyproject's readme) is not written yet",
    "alembic.ini": "alembic.ini is not written yet",
}


# --- compose loading and interpolation ------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: dict[str, str], unset: set[str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR:+alt}`, `$$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        if value is None or (op == ":?" and not value):
            unset.add(name)
            return ""
        return value

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node: Any, env: dict[str, str], unset: set[str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, unset)
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env, unset) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(value, env, unset) for value in node]
    return node


@cache
def _load_compose() -> tuple[dict[str, Any], frozenset[str]]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    unset: set[str] = set()
    # An empty environment: the file must work on a host with no .env at all.
    doc = _interpolate_tree(raw, {}, unset)
    return doc, frozenset(unset)


def compose() -> dict[str, Any]:
    return _load_compose()[0]


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def service(name: str) -> dict[str, Any]:
    assert name in services(), f"docker-compose.yml has no service {name!r}"
    return services()[name]


def env_of(name: str) -> dict[str, str]:
    environment = service(name).get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {key: value for key, value in pairs}
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def mounts_of(name: str) -> list[tuple[str, str]]:
    """(source, target) for each entry of the service's `volumes` (short or long syntax)."""
    result = []
    for entry in service(name).get("volumes") or []:
        if isinstance(entry, dict):
            result.append((str(entry.get("source", "")), str(entry["target"])))
        else:
            parts = entry.split(":")
            result.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return result


def depends_on(name: str) -> dict[str, dict[str, Any]]:
    deps = service(name).get("depends_on") or {}
    if isinstance(deps, list):  # short syntax means service_started
        return {dep: {"condition": "service_started"} for dep in deps}
    return deps


def gpu_devices(name: str) -> list[dict[str, Any]]:
    deploy = service(name).get("deploy") or {}
    return ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []


def duration_seconds(value: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"not a compose duration: {value!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(number) * scale[unit] for number, unit in parts)


# --- Dockerfiles ----------------------------------------------------------------------------------


def dockerfile_of(name: str) -> Path | None:
    build = service(name).get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def build_context_of(name: str) -> Path:
    build = service(name)["build"]
    return ROOT / (build if isinstance(build, str) else build.get("context", "."))


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
        return json.loads(args)
    return shlex.split(args)


def image_cmd(dockerfile: Path) -> list[str]:
    cmds = [args for keyword, args in instructions(dockerfile) if keyword == "CMD"]
    assert cmds, f"{dockerfile.name} has no CMD"
    return exec_form(cmds[-1])


def effective_command(name: str) -> list[str]:
    command = service(name).get("command")
    if command is not None:
        return command if isinstance(command, list) else shlex.split(command)
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
        flags = [w for w in words if w.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) >= 2, f"{dockerfile.name}: {keyword} {args} has no destination"
        sources.extend(paths[:-1])
    return sources


def app_dockerfiles() -> list[Path]:
    return sorted({dockerfile_of(name) for name in services() if dockerfile_of(name) is not None})


def _dockerfile_ids() -> list[str]:
    return [path.name for path in app_dockerfiles()]


# --- .dockerignore --------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@cache
def _ignore_rules(context: Path) -> tuple[tuple[bool, re.Pattern[str]], ...]:
    ignore_file = context / ".dockerignore"
    if not ignore_file.exists():
        return ()
    rules = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        pattern = re.sub(r"^\./", "", pattern)
        rules.append((negated, _glob_regex(pattern)))
    return tuple(rules)


def ignored_by(rules: tuple[tuple[bool, re.Pattern[str]], ...], relpath: str) -> bool:
    """Docker's rule: the last matching pattern wins; a path is excluded when it or a parent matches."""
    parts = Path(relpath).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def is_ignored(context: Path, relpath: str) -> bool:
    return ignored_by(_ignore_rules(context), relpath)


# --- nginx ----------------------------------------------------------------------------------------


def _nginx_text() -> str:
    return re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())


def _blocks(text: str, header: str) -> list[tuple[str, str]]:
    """(header arguments, body) of each `header args { body }` at any depth; bodies may nest braces."""
    found = []
    for match in re.finditer(rf"(?:^|[\s;{{}}]){header}\s+([^{{;]*?)\s*\{{", text):
        depth, start = 1, match.end()
        position = start
        while depth:
            char = text[position]
            depth += {"{": 1, "}": -1}.get(char, 0)
            position += 1
        found.append((match.group(1).strip(), text[start : position - 1]))
    return found


def _directives(body: str) -> dict[str, list[str]]:
    """Directives at the top level of a block body (nested blocks removed)."""
    flat, depth = [], 0
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            continue
        if depth == 0:
            flat.append(char)
    result: dict[str, list[str]] = {}
    for statement in "".join(flat).split(";"):
        words = statement.split(None, 1)
        if words:
            result.setdefault(words[0], []).append(words[1].strip() if len(words) > 1 else "")
    return result


def nginx_server() -> dict[str, list[str]]:
    servers = _blocks(_nginx_text(), "server")
    assert len(servers) == 1, "deploy/nginx.conf should hold one server block"
    return _directives(servers[0][1])


def nginx_locations() -> dict[str, dict[str, list[str]]]:
    server_body = _blocks(_nginx_text(), "server")[0][1]
    return {args: _directives(body) for args, body in _blocks(server_body, "location")}


def nginx_location_for(uri: str) -> tuple[str, dict[str, list[str]]]:
    """The location nginx picks for `uri`: exact match first, else the longest prefix (no regex locations)."""
    locations = nginx_locations()
    assert not [args for args in locations if args.startswith("~")], "regex locations: extend this helper"
    for args, directives in locations.items():
        if args.startswith("=") and args[1:].strip() == uri:
            return args, directives
    prefixes = [args.removeprefix("^~").strip() for args in locations if not args.startswith("=")]
    matching = [prefix for prefix in prefixes if uri.startswith(prefix)]
    assert matching, f"no nginx location matches {uri}"
    best = max(matching, key=len)
    for args, directives in locations.items():
        if args.removeprefix("^~").strip() == best:
            return args, directives
    raise AssertionError("unreachable")


def nginx_size_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, f"not an nginx size: {value!r}"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


def nginx_seconds(value: str) -> float:
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|M|y)?", value)
    scale = {"": 1, "s": 1, "ms": 1e-3, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    return sum(int(number) * scale[unit] for number, unit in parts)


def settings_default(field: str) -> Any:
    from common.settings import Settings

    return Settings.model_fields[field].default


# ==================================================================================================
# docker-compose.yml
# ==================================================================================================


def test_compose_defines_the_whole_stack() -> None:
    assert {"postgres", "redis", "migrate", "api", "worker", "serve"} <= set(services())
    assert service("postgres")["image"].split(":")[0] == "postgres"
    assert service("redis")["image"].split(":")[0] == "redis"


def test_compose_needs_no_variables_set() -> None:
    # Every ${VAR} has a default: `docker compose up` works on a host with no .env file.
    _, unset = _load_compose()
    assert not unset, f"variables without a default: {sorted(unset)}"


@pytest.mark.parametrize("name", [n for n, s in services().items() if "build" in s])
def test_build_dockerfile_exists(name: str) -> None:
    context = build_context_of(name)
    dockerfile = dockerfile_of(name)
    assert context.is_dir(), f"{name}: build context {context} missing"
    assert dockerfile is not None and dockerfile.is_file(), f"{name}: {dockerfile} missing"


@pytest.mark.parametrize("name", [n for n, s in services().items() if "build" in s])
def test_services_sharing_an_image_name_build_it_the_same_way(name: str) -> None:
    # Two services tagging one image from different Dockerfiles would overwrite each other's image.
    image = service(name).get("image")
    same = [other for other, spec in services().items() if image and spec.get("image") == image]
    assert {str(dockerfile_of(other)) for other in same} == {str(dockerfile_of(name))}


@pytest.mark.parametrize("name", ["migrate", *APP_SERVICES])
def test_database_url_points_at_the_compose_postgres(name: str) -> None:
    url = urlsplit(env_of(name)["TUNEQUEUE_DATABASE_URL"])
    assert url.scheme == "postgresql+psycopg"
    assert url.hostname in services(), f"{url.hostname!r} is not a compose service"
    assert service(url.hostname)["image"].startswith("postgres")
    assert (url.port or 5432) == 5432
    postgres_env = env_of(url.hostname)
    assert url.username == postgres_env["POSTGRES_USER"]
    assert url.password == postgres_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == postgres_env.get("POSTGRES_DB", postgres_env["POSTGRES_USER"])


@pytest.mark.parametrize("name", ["migrate", *APP_SERVICES])
def test_redis_url_points_at_the_compose_redis(name: str) -> None:
    url = urlsplit(env_of(name)["TUNEQUEUE_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname in services(), f"{url.hostname!r} is not a compose service"
    assert service(url.hostname)["image"].startswith("redis")
    assert (url.port or 6379) == 6379


@pytest.mark.parametrize("name", ["migrate", *APP_SERVICES])
def test_settings_accept_the_compose_environment(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from common.settings import DEV_DATABASE_URL, Settings

    env = env_of(name)
    for key in [k for k in os.environ if k.startswith("TUNEQUEUE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env

    settings = Settings(_env_file=None)

    assert settings.environment == "production"
    assert settings.database_url == env["TUNEQUEUE_DATABASE_URL"] != DEV_DATABASE_URL
    assert settings.redis_url == env["TUNEQUEUE_REDIS_URL"]
    assert settings.base_models, "no base model registered"
    if name in APP_SERVICES:
        # Local base models must live on a volume the process mounts, or nothing can load them.
        targets = [target for _, target in mounts_of(name)]
        for model_id, entry in settings.base_models.items():
            if entry.path.startswith("/"):
                assert any(entry.path.startswith(t.rstrip("/") + "/") for t in targets), (
                    f"{name}: base model {model_id} at {entry.path} is on no mounted volume"
                )


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_gpu_services_reserve_an_nvidia_gpu(name: str) -> None:
    devices = gpu_devices(name)
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    assert nvidia, f"{name} reserves no nvidia GPU: {devices}"
    for device in nvidia:
        has_count, has_ids = "count" in device, "device_ids" in device
        assert has_count != has_ids, f"{name}: give exactly one of count / device_ids: {device}"
        if has_ids:
            assert device["device_ids"] and all(str(i).strip() for i in device["device_ids"])
        else:
            assert device["count"] == "all" or int(device["count"]) >= 1


def test_api_needs_no_gpu() -> None:
    assert not gpu_devices("api")
    assert not gpu_devices("migrate")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_migrations_and_redis(name: str) -> None:
    deps = depends_on(name)
    assert deps.get("migrate", {}).get("condition") == "service_completed_successfully"
    assert deps.get("redis", {}).get("condition") == "service_healthy"


def test_migrate_waits_for_postgres_and_runs_once() -> None:
    assert depends_on("migrate").get("postgres", {}).get("condition") == "service_healthy"
    # A restart policy that restarts on success would re-run migrations forever.
    assert service("migrate").get("restart", "no") in ("no", "on-failure")
    assert "deploy" not in service("migrate") or "restart_policy" not in service("migrate")["deploy"]


@pytest.mark.parametrize("name", list(services()))
def test_healthy_conditions_have_healthchecks(name: str) -> None:
    for dep, spec in depends_on(name).items():
        assert dep in services(), f"{name} depends on unknown service {dep}"
        if spec.get("condition") == "service_healthy":
            check = service(dep).get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), f"{dep} has no healthcheck"


def test_postgres_and_redis_healthchecks_probe_the_server() -> None:
    assert "pg_isready" in " ".join(service("postgres")["healthcheck"]["test"])
    assert service("redis")["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert any(target == "/var/lib/postgresql/data" for _, target in mounts_of("postgres"))


def test_artifact_store_is_one_volume_at_the_configured_path() -> None:
    sources = set()
    for name in APP_SERVICES:
        artifacts = env_of(name)["TUNEQUEUE_ARTIFACTS"]
        matching = [source for source, target in mounts_of(name) if target == artifacts]
        assert len(matching) == 1, f"{name}: nothing mounted at TUNEQUEUE_ARTIFACTS={artifacts}"
        sources.add(matching[0])
    assert len(sources) == 1, f"api, worker and serve mount different artifact stores: {sources}"
    (source,) = sources
    assert source in (compose().get("volumes") or {}), f"{source!r} is not a declared named volume"
    assert len({env_of(name)["TUNEQUEUE_ARTIFACTS"] for name in APP_SERVICES}) == 1


def test_named_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(compose().get("volumes") or {})
    for name in services():
        for source, target in mounts_of(name):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists() or source.startswith("/"), f"{name}: {source} missing"
            elif source:
                assert source in declared, f"{name}: volume {source!r} (at {target}) is not declared"


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_commands_start_modules_that_exist(name: str) -> None:
    argv = effective_command(name)
    refs: list[tuple[str, str]] = []
    for i, arg in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in ("-A", "--app"):
            refs.append(("module", following))
        elif arg.startswith("--app="):
            refs.append(("module", arg.split("=", 1)[1]))
        elif arg == "-m":
            refs.append(("main", following))
        elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", arg):
            refs.append(("module", arg.split(":")[0]))
        elif arg.endswith((".sh", ".py")) and not arg.startswith("-"):
            refs.append(("file", arg))
    assert ENTRY_POINTS[name] in [ref for _, ref in refs], f"{name} runs {argv}"

    missing = []
    for kind, ref in refs:
        if kind == "file":
            candidates = [ref]
        else:
            base = ref.replace(".", "/")
            last = "__main__.py" if kind == "main" else "__init__.py"
            candidates = [f"{base}.py", f"{base}/{last}"]
        if not any((ROOT / c).is_file() for c in candidates):
            missing.append(f"{ref} ({' or '.join(candidates)})")
    if missing:
        pytest.skip(f"{name}: not in the repository yet: {', '.join(missing)}")


def test_worker_runs_one_job_at_a_time_on_the_configured_queue() -> None:
    argv = effective_command("worker")
    assert argv[:1] == ["celery"] and "worker" in argv
    concurrency = argv[argv.index("--concurrency") + 1] if "--concurrency" in argv else None
    assert concurrency == "1", argv
    queue_flag = "-Q" if "-Q" in argv else "--queues"
    assert argv[argv.index(queue_flag) + 1] == settings_default("celery_queue")


def test_worker_gets_time_to_checkpoint_on_stop() -> None:
    assert duration_seconds(service("worker").get("stop_grace_period", "10s")) >= 60


def test_api_port_healthcheck_and_command_agree() -> None:
    argv = effective_command("api")
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert "--proxy-headers" in argv
    published = [str(p).rsplit(":", 1)[-1] for p in service("api").get("ports", [])]
    assert port in published, f"api listens on {port}, compose publishes {published}"
    probe = " ".join(service("api")["healthcheck"]["test"])
    assert f":{port}/healthz" in probe


def test_api_reaches_serve_on_its_port() -> None:
    # `python -m worker.serve` binds serve_host:serve_port (common.settings), not the API's host/port.
    serve_port = env_of("serve")["TUNEQUEUE_SERVE_PORT"]
    assert env_of("serve").get("TUNEQUEUE_SERVE_HOST") == "0.0.0.0"
    exposed = [str(p).split("/")[0] for p in service("serve").get("expose", [])]
    exposed += [str(p).rsplit(":", 1)[-1] for p in service("serve").get("ports", [])]
    assert serve_port in exposed
    url = urlsplit(env_of("api")["TUNEQUEUE_SERVE_URL"])
    assert (url.hostname, str(url.port)) == ("serve", serve_port)


# ==================================================================================================
# Dockerfiles and .dockerignore
# ==================================================================================================


@pytest.mark.parametrize("dockerfile", app_dockerfiles(), ids=_dockerfile_ids())
def test_copy_sources_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    sources = copy_sources(dockerfile)
    assert sources, f"{dockerfile.name} copies nothing"
    pending = []
    for source in sources:
        relpath = source.removeprefix("./").rstrip("/") or "."
        path = ROOT / relpath
        if not path.exists():
            if relpath in PENDING_FILES:
                pending.append(PENDING_FILES[relpath])
                continue
            pytest.fail(f"{dockerfile.name}: COPY source {source} is not in the repository")
        assert not is_ignored(ROOT, relpath), f"{dockerfile.name}: {source} is excluded by .dockerignore"
        if path.is_dir():
            for file in path.rglob("*.py"):
                if "__pycache__" in file.parts:
                    continue
                rel = file.relative_to(ROOT).as_posix()
                assert not is_ignored(ROOT, rel), f"{rel} is excluded by .dockerignore"
    if pending:
        pytest.skip("; ".join(pending))


def test_dockerignore_keeps_heavy_and_secret_paths_out() -> None:
    for path in (".venv/bin/python", "var/artifacts/x", ".git/HEAD", ".env", "common/__pycache__/x.pyc"):
        assert is_ignored(ROOT, path), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "README.md", "common/settings.py", "alembic.ini", "migrations/env.py"):
        assert not is_ignored(ROOT, path), f"{path} is excluded from the build context"


def test_dockerignore_matcher_follows_docker_rules() -> None:
    # The matcher above decides the previous tests; make sure it can say no and yes.
    rules = (
        (False, _glob_regex("**/*.pyc")),
        (False, _glob_regex("*.md")),
        (False, _glob_regex("docs")),
        (True, _glob_regex("docs/keep.md")),
    )
    assert ignored_by(rules, "a/b/c.pyc") and ignored_by(rules, "c.pyc")
    assert ignored_by(rules, "README.md") and not ignored_by(rules, "sub/README.md")  # `*` stops at `/`
    assert ignored_by(rules, "docs/guide.txt")
    assert not ignored_by(rules, "docs/keep.md")
    assert not ignored_by(rules, "documents/x.txt")


@pytest.mark.parametrize("dockerfile", app_dockerfiles(), ids=_dockerfile_ids())
def test_torch_is_installed_before_the_project(dockerfile: Path) -> None:
    runs = [args for keyword, args in instructions(dockerfile) if keyword == "RUN"]
    torch_at = [i for i, args in enumerate(runs) if re.search(r"pip install[^&]*torch==", args)]
    project_at = [
        i for i, args in enumerate(runs) if re.search(r"pip install[^&]*\s[\"']?\.(\[[\w,]+\])?[\"']?", args)
    ]
    assert torch_at and project_at, f"{dockerfile.name}: no torch install or no project install"
    assert torch_at[0] < project_at[0], "the project's torch requirement would pull a default wheel first"

    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    )
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
    assert re.search(r"pip install[^\n]*\.\[gpu\]", worker_text), "QLoRA needs bitsandbytes: install .[gpu]"
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


# ==================================================================================================
# nginx
# ==================================================================================================


def test_nginx_proxies_everything_to_the_api_service() -> None:
    text = _nginx_text()
    upstreams = {name: _directives(body).get("server", []) for name, body in _blocks(text, "upstream")}
    api_port = effective_command("api")[effective_command("api").index("--port") + 1]
    locations = nginx_locations()
    assert "/" in locations, "requests outside the special locations would get nginx's default page"
    for args, directives in locations.items():
        (target,) = directives.get("proxy_pass", [None])
        assert target is not None, f"location {args} proxies nowhere"
        host = urlsplit(target).netloc
        servers = [s.split()[0] for s in upstreams.get(host, [host])]
        for server in servers:
            server_host, _, server_port = server.partition(":")
            assert server_host in services() and server_port == api_port, f"location {args} -> {server}"
            assert server_host == "api"


@pytest.mark.parametrize("uri", ["/jobs/ftjob-abc/events", "/v1/chat/completions", "/v1/completions"])
def test_nginx_streams_server_sent_events_unbuffered(uri: str) -> None:
    args, directives = nginx_location_for(uri)
    assert directives.get("proxy_buffering") == ["off"], f"location {args} buffers {uri}"
    assert directives.get("gzip", ["off"]) == ["off"]


def test_nginx_keeps_upstream_connections_and_forwards_client_headers() -> None:
    server = nginx_server()
    assert server.get("proxy_http_version") == ["1.1"]
    assert 'Connection ""' in server.get("proxy_set_header", [])
    forwarded = " ".join(server.get("proxy_set_header", []))
    assert "X-Forwarded-For" in forwarded and "X-Forwarded-Proto" in forwarded


def test_nginx_accepts_the_largest_upload_the_api_accepts() -> None:
    (limit,) = nginx_server()["client_max_body_size"]
    assert nginx_size_bytes(limit) >= settings_default("max_upload_bytes")
    for uri in ("/files", "/v1/files"):
        _, directives = nginx_location_for(uri)
        assert "client_max_body_size" not in directives or nginx_size_bytes(
            directives["client_max_body_size"][0]
        ) >= settings_default("max_upload_bytes")


def test_nginx_keeps_long_requests_and_streams_open() -> None:
    (server_timeout,) = nginx_server()["proxy_read_timeout"]
    assert nginx_seconds(server_timeout) >= 300
    _, events = nginx_location_for("/jobs/ftjob-abc/events")
    assert nginx_seconds(events.get("proxy_read_timeout", [server_timeout])[0]) >= 3600


def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed here")
    # `api` resolves only inside the compose network; the syntax check needs a resolvable host.
    (tmp_path / "default.conf").write_text(NGINX_CONF.read_text().replace("server api:", "server 127.0.0.1:"))
    (tmp_path / "nginx.conf").write_text(
        f"error_log {tmp_path}/error.log;\npid {tmp_path}/nginx.pid;\nevents {{}}\n"
        f"http {{ include {tmp_path}/default.conf; }}\n"
    )
    done = subprocess.run(
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", f"{tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_compose_nginx_mounts_this_config() -> None:
    mounts = mounts_of("nginx")
    assert ("./deploy/nginx.conf", "/etc/nginx/conf.d/default.conf") in mounts
    assert depends_on("nginx").get("api", {}).get("condition") == "service_healthy"


# ==================================================================================================
# deploy/README.md
# ==================================================================================================


def test_readme_compose_examples_parse_and_reserve_gpus_correctly() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY_README.read_text(), re.S)
    assert blocks, "deploy/README.md has no compose examples"
    for block in blocks:
        doc = yaml.safe_load(block)
        for name, spec in (doc.get("services") or {}).items():
            devices = (((spec.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get(
                "devices"
            ) or []
            for device in devices:
                assert device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", []), name
                assert ("count" in device) != ("device_ids" in device), name
            for dep, cond in (spec.get("depends_on") or {}).items():
                assert dep in services(), f"README example {name} depends on unknown {dep}"
                assert cond["condition"] in CONDITIONS
