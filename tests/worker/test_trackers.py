"""Experiment trackers on a real training run (worker/train/trackers.py): one job of the tiny model, made through
the real POST /jobs with W&B, MLflow and TensorBoard integrations and the tenant's secrets, validated by the real
file check and run by `run_job` in this process (the training child is a real subprocess), reports to

- W&B in offline mode (WANDB_MODE=offline, WANDB_DIR in tmp): its run file, read back with wandb's own reader,
  holds the loss of every step;
- a real `mlflow server` (sqlite backend in tmp) reached through a recording HTTP relay: the run's metrics, read
  back with MLflow's client, equal the job's reported metrics (GET /jobs/{id}/metrics), and the requests carry
  the tenant's MLFLOW_TRACKING_TOKEN, not the worker's own;
- TensorBoard: the event files, published with the model, read back with tensorboard's EventAccumulator.

And a worker that cannot import a tracker's library fails the job with unsupported_on_worker."""

from __future__ import annotations

import http.server
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.deps import settings_dep
from common.db import session_scope
from common.models import Model
from common.settings import get_settings
from tests.support.factories import chat_rows, jsonl, make_tenant, spec, upload
from tests.support.http import auth
from tests.support.servers import free_port
from tests.support.training import write_job_dir
from worker.check_job_files import check_job_files
from worker.runner import run_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


class _Relay(http.server.ThreadingHTTPServer):
    upstream: str
    authorizations: list[str | None]


class _RelayHandler(http.server.BaseHTTPRequestHandler):
    """Forwards each request to the MLflow server and records its Authorization header."""

    server: _Relay

    def _forward(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization"))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        resp = httpx.request(self.command, self.server.upstream + self.path, content=body, headers=headers,
                             timeout=60)
        self.send_response(resp.status_code)
        for key, value in resp.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(resp.content)))
        self.end_headers()
        self.wfile.write(resp.content)

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/m.db",
         "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def relay(mlflow_server: str) -> Iterator[_Relay]:
    server = _Relay(("127.0.0.1", free_port()), _RelayHandler)
    server.upstream, server.authorizations = mlflow_server, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def api() -> Iterator[TestClient]:
    """The real app; the operator lets workers reach the test's MLflow relay on 127.0.0.1."""
    from api.main import create_app

    app = create_app()
    app.dependency_overrides[settings_dep] = lambda: get_settings().model_copy(update={"webhook_allow": "127.0.0.1"})
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@dataclass
class Ran:
    job: dict[str, Any]
    metrics: list[dict[str, Any]]
    wandb_dir: Path
    relay: _Relay
    mlflow_token: str
    tenant_key: str


def _submit(api: TestClient, key: str, integrations: list[dict[str, Any]]) -> str:
    file_id = upload(api, key, jsonl(chat_rows(10))).json()["id"]
    body = spec(file_id, integrations=integrations, validation_split=0.2,
                hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "max_seq_length": 64})
    resp = api.post("/jobs", json=body, headers=auth(key))
    assert resp.status_code == 200, resp.text
    job_id: str = resp.json()["id"]
    assert check_job_files(job_id) == "queued"
    return job_id


@pytest.fixture(scope="module")
def ran(api: TestClient, relay: _Relay, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Ran:
    _, key = make_tenant(role="admin")
    token = "tok-" + os.urandom(12).hex()
    assert api.put("/secrets/MLFLOW_TRACKING_TOKEN", json={"value": token}, headers=auth(key)).status_code == 200
    assert api.put("/secrets/WANDB_API_KEY", json={"value": "x" * 40}, headers=auth(key)).status_code == 200
    wandb_dir = tmp_path_factory.mktemp("wandb")
    relay_url = f"http://127.0.0.1:{relay.server_address[1]}"
    integrations = [
        {"type": "wandb", "wandb": {"project": "tq-tests", "tags": ["ci"]}},
        {"type": "mlflow", "mlflow": {"tracking_uri": relay_url, "experiment": "tq-tests"}},
        {"type": "tensorboard", "tensorboard": {}},
    ]
    job_id = _submit(api, key, integrations)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(wandb_dir))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("MLFLOW_TRACKING_TOKEN", "the-workers-own-token")  # must not reach the tenant's tracker
        mp.setenv("OMP_NUM_THREADS", "1")
        assert run_job(job_id) == "succeeded", api.get(f"/jobs/{job_id}/events?limit=50", headers=auth(key)).text
    job = api.get(f"/jobs/{job_id}", headers=auth(key)).json()
    metrics = api.get(f"/jobs/{job_id}/metrics", headers=auth(key)).json()["data"]
    return Ran(job, metrics, wandb_dir, relay, token, key)


def _losses(ran: Ran) -> dict[int, float]:
    losses = {p["step"]: p["loss"] for p in ran.metrics if p.get("loss") is not None}
    assert len(losses) == ran.job["progress"]["total_steps"] >= 4, ran.metrics
    return losses


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a `.wandb` run file: W&B's LevelDB-style log (a 7-byte `:W&B` header, then 32 KiB blocks of
    chunks with a 7-byte header each: crc32c, length, kind full/first/middle/last). wandb 0.31 reads it only in
    its Go core, so the framing is read here and each record is parsed with wandb's own protobuf `Record`."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32 * 1024, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = struct.unpack_from("<HB", data, pos + 4) if left >= 7 else (0, 0)
        if kind == 0:  # the block's zero trailer
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def test_the_wandb_offline_run_file_holds_every_loss_the_job_reported(ran: Ran) -> None:
    from wandb.proto import wandb_internal_pb2

    files = list(ran.wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, list(ran.wandb_dir.rglob("*"))  # one run: nothing else reported to W&B
    history: dict[int, float] = {}
    runs = []
    for data in wandb_records(files[0]):
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            if "loss" in items:
                history[int(items["_step"])] = float(items["loss"])
        elif kind == "run":
            runs.append(record.run)
    assert history == pytest.approx(_losses(ran))
    assert runs and runs[0].project == "tq-tests" and list(runs[0].tags) == ["ci"]
    config = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in runs[0].config.update}
    assert (config["job_id"], config["base_model"], config["stage"], config["method"]) == (
        ran.job["id"], "tiny-llama", "sft", "lora")


def test_the_mlflow_runs_metrics_equal_the_jobs_and_the_tenants_token_reached_the_server(ran: Ran,
                                                                                         relay: _Relay) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=relay.upstream)
    experiment = client.get_experiment_by_name("tq-tests")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == ran.job["id"] and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert history == pytest.approx(_losses(ran))
    valid = {p["step"]: p["valid_loss"] for p in ran.metrics if p.get("valid_loss") is not None}
    assert valid and {m.step: m.value for m in client.get_metric_history(run_id, "valid_loss")} == pytest.approx(valid)
    assert {"learning_rate", "grad_norm", "tokens_per_second"} <= set(runs[0].data.metrics)
    params = runs[0].data.params
    assert (params["job_id"], params["base_model"], params["stage"], params["method"]) == (
        ran.job["id"], "tiny-llama", "sft", "lora")
    sent = set(relay.authorizations)
    assert sent == {f"Bearer {ran.mlflow_token}"}, sent  # every request, and never the worker's own token


def test_the_tensorboard_event_files_are_published_with_the_model_and_hold_the_losses(
        ran: Ran, api: TestClient, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with session_scope() as session:
        manifest = session.query(Model).filter(Model.job_id == ran.job["id"]).one().manifest
    assert any(f["path"].startswith("tensorboard/attempt-1/events.out.tfevents") for f in manifest["files"])
    resp = api.get(f"/models/{ran.job['fine_tuned_model']}/content", headers=auth(ran.tenant_key))
    assert resp.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    events = EventAccumulator(str(tmp_path / "tensorboard" / "attempt-1"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(_losses(ran), rel=1e-6)
    assert "valid_loss" in events.Tags()["scalars"]


def test_a_worker_that_cannot_import_mlflow_fails_the_job_with_unsupported_on_worker(
        api: TestClient, relay: _Relay, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, key = make_tenant(role="admin")
    job_id = _submit(api, key, [{"type": "mlflow", "mlflow": {
        "tracking_uri": f"http://127.0.0.1:{relay.server_address[1]}"}}])
    blocker = tmp_path / "no-mlflow" / "mlflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("mlflow is not installed on this worker")\n')
    monkeypatch.setenv("PYTHONPATH", str(blocker.parent))  # the child's interpreter finds this mlflow first
    assert run_job(job_id) == "failed"
    error = api.get(f"/jobs/{job_id}", headers=auth(key)).json()["error"]
    assert error["code"] == "unsupported_on_worker" and error["param"] == "integrations[0]", error
    assert "mlflow" in error["message"] and "trackers" in error["message"]


def test_the_trainer_carries_none_of_transformers_tracker_callbacks_with_the_libraries_installed(
        tmp_path: Path, tiny_model_dir: Path, fixed_rows: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the trackers a job names report: transformers' own integrations (which report to every installed
    tracker under report_to="all") stay off, and a job that names only TensorBoard starts only TensorBoard."""
    import transformers.integrations as hf

    from worker.train.config import load_job
    from worker.train.reporter import Reporter
    from worker.train.run import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    job_dir = write_job_dir(tmp_path / "job", tiny_model_dir, fixed_rows[:4], max_steps=1, n_epochs=1,
                            spec_extra={"integrations": [{"type": "tensorboard"}]})
    reporter = Reporter(io.StringIO())
    result = train(load_job(job_dir), reporter)
    kinds = {type(c) for c in result.trainer.callback_handler.callbacks}
    assert not kinds & {hf.WandbCallback, hf.MLflowCallback, hf.TensorBoardCallback}, kinds
    assert result.trainer.args.report_to in ([], "none", ["none"])
    logs = [e["message"] for e in reporter.events if e["type"] == "log"]
    assert "reporting to tensorboard" in logs
    assert not (tmp_path / "wandb").exists() and not Path("mlruns").exists()
    assert list((tmp_path / "job" / "output" / "tensorboard" / "attempt-1").glob("events.out.tfevents.*"))


def test_an_unreachable_mlflow_server_is_a_warning_and_the_training_still_succeeds(
        tmp_path: Path, tiny_model_dir: Path, fixed_rows: list[dict[str, Any]]) -> None:
    from worker.train.config import load_job
    from worker.train.reporter import Reporter
    from worker.train.run import train

    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    job_dir = write_job_dir(tmp_path / "job", tiny_model_dir, fixed_rows[:4], max_steps=1, n_epochs=1,
                            spec_extra={"integrations": [{"type": "mlflow", "mlflow": {"tracking_uri": nobody}}]})
    reporter = Reporter(io.StringIO())
    result = train(load_job(job_dir), reporter)
    assert result.steps == 1
    warnings = [e["message"] for e in reporter.events if e["type"] == "log" and e.get("level") == "warning"]
    assert any(w.startswith("mlflow: could not start the run") and "training goes on" in w for w in warnings), warnings
