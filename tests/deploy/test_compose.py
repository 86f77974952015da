"""docker-compose.yml as compose itself reads it (`docker compose config`, or Debian's `docker-compose config`:
syntax, schema, variable substitution, declared volumes, known services in depends_on), plus the wiring compose
cannot check: that the processes find each other, run modules that exist, wait for what they need and share one
artifact store; and that the compose examples in deploy/README.md merge onto it.

Docker does not run where the tests run: `config` needs no daemon."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.deploy import (
    COMPOSE_FILE,
    NGINX_CONF,
    REQUIRED_VARIABLES,
    build_context_of,
    compose,
    compose_run,
    depends_on,
    dockerfile_of,
    duration_seconds,
    effective_command,
    env_of,
    gpu_devices,
    mounts_of,
    run_compose_config,
    service,
    services,
)
from tests.support.servers import REPO

DEPLOY_README = REPO / "deploy" / "README.md"
# For parametrizing only (collection must not need compose): the service names as the file spells them.
IN_FILE: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
BUILT = [name for name, spec in IN_FILE.items() if "build" in spec]
APP_SERVICES = ("api", "worker", "validator", "serve")
GPU_SERVICES = ("worker", "serve")
# What each process's command must start (docs/architecture.md, "Processes").
ENTRY_POINTS = {
    "migrate": "scripts/prestart.sh",
    "api": "api.main",
    "worker": "worker.celery_app",
    "validator": "worker.celery_app",
    "serve": "worker.serve",
}


def settings_default(field: str) -> Any:
    from common.settings import Settings

    return Settings.model_fields[field].default


# --- what compose itself checks --------------------------------------------------------------------------


def test_compose_accepts_the_file_with_only_the_required_secrets_set() -> None:
    # Every other ${VAR} has a default: `docker compose up` works on a host with no .env file but the secrets.
    run = compose_run()
    assert run.returncode == 0, run.stderr
    assert "is not set" not in run.stderr, run.stderr


def without(name: str) -> dict[str, str]:
    """The required variables but one."""
    return {key: value for key, value in REQUIRED_VARIABLES.items() if key != name}


def test_compose_refuses_to_run_without_the_serve_token_and_says_how_to_set_it() -> None:
    # A stack without it would have an API that serve refuses (and both refuse to start in production).
    run = run_compose_config(COMPOSE_FILE, required=without("TUNEQUEUE_SERVE_TOKEN"))
    assert run.returncode != 0
    assert "TUNEQUEUE_SERVE_TOKEN" in run.stderr and "openssl rand -hex 32" in run.stderr, run.stderr


def test_api_and_serve_share_the_serve_token_and_no_other_service_gets_it() -> None:
    token = REQUIRED_VARIABLES["TUNEQUEUE_SERVE_TOKEN"]
    assert env_of("api")["TUNEQUEUE_SERVE_TOKEN"] == env_of("serve")["TUNEQUEUE_SERVE_TOKEN"] == token
    assert sorted(name for name in services() if "TUNEQUEUE_SERVE_TOKEN" in env_of(name)) == ["api", "serve"]


def test_serve_is_not_published_on_the_host() -> None:
    # Only the compose network reaches it (the API forwards to http://serve:8001).
    assert not service("serve").get("ports"), service("serve").get("ports")


def test_compose_refuses_to_run_without_a_database_password_and_says_how_to_set_it() -> None:
    # Its former default (`tunequeue`) was in every copy of this file: a password anyone could look up.
    run = run_compose_config(COMPOSE_FILE, required=without("POSTGRES_PASSWORD"))
    assert run.returncode != 0
    assert "POSTGRES_PASSWORD" in run.stderr and "openssl rand -hex 24" in run.stderr, run.stderr


def test_only_nginx_is_published_on_the_host() -> None:
    # Anything else published would be a way in around nginx's body limits (and, for the API, its trust in
    # X-Forwarded-For): the API is reached through nginx alone.
    published = {name: spec["ports"] for name, spec in services().items() if spec.get("ports")}
    assert list(published) == ["nginx"], published
    assert not service("nginx").get("profiles"), "nginx must run by default: nothing else is published"


def proxy_network(doc: dict[str, Any] | None = None) -> tuple[str, str]:
    """(the proxy network's name, nginx's fixed address on it): the one network nginx joins."""
    networks = (doc or compose())["services"]["nginx"].get("networks") or {}
    assert isinstance(networks, dict) and len(networks) == 1, f"nginx should join one network: {networks}"
    ((name, spec),) = networks.items()
    assert spec and spec.get("ipv4_address"), f"nginx has no fixed address on {name}: {spec}"
    return name, str(spec["ipv4_address"])


@pytest.mark.parametrize("proxy_net", [None, "10.99.7"])
def test_the_api_trusts_forwarded_headers_from_nginx_s_address_alone(proxy_net: str | None) -> None:
    # Before, FORWARDED_ALLOW_IPS was 127.0.0.1, which nginx (another container) never is: every client looked
    # like nginx. "*" would trust any container on any network the API joins. Now: nginx's fixed address, on a
    # network of its own subnet (TUNEQUEUE_PROXY_NET moves both together).
    doc = (compose() if proxy_net is None else
           run_compose_config(COMPOSE_FILE, required={**REQUIRED_VARIABLES, "TUNEQUEUE_PROXY_NET": proxy_net}).config())
    name, address = proxy_network(doc)
    subnets = [entry["subnet"] for entry in doc["networks"][name]["ipam"]["config"]]
    assert len(subnets) == 1 and ipaddress.ip_address(address) in ipaddress.ip_network(subnets[0]), (address, subnets)
    if proxy_net:
        assert address.startswith(proxy_net + ".")
    api = doc["services"]["api"]
    assert env_of("api", doc)["FORWARDED_ALLOW_IPS"] == address
    assert name in (api.get("networks") or {}), f"the API is not on nginx's network {name}"
    assert "--proxy-headers" in effective_command("api")
    # Nothing else joins the proxy network, so nginx reaches the API and nothing else.
    on_it = sorted(n for n, spec in doc["services"].items() if name in (spec.get("networks") or {}))
    assert on_it == ["api", "nginx"], on_it


def test_compose_reports_what_these_tests_rely_on_it_for(tmp_path: Path) -> None:
    # The checks above lean on compose: make sure it says no to an unset variable and to an unknown key.
    unset = tmp_path / "unset.yml"
    unset.write_text("services:\n  app:\n    image: ${TUNEQUEUE_TEST_SURELY_UNSET}\n")
    assert "TUNEQUEUE_TEST_SURELY_UNSET" in run_compose_config(unset).stderr
    typo = tmp_path / "typo.yml"
    typo.write_text("services:\n  app:\n    image: redis:7\n    restart_policy: always\n")
    assert run_compose_config(typo).returncode != 0
    undeclared = tmp_path / "undeclared.yml"
    undeclared.write_text("services:\n  app:\n    image: redis:7\n    volumes: ['nowhere:/data']\n")
    assert run_compose_config(undeclared).returncode != 0


def test_compose_project_is_named_tunequeue() -> None:
    # Volume and image names derive from it; compose 1.x does not read the key, so it is checked here.
    assert yaml.safe_load(COMPOSE_FILE.read_text())["name"] == "tunequeue"


# --- the stack and its images ----------------------------------------------------------------------------


def test_compose_defines_the_whole_stack() -> None:
    assert {"postgres", "redis", "migrate", "api", "worker", "serve", "nginx"} <= set(services())
    assert service("postgres")["image"].split(":")[0] == "postgres"
    assert service("redis")["image"].split(":")[0] == "redis"


def test_compose_sees_the_services_of_the_file() -> None:
    assert set(services()) == set(IN_FILE)


@pytest.mark.parametrize("name", BUILT)
def test_build_dockerfile_exists(name: str) -> None:
    context, dockerfile = build_context_of(name), dockerfile_of(name)
    assert context.is_dir(), f"{name}: build context {context} missing"
    assert dockerfile is not None and dockerfile.is_file(), f"{name}: {dockerfile} missing"


@pytest.mark.parametrize("name", BUILT)
def test_services_sharing_an_image_name_build_it_the_same_way(name: str) -> None:
    # Two services tagging one image from different Dockerfiles would overwrite each other's image.
    image = service(name).get("image")
    same = [other for other, spec in services().items() if image and spec.get("image") == image]
    assert {str(dockerfile_of(other)) for other in same} == {str(dockerfile_of(name))}


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
            candidates = [f"{base}.py", f"{base}/{'__main__.py' if kind == 'main' else '__init__.py'}"]
        if not any((REPO / c).is_file() for c in candidates):
            missing.append(f"{ref} ({' or '.join(candidates)})")
    assert not missing, f"{name} runs {argv}, but the repository has no {', '.join(missing)}"


# --- processes find each other ---------------------------------------------------------------------------


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
def test_settings_accept_the_compose_environment(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from common.settings import DEV_DATABASE_URL, Settings

    env = env_of(name)
    for key in [k for k in os.environ if k.startswith("TUNEQUEUE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env

    settings = Settings(_env_file=None)  # type: ignore[call-arg]

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


def test_api_port_healthcheck_and_command_agree() -> None:
    argv = effective_command("api")
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert "--proxy-headers" in argv
    exposed = [str(p).split("/")[0] for p in service("api").get("expose", [])]
    assert port in exposed, f"api listens on {port}, compose exposes {exposed}"
    probe = " ".join(service("api")["healthcheck"]["test"])
    assert f":{port}/healthz" in probe


def test_settings_refuse_the_compose_stack_with_a_default_or_empty_database_password(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from common.settings import Settings

    monkeypatch.chdir(tmp_path)  # no stray .env
    env = env_of("api")
    for key in [k for k in os.environ if k.startswith("TUNEQUEUE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    url = env["TUNEQUEUE_DATABASE_URL"]
    password = REQUIRED_VARIABLES["POSTGRES_PASSWORD"]
    assert Settings(_env_file=None).environment == "production"  # type: ignore[call-arg]
    for weak in ("tunequeue", "postgres", "", None):
        userinfo = "tunequeue" if weak is None else f"tunequeue:{weak}"
        monkeypatch.setenv("TUNEQUEUE_DATABASE_URL", url.replace(f"tunequeue:{password}", userinfo))
        with pytest.raises(ValidationError) as refused:
            Settings(_env_file=None)  # type: ignore[call-arg]
        message = str(refused.value)
        assert "TUNEQUEUE_DATABASE_URL" in message and "openssl rand -hex 24" in message, message
        assert ("default password" if weak else "no password") in message, message


def test_api_reaches_serve_on_its_port() -> None:
    # `python -m worker.serve` binds serve_host:serve_port (common.settings), not the API's host/port.
    serve_port = env_of("serve")["TUNEQUEUE_SERVE_PORT"]
    assert env_of("serve").get("TUNEQUEUE_SERVE_HOST") == "0.0.0.0"
    exposed = [str(p).split("/")[0] for p in service("serve").get("expose", [])]
    assert serve_port in exposed
    url = urlsplit(env_of("api")["TUNEQUEUE_SERVE_URL"])
    assert (url.hostname, str(url.port)) == ("serve", serve_port)


def test_nginx_mounts_the_project_config_and_waits_for_a_healthy_api() -> None:
    assert (str(NGINX_CONF), "/etc/nginx/conf.d/default.conf") in mounts_of("nginx")
    assert depends_on("nginx").get("api", {}).get("condition") == "service_healthy"


# --- start order, health, GPUs, volumes ------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_migrations_and_redis(name: str) -> None:
    deps = depends_on(name)
    assert deps.get("migrate", {}).get("condition") == "service_completed_successfully"
    assert deps.get("redis", {}).get("condition") == "service_healthy"


def test_migrate_waits_for_postgres_and_runs_once() -> None:
    assert depends_on("migrate").get("postgres", {}).get("condition") == "service_healthy"
    # A restart policy that restarts on success would re-run migrations forever.
    assert service("migrate").get("restart", "no") in ("no", "on-failure")
    assert "restart_policy" not in (service("migrate").get("deploy") or {})


@pytest.mark.parametrize("name", list(IN_FILE))
def test_healthy_conditions_have_healthchecks(name: str) -> None:
    for dep, spec in depends_on(name).items():
        if spec.get("condition") == "service_healthy":
            check = service(dep).get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), f"{dep} has no healthcheck"


def test_postgres_and_redis_healthchecks_probe_the_server() -> None:
    assert "pg_isready" in " ".join(service("postgres")["healthcheck"]["test"])
    assert service("redis")["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert any(target == "/var/lib/postgresql/data" for _, target in mounts_of("postgres"))


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_gpu_services_reserve_an_nvidia_gpu(name: str) -> None:
    assert_reserves_one_nvidia_gpu(name, gpu_devices(name))


def assert_reserves_one_nvidia_gpu(name: str, devices: list[dict[str, Any]]) -> None:
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    assert nvidia, f"{name} reserves no nvidia GPU: {devices}"
    for device in nvidia:
        has_count, has_ids = bool(device.get("count")), bool(device.get("device_ids"))
        assert has_count != has_ids, f"{name}: give exactly one of count / device_ids: {device}"
        if has_ids:
            assert all(str(i).strip() for i in device["device_ids"])
        else:
            assert device["count"] in ("all", -1) or int(device["count"]) >= 1


def test_api_needs_no_gpu() -> None:
    assert not gpu_devices("api")
    assert not gpu_devices("migrate")


def test_worker_runs_one_job_at_a_time_on_the_configured_queue() -> None:
    argv = effective_command("worker")
    assert argv[:1] == ["celery"] and "worker" in argv
    concurrency = argv[argv.index("--concurrency") + 1] if "--concurrency" in argv else None
    assert concurrency == "1", argv
    queue_flag = "-Q" if "-Q" in argv else "--queues"
    assert argv[argv.index(queue_flag) + 1] == settings_default("celery_queue")


def consumed_queues() -> set[str]:
    """The Celery queues some compose service's worker reads."""
    queues = set()
    for name in BUILT:
        argv = effective_command(name)
        if argv[:1] == ["celery"] and "worker" in argv:
            flag = "-Q" if "-Q" in argv else "--queues"
            queues.update(argv[argv.index(flag) + 1].split(","))
    return queues


def test_every_queue_the_api_enqueues_to_has_a_consumer() -> None:
    # Without a reader of the validation queue every new job would wait in validating_files forever.
    assert {settings_default("celery_queue"), settings_default("validate_queue")} <= consumed_queues()


def test_validator_needs_no_gpu_and_reads_the_validation_queue() -> None:
    assert not gpu_devices("validator")
    argv = effective_command("validator")
    assert argv[argv.index("-Q") + 1] == settings_default("validate_queue")


def test_worker_gets_time_to_checkpoint_on_stop() -> None:
    assert duration_seconds(service("worker").get("stop_grace_period", "10s")) >= 60


def test_every_process_stores_artifacts_in_the_one_minio_bucket_with_its_credentials() -> None:
    # issue 17: no shared artifacts folder; api, worker, validator and serve reach the same bucket on MinIO, with
    # the credentials MinIO itself was started with (boto3 reads the AWS_* variables).
    minio = env_of("minio")
    stores = {(env_of(name)["TUNEQUEUE_ARTIFACTS"], env_of(name)["TUNEQUEUE_S3_ENDPOINT_URL"]) for name in APP_SERVICES}
    assert len(stores) == 1, f"the processes use different artifact stores: {stores}"
    ((location, endpoint),) = stores
    url, at = urlsplit(location), urlsplit(endpoint)
    assert url.scheme == "s3" and url.netloc and at.hostname == "minio" and at.port == 9000, (location, endpoint)
    assert minio["MINIO_ROOT_PASSWORD"] == REQUIRED_VARIABLES["MINIO_ROOT_PASSWORD"]
    for name in APP_SERVICES:
        env = env_of(name)
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]), name
        assert depends_on(name).get("buckets", {}).get("condition") == "service_completed_successfully", name
        assert not any("artifacts" in target for _, target in mounts_of(name)), f"{name} mounts an artifacts folder"
    assert env_of("buckets")["TUNEQUEUE_S3_BUCKET"] == url.netloc  # the bucket the one-shot creates is the one used
    assert "mc mb --ignore-existing" in " ".join(effective_command("buckets"))
    assert depends_on("buckets").get("minio", {}).get("condition") == "service_healthy"
    assert any(target == "/data" for _, target in mounts_of("minio"))


def test_compose_refuses_to_run_without_the_artifact_store_password_and_says_how_to_set_it() -> None:
    run = run_compose_config(COMPOSE_FILE, required=without("MINIO_ROOT_PASSWORD"))
    assert run.returncode != 0
    assert "MINIO_ROOT_PASSWORD" in run.stderr and "openssl rand -hex 24" in run.stderr, run.stderr


def test_processes_that_copy_from_the_store_have_a_writable_work_folder() -> None:
    # Uploads are checked from a local copy (api), checkpoints and adapters are fetched (worker): into a volume.
    for name in ("api", "worker"):
        work = env_of(name)["TUNEQUEUE_WORK_DIR"]
        assert any(target == work for _, target in mounts_of(name)), f"{name}: nothing mounted at {work}"


def test_bind_mounts_exist() -> None:
    for name in services():
        for source, target in mounts_of(name):
            if source.startswith(str(REPO)):
                assert Path(source).exists(), f"{name}: {source} (mounted at {target}) is not in the repository"


# --- deploy/README.md ------------------------------------------------------------------------------------


README_EXAMPLES = re.findall(r"```yaml\n(.*?)```", DEPLOY_README.read_text(), re.S)


def merged_with_override(example: str, tmp_path: Path) -> dict[str, Any]:
    """The stack's configuration with `example` as its override file, through `docker-compose config`; every
    variable the two use must be set."""
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(example)
    run = run_compose_config(COMPOSE_FILE, override)
    assert "is not set" not in run.stderr, run.stderr
    return run.config()


def test_readme_has_compose_examples() -> None:
    assert README_EXAMPLES, "deploy/README.md has no compose examples"


@pytest.mark.parametrize("example", README_EXAMPLES, ids=[f"example-{i}" for i in range(len(README_EXAMPLES))])
def test_readme_compose_examples_merge_and_reserve_gpus_correctly(example: str, tmp_path: Path) -> None:
    merged = merged_with_override(example, tmp_path)
    for name in yaml.safe_load(example).get("services") or {}:
        if gpu_devices(name, merged):
            assert_reserves_one_nvidia_gpu(name, gpu_devices(name, merged))


# --- the vllm profile (vLLM on a GPU host) -----------------------------------------------------------------------


def test_the_default_profile_runs_serve_s_builtin_engine_and_vllm_only_under_its_profile() -> None:
    doc = run_compose_config(COMPOSE_FILE, profiles=()).config()
    # Compose v2's `config` leaves out a service whose profile is off; Debian's 1.29 prints it with its `profiles`
    # (and `up` does not start it): either way only vllm sits behind a profile, so the default stack is the rest.
    profiled = {name: spec["profiles"] for name, spec in doc["services"].items() if spec.get("profiles")}
    assert profiled in ({}, {"vllm": ["vllm"]}), profiled
    assert env_of("serve", doc)["TUNEQUEUE_SERVE_BACKEND"] == "local"
    assert gpu_devices("serve", doc), "the built-in engine runs on the GPU"


def vllm_stack() -> dict[str, Any]:
    """The stack as `COMPOSE_PROFILES=vllm TUNEQUEUE_SERVE_BACKEND=vllm docker compose up` runs it."""
    return run_compose_config(COMPOSE_FILE, required={**REQUIRED_VARIABLES, "TUNEQUEUE_SERVE_BACKEND": "vllm"},
                              profiles=("vllm",)).config()


def test_the_vllm_profile_runs_a_lora_vllm_server_that_serve_forwards_to() -> None:
    doc = vllm_stack()
    vllm, serve = doc["services"]["vllm"], env_of("serve", doc)
    argv = [*vllm["entrypoint"], *vllm["command"]]

    def arg(flag: str) -> str:
        return str(argv[argv.index(flag) + 1])

    assert argv[:2] == ["vllm", "serve"] and "--enable-lora" in argv
    assert serve["TUNEQUEUE_SERVE_BACKEND"] == "vllm"
    url = urlsplit(serve["TUNEQUEUE_SERVE_VLLM_URL"])
    assert url.hostname == "vllm" and str(url.port) == arg("--port")
    assert arg("--port") in [str(p).split("/")[0] for p in vllm.get("expose", [])]
    # The limits serve checks adapters against are vLLM's own.
    assert arg("--max-lora-rank") == serve["TUNEQUEUE_SERVE_VLLM_MAX_LORA_RANK"] == env_of("api", doc)[
        "TUNEQUEUE_SERVE_VLLM_MAX_LORA_RANK"]
    assert arg("--max-cpu-loras") == serve["TUNEQUEUE_SERVE_MAX_ADAPTERS"]
    # It serves a registered base model under that model's id, from the volume the registry points at.
    from common.settings import BaseModelEntry

    models = {k: BaseModelEntry.model_validate(v if isinstance(v, dict) else {"path": v})
              for k, v in json.loads(serve["TUNEQUEUE_BASE_MODELS"]).items()}
    assert models[arg("--served-model-name")].path == argv[2]
    assert env_of("vllm", doc)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # serve hands vLLM folders under its work dir: vLLM mounts the same volume at the same path.
    work = serve["TUNEQUEUE_WORK_DIR"]
    serve_work = [source for source, target in mounts_of("serve", doc) if target == work]
    assert serve_work and (serve_work[0], work) in mounts_of("vllm", doc)
    assert any(target == "/var/lib/tunequeue/models" for _, target in mounts_of("vllm", doc))
    assert_reserves_one_nvidia_gpu("vllm", gpu_devices("vllm", doc))
    assert not vllm.get("ports"), "vLLM has no authentication: it must not be published"
    assert "proxy" not in (vllm.get("networks") or {})


def test_the_vllm_profile_keeps_every_other_service_as_it_was() -> None:
    # The profile adds vLLM and moves serve's backend; nothing else differs from the default stack.
    default = run_compose_config(COMPOSE_FILE, profiles=()).config()["services"]
    with_vllm = vllm_stack()["services"]
    assert set(with_vllm) - {"vllm"} == set(default) - {"vllm"}
    for name in set(default) - {"serve", "vllm"}:
        assert with_vllm[name] == default[name], name
    assert {key: value for key, value in with_vllm["serve"].items() if key != "environment"} == {
        key: value for key, value in default["serve"].items() if key != "environment"}


# --- a further GPU host (deploy/compose.worker-host.yml) ---------------------------------------------------------

WORKER_HOST_FILE = REPO / "deploy" / "compose.worker-host.yml"
WORKER_HOST_VARIABLES = {
    "TUNEQUEUE_DATABASE_URL": "postgresql+psycopg://tunequeue:worker-host-db-password-0123@10.0.0.5:5432/tunequeue",
    "TUNEQUEUE_REDIS_URL": "redis://10.0.0.5:6379/0",
    "TUNEQUEUE_ARTIFACTS": "s3://tunequeue/artifacts",
    "TUNEQUEUE_S3_ENDPOINT_URL": "http://10.0.0.5:9000",
    "AWS_ACCESS_KEY_ID": "tunequeue",
    "AWS_SECRET_ACCESS_KEY": "worker-host-s3-secret",
    "TUNEQUEUE_BASE_MODELS": '{"my-base": {"path": "s3://tunequeue/models/my-base"}}',
}


def worker_host(required: dict[str, str] | None = None) -> Any:
    return run_compose_config(WORKER_HOST_FILE, required=WORKER_HOST_VARIABLES if required is None else required,
                              profiles=(), project_directory=WORKER_HOST_FILE.parent)


@pytest.mark.parametrize("name", [n for n in WORKER_HOST_VARIABLES if n != "TUNEQUEUE_S3_ENDPOINT_URL"])
def test_a_worker_host_refuses_to_start_without_the_shared_services(name: str) -> None:
    run = worker_host({k: v for k, v in WORKER_HOST_VARIABLES.items() if k != name})
    assert run.returncode != 0 and name in run.stderr, run.stderr


def test_a_worker_host_runs_gpu_workers_on_the_shared_postgres_redis_and_store(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from common.settings import Settings

    doc = worker_host().config()
    assert set(doc["services"]) == {"worker"}
    worker = doc["services"]["worker"]
    assert_reserves_one_nvidia_gpu("worker", gpu_devices("worker", doc))
    assert Path(worker["build"]["context"]) == REPO and worker["build"]["dockerfile"] == "deploy/worker.Dockerfile"
    assert worker.get("command") is None  # the image's CMD, as the main host's worker
    assert not worker.get("ports")
    env = env_of("worker", doc)
    # Everything the main host's worker is told, this one is told too (pointed elsewhere).
    assert set(env_of("worker")) <= set(env), sorted(set(env_of("worker")) - set(env))
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("TUNEQUEUE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment == "production" and settings.artifacts.startswith("s3://")
    # Its own work folder and model cache on volumes of this host; no artifacts folder.
    targets = [target for _, target in mounts_of("worker", doc)]
    assert env["TUNEQUEUE_WORK_DIR"] in targets
    assert any(env["TUNEQUEUE_MODEL_CACHE_DIR"].startswith(t.rstrip("/") + "/") for t in targets)
    assert not any("artifacts" in t for t in targets)
    assert duration_seconds(worker.get("stop_grace_period", "10s")) >= 60


# --- docs/deploy.md ---------------------------------------------------------------------------------------------

# Its Compose overrides (the yaml blocks that start with `services:`; the others are Helm values, rendered by
# tests/deploy/test_helm_chart.py).
DEPLOY_DOC_EXAMPLES = [block for block in re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "deploy.md").read_text(),
                                                      re.S) if block.startswith("services:")]


@pytest.mark.parametrize("example", DEPLOY_DOC_EXAMPLES,
                         ids=[f"example-{i}" for i in range(len(DEPLOY_DOC_EXAMPLES))])
def test_deploy_doc_compose_overrides_merge_onto_the_main_stack(example: str, tmp_path: Path) -> None:
    merged = merged_with_override(example, tmp_path)
    for name, spec in (yaml.safe_load(example).get("services") or {}).items():
        for port in spec.get("ports") or []:
            # Published for the worker hosts on a private address only, never on every interface.
            host = str(port).rsplit(":", 2)[0]
            assert ipaddress.ip_address(host).is_private and not ipaddress.ip_address(host).is_loopback, port
        assert name in merged["services"]


def test_readme_s_extra_worker_gets_the_whole_environment_of_the_worker() -> None:
    # YAML anchors do not reach across files: the README's extra worker spells x-tunequeue-env out, and must keep up.
    extra = [spec for example in README_EXAMPLES
             for name, spec in (yaml.safe_load(example).get("services") or {}).items()
             if name.startswith("worker-") and isinstance(spec.get("environment"), dict)]
    assert extra, "deploy/README.md shows no extra worker"
    for spec in extra:
        missing = set(env_of("worker")) - set(spec["environment"])
        assert not missing, f"deploy/README.md's extra worker lacks {sorted(missing)}"
