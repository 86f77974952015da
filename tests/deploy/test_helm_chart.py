"""The Helm chart (deploy/helm/tunequeue) rendered by the real `helm` (`helm lint --strict`, `helm template`), every
manifest validated against Kubernetes' own OpenAPI schemas (`kubernetes-validate`, strict), the values against
values.schema.json (by helm itself, and by `jsonschema`), plus the wiring no schema checks: probes on routes the
apps serve, env names that are settings, credentials only from the Secret, one worker Deployment per GPU class,
the vLLM container only when asked for, and the migrations before any pod.

No cluster runs here: nothing is applied; what a kubelet would do with the manifests (pull, schedule, start) is
not tested."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.routing import Match

from tests.support.deploy import COMPOSE_FILE, REQUIRED_VARIABLES, env_of, run_compose_config
from tests.support.environment import admin_engine
from tests.support.helm import (
    CHART,
    CI_VALUES,
    RELEASE,
    chart_values,
    container,
    containers,
    env_entries,
    env_values,
    find,
    helm,
    merged_values,
    names,
    pod_spec,
    render,
    template,
    values_file,
    workloads,
)
from tests.support.servers import REPO

FULL = f"{RELEASE}-tunequeue"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate 1.35 knows.
KUBERNETES_VERSIONS = ("1.27", "1.35")


def validate_manifest(doc: dict[str, Any], version: str) -> None:
    """kubernetes-validate, strict: raises its ValidationError for what the API server would refuse."""
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: .venv/bin/pip install kubernetes-validate==1.35.0")
    kubernetes_validate.validate(doc, version, strict=True)


def validation_error() -> type[Exception]:
    import kubernetes_validate

    error: type[Exception] = kubernetes_validate.ValidationError
    return error
# Secret values for rendering the environment as a kubelet would.
SECRET_VALUES = {"database-password": "chart0database0password0123456789", "redis-password": "chart0redis0pw",
                 "s3-access-key-id": "tunequeue", "s3-secret-access-key": "chart0s3secret",
                 "serve-token": "chart-serve-token-0123456789abcdef0123456789"}
TUNEQUEUE_IMAGES = ("tunequeue-api", "tunequeue-worker")


def tunequeue_workloads(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deployments and Jobs that run TuneQueue's own images (not the trial's Postgres, Redis or MinIO)."""
    return [doc for doc in workloads(manifests)
            if any(c["image"].split(":")[0] in TUNEQUEUE_IMAGES for c in containers(doc, init=False))]


def tunequeue_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod's containers (init ones too) that run TuneQueue's images."""
    return [c for c in containers(doc) if c["image"].split(":")[0] in TUNEQUEUE_IMAGES]


def setting_fields() -> set[str]:
    from common.settings import Settings

    return {f"TUNEQUEUE_{name.upper()}" for name in Settings.model_fields}


# --- helm and Kubernetes' schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CI_VALUES))
def test_helm_lint_strict_passes(kind: str) -> None:
    run = helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES[kind]))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 chart(s) failed" in run.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", list(CI_VALUES))
def test_every_rendered_manifest_is_valid_for_kubernetes(kind: str, version: str) -> None:
    manifests = render(kind)
    assert len(manifests) >= 6
    for doc in manifests:
        try:
            validate_manifest(doc, version)
        except validation_error() as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} is not valid on Kubernetes {version}: {exc}")


def test_kubernetes_validate_rejects_what_kubernetes_would() -> None:
    # The check above can fail: an unknown field and a wrong type in a rendered Deployment are refused.
    api = find(render("external"), "Deployment", f"{FULL}-api")
    typo = json.loads(json.dumps(api))
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    wrong_type = json.loads(json.dumps(api))
    wrong_type["spec"]["replicas"] = "two"
    for broken in (typo, wrong_type):
        with pytest.raises(validation_error()):
            validate_manifest(broken, KUBERNETES_VERSIONS[-1])


def test_helm_install_dry_run_prints_the_notes() -> None:
    run = helm("install", RELEASE, str(CHART), "--dry-run=client", "-f", str(CI_VALUES["trial"]))
    assert run.returncode == 0, run.stderr
    notes = run.stdout.split("NOTES:", 1)[1]
    assert "TRIAL" in notes and f"deploy/{FULL}-api -- tunequeue admin create-key" in notes, notes


# --- the values and their schema -------------------------------------------------------------------------------


def test_default_values_alone_are_refused_naming_what_is_missing() -> None:
    # Not a trial by default: the chart needs your Postgres, Redis and Secret, and says which values to set.
    run = template()
    assert run.returncode != 0
    for path in ("/secrets/existingSecret", "/externalDatabase/host", "/externalRedis/host"):
        assert path in run.stderr, run.stderr


def test_the_schema_accepts_the_ci_values_and_refuses_the_bare_defaults() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    for kind in CI_VALUES:
        validator(schema).validate(chart_values(kind))
    refused = list(validator(schema).iter_errors(chart_values()))
    assert refused, "the bare defaults should need external services or the trial"


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "an external database without its host": (
        {"trial": {"enabled": False}, "secrets": {"existingSecret": "s"}, "externalRedis": {"host": "redis"}},
        "/externalDatabase/host"),
    "external services without the Secret": (
        {"trial": {"enabled": False}, "externalDatabase": {"host": "db"}, "externalRedis": {"host": "redis"}},
        "/secrets/existingSecret"),
    "negative API replicas": ({"trial": {"enabled": True}, "api": {"replicas": -1}}, "/api/replicas"),
    "negative worker replicas": (
        {"trial": {"enabled": True}, "gpuClasses": [{"name": "a100", "gpus": 1, "replicas": -2}]},
        "/gpuClasses/0/replicas"),
    "a GPU class without a name": ({"trial": {"enabled": True}, "gpuClasses": [{"gpus": 1}]}, "name"),
    "a GPU class named like no Deployment can be": (
        {"trial": {"enabled": True}, "gpuClasses": [{"name": "A100_80GB", "gpus": 1}]}, "/gpuClasses/0/name"),
    "a GPU class with no GPU": ({"trial": {"enabled": True}, "gpuClasses": [{"name": "a", "gpus": 0}]},
                                "/gpuClasses/0/gpus"),
    "a local artifacts folder": ({"trial": {"enabled": True}, "artifacts": {"location": "/var/lib/artifacts"}},
                                 "/artifacts/location"),
    "an unknown serve backend": ({"trial": {"enabled": True}, "serve": {"backend": "tgi"}}, "/serve/backend"),
    "vLLM without a model": ({"trial": {"enabled": True}, "serve": {"backend": "vllm"}}, "/vllm/model"),
    "a misspelt value": ({"trial": {"enabled": True}, "api": {"replica": 3}}, "replica"),
    "a setting that is not TUNEQUEUE_": ({"trial": {"enabled": True}, "extraEnv": {"DATABASE_URL": "x"}},
                                         "DATABASE_URL"),
    "a trusted proxy of *": ({"trial": {"enabled": True}, "api": {"forwardedAllowIps": "*"}},
                             "/api/forwardedAllowIps"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_refused_by_the_schema_naming_the_value(case: str, tmp_path: Path) -> None:
    values, where = BAD_VALUES[case]
    run = template(values_file(tmp_path, values))
    assert run.returncode != 0, f"helm rendered {case}"
    assert "values don't meet the specifications of the schema" in run.stderr, run.stderr
    assert where in run.stderr, run.stderr
    # The same verdict from jsonschema on the merged values (the schema is plain draft-07, not helm-specific).
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(merged_values(chart_values(), values)))


def test_what_the_schema_cannot_say_the_templates_refuse(tmp_path: Path) -> None:
    twice = template(values_file(tmp_path, {"trial": {"enabled": True},
                                            "gpuClasses": [{"name": "a", "gpus": 1}, {"name": "a", "gpus": 2}]}))
    assert twice.returncode != 0 and 'the name "a" appears twice' in twice.stderr, twice.stderr
    unknown = template(CI_VALUES["external"], sets=("vllm.servedModelName=nope",))
    assert unknown.returncode != 0 and '"nope" is not one of baseModels' in unknown.stderr, unknown.stderr


DOC_VALUES = [block for block in re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "deploy.md").read_text(), re.S)
              if not block.startswith("services:")]  # the others are Compose overrides (test_compose.py)


@pytest.mark.parametrize("block", DOC_VALUES, ids=[f"values-{i}" for i in range(len(DOC_VALUES))])
def test_the_values_in_docs_deploy_md_render_valid_manifests(block: str, tmp_path: Path) -> None:
    assert len(DOC_VALUES) >= 2
    for doc in template(CI_VALUES["external"], values_file(tmp_path, yaml.safe_load(block))).manifests():
        validate_manifest(doc, KUBERNETES_VERSIONS[-1])


# --- trial or external -----------------------------------------------------------------------------------------


def test_the_trial_bundles_postgres_redis_minio_and_a_made_secret() -> None:
    manifests = render("trial")
    for kind, name in [("StatefulSet", "postgres"), ("Deployment", "redis"), ("StatefulSet", "minio"),
                       ("Secret", "trial"), ("Service", "postgres"), ("Service", "redis"), ("Service", "minio")]:
        find(manifests, kind, f"{FULL}-{name}")
    secret = find(manifests, "Secret", f"{FULL}-trial")
    assert set(secret["data"]) >= set(SECRET_VALUES) | {"secrets-key"}
    # The bucket the one-shot creates is the one TUNEQUEUE_ARTIFACTS names.
    buckets = find(manifests, "Job", f"{FULL}-buckets-1")
    bucket = env_values(container(buckets, "buckets"), SECRET_VALUES)["BUCKET"]
    api_env = env_values(container(find(manifests, "Deployment", f"{FULL}-api"), "api"), SECRET_VALUES)
    assert urlsplit(api_env["TUNEQUEUE_ARTIFACTS"]).netloc == bucket
    assert urlsplit(api_env["TUNEQUEUE_S3_ENDPOINT_URL"]).hostname == f"{FULL}-minio"
    assert urlsplit(api_env["TUNEQUEUE_DATABASE_URL"]).hostname == f"{FULL}-postgres"
    assert urlsplit(api_env["TUNEQUEUE_REDIS_URL"]).hostname == f"{FULL}-redis"


def test_the_trial_secret_is_fernet_and_long_enough_for_settings() -> None:
    import base64

    from cryptography.fernet import Fernet

    data = find(render("trial"), "Secret", f"{FULL}-trial")["data"]
    Fernet(base64.b64decode(data["secrets-key"]))  # raises on a key Fernet cannot use
    assert len(base64.b64decode(data["serve-token"])) >= 32
    # Passwords go into URLs: only URL-safe characters.
    for key in ("database-password", "redis-password"):
        assert re.fullmatch(r"[A-Za-z0-9]{32,}", base64.b64decode(data[key]).decode()), key


def test_external_services_render_nothing_bundled_and_point_at_the_given_hosts() -> None:
    manifests = render("external")
    kinds = {kind for kind, _ in names(manifests)}
    assert "Secret" not in kinds and "StatefulSet" not in kinds, names(manifests)
    values = chart_values("external")
    for doc in tunequeue_workloads(manifests):
        for c in tunequeue_containers(doc):
            env = env_values(c, SECRET_VALUES)
            database, redis = make_url(env["TUNEQUEUE_DATABASE_URL"]), urlsplit(env["TUNEQUEUE_REDIS_URL"])
            assert database.host == values["externalDatabase"]["host"]
            assert database.password == SECRET_VALUES["database-password"]
            assert database.query == {"sslmode": "require"}
            assert (redis.scheme, redis.hostname, redis.password) == (
                "rediss", values["externalRedis"]["host"], SECRET_VALUES["redis-password"])
            assert env["TUNEQUEUE_ARTIFACTS"] == values["artifacts"]["location"]


# --- settings and secrets --------------------------------------------------------------------------------------


def chart_env_names() -> set[str]:
    found: set[str] = set()
    for kind in CI_VALUES:
        for sets in ((), ("serve.backend=builtin",), ("extraEnv.TUNEQUEUE_LEASE_SECONDS=90",)):
            for doc in workloads(render(kind, *sets)):
                for c in containers(doc):
                    found |= set(env_entries(c))
    return found


def test_every_tunequeue_variable_the_chart_sets_is_a_setting() -> None:
    names_set = {name for name in chart_env_names() if name.startswith("TUNEQUEUE_")}
    assert "TUNEQUEUE_LEASE_SECONDS" in names_set  # extraEnv reaches the pods
    unknown = names_set - setting_fields()
    assert not unknown, f"the chart sets variables common/settings.py does not read: {sorted(unknown)}"


CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|SECRETS_KEY")


@pytest.mark.parametrize("kind", list(CI_VALUES))
def test_credentials_come_only_from_secret_key_refs(kind: str) -> None:
    manifests = render(kind)
    secret = "tunequeue-credentials" if kind == "external" else f"{FULL}-trial"
    seen = set()
    for doc in workloads(manifests):
        for c in containers(doc):
            for name, entry in env_entries(c).items():
                value = str(entry.get("value", ""))
                if CREDENTIAL.search(name):
                    seen.add(name)
                    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                    assert ref and "value" not in entry, f"{doc['metadata']['name']}/{c['name']}: {name} is literal"
                    assert ref["name"] == secret
                if "://" in value and "@" in value:
                    # A URL with credentials takes them from variables filled by secretKeyRef, never inline.
                    userinfo = value.split("://", 1)[1].split("@", 1)[0]
                    password = userinfo.partition(":")[2]
                    assert re.fullmatch(r"\$\([A-Z_]+\)", password), f"{name} has a literal password: {value}"
    assert {"POSTGRES_PASSWORD", "TUNEQUEUE_SERVE_TOKEN", "AWS_SECRET_ACCESS_KEY"} <= seen
    # No Secret value is written anywhere else in the manifests.
    if kind == "trial":
        import base64

        data = find(manifests, "Secret", f"{FULL}-trial")["data"]
        others = yaml.safe_dump_all([doc for doc in manifests if doc["kind"] != "Secret"])
        for key, encoded in data.items():
            plain = base64.b64decode(encoded).decode()
            if key != "s3-access-key-id":  # a user name
                assert plain not in others and encoded not in others, key


def test_the_serve_token_reaches_the_api_and_serve_only() -> None:
    manifests = render("external")
    holders = sorted(f"{doc['metadata']['name']}/{c['name']}" for doc in workloads(manifests)
                     for c in containers(doc) if "TUNEQUEUE_SERVE_TOKEN" in env_entries(c))
    assert holders == [f"{FULL}-api/api", f"{FULL}-serve/serve"], holders


@pytest.mark.parametrize("kind", list(CI_VALUES))
def test_settings_accept_the_environment_of_every_container(kind: str, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    from common.settings import Settings

    monkeypatch.chdir(tmp_path)  # no stray .env
    for doc in tunequeue_workloads(render(kind)):
        for c in tunequeue_containers(doc):
            env = env_values(c, SECRET_VALUES)
            for key in [k for k in os.environ if k.startswith("TUNEQUEUE_")]:
                monkeypatch.delenv(key)
            for key, value in env.items():
                if key.startswith("TUNEQUEUE_"):
                    monkeypatch.setenv(key, value)
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
            assert settings.environment == "production"
            assert settings.artifacts.startswith("s3://"), "pods share no folder: the store is a bucket"
            assert settings.base_models


def test_the_chart_sets_what_compose_sets() -> None:
    # Mirror docker-compose.yml: every variable compose gives a process, the chart gives its pod too.
    compose = run_compose_config(COMPOSE_FILE, required={**REQUIRED_VARIABLES, "TUNEQUEUE_SERVE_BACKEND": "vllm"})
    doc = compose.config()
    manifests = render("external")
    pods = {"api": (f"{FULL}-api", "api"), "validator": (f"{FULL}-validator", "validator"),
            "worker": (f"{FULL}-worker-a100", "worker"), "serve": (f"{FULL}-serve", "serve")}
    # Where the chart differs on purpose: FORWARDED_ALLOW_IPS only when api.forwardedAllowIps names the ingress.
    not_mirrored = {"FORWARDED_ALLOW_IPS"}
    for service, (deployment, name) in pods.items():
        compose_names = set(env_of(service, doc)) - not_mirrored
        chart_names = set(env_entries(container(find(manifests, "Deployment", deployment), name)))
        assert compose_names <= chart_names, f"{service}: the chart lacks {sorted(compose_names - chart_names)}"


# --- processes, probes, GPUs ------------------------------------------------------------------------------------


def served(app: Any, path: str) -> bool:
    scope = {"type": "http", "path": path, "method": "GET", "root_path": "", "headers": [], "query_string": b""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


def probe_paths(c: dict[str, Any]) -> dict[str, str]:
    return {probe: c[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe", "startupProbe")
            if "httpGet" in c.get(probe, {})}


def test_api_probes_are_healthz_and_readyz_which_the_api_serves() -> None:
    from api.main import app

    api = container(find(render("external"), "Deployment", f"{FULL}-api"), "api")
    paths = probe_paths(api)
    assert paths["livenessProbe"] == "/healthz" and paths["readinessProbe"] == "/readyz", paths
    assert all(served(app, path) for path in paths.values()), paths
    assert not served(app, "/surely-not-a-route")  # the check can fail
    port = api["command"][api["command"].index("--port") + 1]
    assert [p["containerPort"] for p in api["ports"]] == [int(port)]


def test_serve_probes_hit_its_one_open_route() -> None:
    from types import SimpleNamespace

    from pydantic import SecretStr

    from common.settings import Settings
    from worker.serve.app import create_app
    from worker.serve.guard import OPEN_PATHS

    app = create_app(Settings(serve_token=SecretStr("x" * 40), _env_file=None),  # type: ignore[call-arg]
                     server=SimpleNamespace())  # type: ignore[arg-type]
    for kind in CI_VALUES:
        serve = container(find(render(kind), "Deployment", f"{FULL}-serve"), "serve")
        for probe, path in probe_paths(serve).items():
            # A probe carries no token: only an open path answers it.
            assert path in OPEN_PATHS and served(app, path), (probe, path)


def test_each_gpu_class_gets_a_worker_deployment_with_its_gpus() -> None:
    manifests = render("external")
    values = chart_values("external")
    workers = [doc for doc in manifests if doc["kind"] == "Deployment"
               and doc["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]
    assert len(workers) == len(values["gpuClasses"]) == 2
    selectors = set()
    for gpu_class in values["gpuClasses"]:
        doc = find(manifests, "Deployment", f"{FULL}-worker-{gpu_class['name']}")
        worker = container(doc, "worker")
        assert doc["spec"]["replicas"] == gpu_class["replicas"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == gpu_class["gpus"]
        assert pod_spec(doc).get("nodeSelector") == gpu_class["nodeSelector"]
        assert pod_spec(doc).get("tolerations") == gpu_class.get("tolerations")
        # The worker counts the GPUs its pod sees; TUNEQUEUE_WORKER_DEVICES is for CPU workers (ignored here).
        assert "TUNEQUEUE_WORKER_DEVICES" not in env_entries(worker)
        argv = worker["command"]
        assert argv[:4] == ["celery", "-A", "worker.celery_app", "worker"]
        assert argv[argv.index("--concurrency") + 1] == "1"
        # Every class reads the one training queue, the API's (placement by fit picks the class).
        assert argv[argv.index("-Q") + 1] == env_values(worker, SECRET_VALUES)["TUNEQUEUE_CELERY_QUEUE"] \
            == values["queue"]
        assert pod_spec(doc)["terminationGracePeriodSeconds"] > 60  # the job checkpoints before the kill
        assert doc["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod_spec(doc)["volumes"])
        selectors.add(json.dumps(doc["spec"]["selector"], sort_keys=True))
    assert len(selectors) == 2, "two classes' Deployments would select each other's pods"
    # Nothing else asks for a GPU but serve (or vLLM) and the workers.
    for doc in workloads(manifests):
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        if component not in ("worker", "serve"):
            assert not any("nvidia.com/gpu" in (c.get("resources") or {}).get("limits", {})
                           for c in containers(doc)), component


def test_the_validation_worker_reads_the_validation_queue_on_the_cpu() -> None:
    from common.settings import Settings

    validator = container(find(render("external"), "Deployment", f"{FULL}-validator"), "validator")
    assert validator["command"][validator["command"].index("-Q") + 1] == Settings.model_fields[
        "validate_queue"].default
    assert "nvidia.com/gpu" not in validator["resources"].get("limits", {})


def test_commands_start_modules_that_exist() -> None:
    for kind in CI_VALUES:
        for doc in tunequeue_workloads(render(kind)):
            for c in containers(doc, init=False):
                argv = c["command"]
                if "-m" in argv:
                    module = argv[argv.index("-m") + 1].replace(".", "/")
                    assert (REPO / f"{module}.py").is_file() or (REPO / module / "__main__.py").is_file(), argv
                if "-A" in argv:
                    assert (REPO / (argv[argv.index("-A") + 1].replace(".", "/") + ".py")).is_file(), argv
                for arg in argv:
                    if arg.endswith(".sh"):
                        assert (REPO / arg).is_file(), argv


# --- migrations ----------------------------------------------------------------------------------------------


def test_migrations_run_prestart_as_a_hook_with_external_services_and_as_a_job_in_the_trial() -> None:
    external = find(render("external"), "Job", f"{FULL}-migrate")
    hooks = external["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert hooks == ["pre-install", "pre-upgrade"]
    trial = find(render("trial"), "Job", f"{FULL}-migrate-1")
    assert "helm.sh/hook" not in (trial["metadata"].get("annotations") or {})
    for job in (external, trial):
        assert container(job, "migrate")["command"] == ["bash", "scripts/prestart.sh"]
        assert container(job, "migrate")["image"].startswith("tunequeue-api:")


@pytest.mark.parametrize("kind", list(CI_VALUES))
def test_every_tunequeue_pod_waits_for_the_migrations(kind: str) -> None:
    for doc in tunequeue_workloads(render(kind)):
        if doc["kind"] == "Job":
            continue
        init = [c["name"] for c in pod_spec(doc).get("initContainers") or []]
        assert init == ["wait-for-migrations"], (doc["metadata"]["name"], init)


def wait_script() -> str:
    init = container(find(render("external"), "Deployment", f"{FULL}-api"), "wait-for-migrations")
    assert init["command"][:2] == ["python", "-c"] and init["image"].startswith("tunequeue-api:")
    script: str = init["command"][2]
    return script


def test_wait_for_migrations_passes_on_a_migrated_database(database: str) -> None:
    env = {**os.environ, "TUNEQUEUE_DATABASE_URL": database, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", wait_script()], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "database at the migration head" in done.stdout


def test_wait_for_migrations_holds_on_a_database_without_them(database: str) -> None:
    name = f"{make_url(database).database}_unmigrated"
    with admin_engine().connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(database).set(database=name).render_as_string(hide_password=False)
        env = {**os.environ, "TUNEQUEUE_DATABASE_URL": url, "PYTHONPATH": str(REPO)}
        with pytest.raises(subprocess.TimeoutExpired) as held:
            subprocess.run([sys.executable, "-c", wait_script()], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=8)
        captured = held.value.stderr
        stderr = captured.decode() if isinstance(captured, bytes) else str(captured or "")
        assert "waiting for migrations: the database is at none" in stderr, stderr
    finally:
        with admin_engine().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- vLLM --------------------------------------------------------------------------------------------------------


def serve_pod(*sets: str) -> dict[str, Any]:
    return find(render("external", *sets), "Deployment", f"{FULL}-serve")


def test_builtin_serve_runs_alone_with_its_gpu() -> None:
    pod = serve_pod("serve.backend=builtin")
    assert [c["name"] for c in containers(pod, init=False)] == ["serve"]
    serve = container(pod, "serve")
    assert env_values(serve, SECRET_VALUES)["TUNEQUEUE_SERVE_BACKEND"] == "local"
    assert serve["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu_only = container(serve_pod("serve.backend=builtin", "serve.gpus=0"), "serve")
    assert "nvidia.com/gpu" not in cpu_only["resources"].get("limits", {})


def test_vllm_backend_adds_a_lora_vllm_container_that_serve_forwards_to() -> None:
    values = chart_values("external")
    pod = serve_pod()
    assert [c["name"] for c in containers(pod, init=False)] == ["serve", "vllm"]
    serve, vllm = container(pod, "serve"), container(pod, "vllm")
    env = env_values(serve, SECRET_VALUES)
    args = vllm["args"]

    def arg(flag: str) -> str:
        return str(args[args.index(flag) + 1])

    assert env["TUNEQUEUE_SERVE_BACKEND"] == "vllm"
    assert vllm["command"] == ["vllm", "serve"] and args[0] == values["vllm"]["model"]
    assert "--enable-lora" in args
    url = urlsplit(env["TUNEQUEUE_SERVE_VLLM_URL"])
    assert (url.hostname, str(url.port)) == (arg("--host"), arg("--port")) == ("127.0.0.1", "8100")
    assert arg("--served-model-name") in json.loads(env["TUNEQUEUE_BASE_MODELS"])
    assert arg("--max-lora-rank") == env["TUNEQUEUE_SERVE_VLLM_MAX_LORA_RANK"]
    assert arg("--max-cpu-loras") == env["TUNEQUEUE_SERVE_MAX_ADAPTERS"]
    assert env_values(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # serve hands vLLM folders under its work dir: vLLM must see them at the same path.
    work = env["TUNEQUEUE_WORK_DIR"]
    mounts = {c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (serve, vllm)}
    assert mounts["serve"][work] == mounts["vllm"][work]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == values["vllm"]["gpus"]
    assert "nvidia.com/gpu" not in serve["resources"].get("limits", {}), "serve forwards; vLLM has the GPU"
    # No Service reaches vLLM (it has no authentication): only serve's port is published.
    service = find(render("external"), "Service", f"{FULL}-serve")
    assert [p["port"] for p in service["spec"]["ports"]] == [int(env["TUNEQUEUE_SERVE_PORT"])]


def test_no_vllm_anywhere_unless_the_backend_says_so() -> None:
    for kind, sets in (("trial", ()), ("external", ("serve.backend=builtin",))):
        rendered = yaml.safe_dump_all(render(kind, *sets))
        assert "vllm/vllm-openai" not in rendered and "TUNEQUEUE_SERVE_VLLM_URL" not in rendered


# --- network policies ---------------------------------------------------------------------------------------------


def selects(selector: dict[str, str], doc: dict[str, Any]) -> bool:
    labels = doc["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def test_network_policies_let_only_the_api_reach_serve_and_only_the_release_reach_the_trial_stores() -> None:
    manifests = render("trial")
    pods = workloads(manifests)
    serve_policy = find(manifests, "NetworkPolicy", f"{FULL}-serve")
    allowed = serve_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert [d["metadata"]["name"] for d in pods if selects(serve_policy["spec"]["podSelector"]["matchLabels"], d)] \
        == [f"{FULL}-serve"]
    assert [d["metadata"]["name"] for d in pods if selects(allowed, d)] == [f"{FULL}-api"]
    assert serve_policy["spec"]["ingress"][0]["ports"][0]["port"] == int(
        env_values(container(find(manifests, "Deployment", f"{FULL}-serve"), "serve"),
                   SECRET_VALUES)["TUNEQUEUE_SERVE_PORT"])
    for store in ("postgres", "redis", "minio"):
        policy = find(manifests, "NetworkPolicy", f"{FULL}-{store}")
        allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        # Every TuneQueue pod (and the trial's bucket Job) may connect; nothing outside the release.
        assert all(selects(allowed, d) for d in pods), store
        assert allowed.get("app.kubernetes.io/instance") == RELEASE
    assert "NetworkPolicy" not in {doc["kind"] for doc in render("trial", "networkPolicy.enabled=false")}
