"""The processes and models of benchmarks/serve_adapters.py: a server subprocess, the real model's LoRA adapters,
and the API stack the "through the API" measurements go through — a scratch database brought to the newest
migration, a tenant with an API key, the adapters registered as a finished job registers them (the job's rows
through the services, then worker/publish.py's upload_adapter + record_model and the `tunequeue:models`
message, as worker/runner.py does), and `uvicorn api.main:app` with the production image's flags."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The real model registered under a benchmark-only id: `tunequeue:models` is one channel for every process on this
# Redis, and another `serve` that has `smollm2-135m-instruct` registered would load it to preload our adapters.
REAL_BASE_ID = "bench-smollm2-135m"
# A system turn of our own: SmolLM2's template adds a default system turn when there is none, LLaMA-Factory's
# `chatml` does not; with one given, both render the same prompt.
REAL_QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "Explain step by step how a job queue decides which fine-tuning job "
                                             "runs next on a shared GPU, and why."}]


# serve answers only requests with the API's token (common/serve_token.py): one per run, given to every serve and
# API this script starts, and sent by the "serve direct" requests as the API sends it, with the tenant.
SERVE_TOKEN = secrets.token_hex(32)


def serve_headers(tenant_id: str) -> dict[str, str]:
    from common.serve_token import TENANT_HEADER

    return {"Authorization": f"Bearer {SERVE_TOKEN}", TENANT_HEADER: tenant_id}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def thread_env(threads: int | None) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


class Server:
    """A subprocess in its own process group, its output in `log`."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, path: str, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code < 500:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def build_real_adapters(base: Path, work: Path, count: int, rank: int = 16) -> list[Path]:
    """`count` random LoRA adapters (rank `rank`, alpha 2·rank, every linear layer) on SmolLM2-135M-Instruct, saved
    by PEFT as a training child saves them. B is random and non-zero (PEFT's default init leaves it zero, which
    would change nothing), scaled so that the answers change but stay sentences rather than noise."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for i in range(count):
        path = work / "adapters" / f"r{i:02d}"
        if not (path / "adapter_model.safetensors").is_file():
            torch.manual_seed(2000 + i)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                   LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                              target_modules="all-linear", init_lora_weights=False))
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.normal_(0.0, 0.02)
            model.save_pretrained(str(path))
        out.append(path)
    return out


def checkpoint_in(base: Path, dtype: str, work: Path) -> Path:
    """The base model as a checkpoint in `dtype` (a converted copy when its own differs; `auto`: as it is).
    LLaMA-Factory 0.9.5 loads weights with `torch_dtype="auto"`, i.e. in the checkpoint's dtype whatever
    `infer_dtype` says, so a float32 run of it needs a float32 checkpoint."""
    if dtype == "auto" or json.loads((base / "config.json").read_text()).get("dtype") == dtype:
        return base
    out = work / f"base-{dtype}"
    if not (out / "config.json").is_file():
        import shutil

        import torch
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype)).save_pretrained(str(out))
        for name in base.iterdir():
            if name.name.startswith(("tokenizer", "chat_template", "special_tokens")):
                shutil.copy(name, out / name.name)
    return out


def llamafactory_dtype(cli: str, config: Path, env: dict[str, str]) -> str:
    """The dtype LLaMA-Factory really loads the weights in with `config` (its `infer_dtype: auto` picks bf16 only
    where a GPU supports it): its ChatModel built in its own venv, asked once, untimed."""
    python = str(Path(cli).parent / "python")
    code = ("import sys, yaml\nfrom llamafactory.chat import ChatModel\n"
            "m = ChatModel(yaml.safe_load(open(sys.argv[1])))\n"
            "print('DTYPE', next(m.engine.model.parameters()).dtype)\n")
    done = subprocess.run([python, "-c", code, str(config)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("DTYPE ")), None)
    if line is None:
        raise RuntimeError(f"could not read LLaMA-Factory's dtype: {done.stderr[-2000:]}")
    return line.split(" ", 1)[1].replace("torch.", "")


# ---- the API stack ---------------------------------------------------------------------------------------------
@dataclass
class ApiStack:
    """A scratch database and artifact store (in this process's environment), a tenant's key, the registered
    adapters' model ids, and the API server once started."""

    env: dict[str, str]
    key: str = ""
    tenant_id: str = ""
    model_ids: list[str] = field(default_factory=list)
    db_handle: Any = None
    api: Server | None = None

    def start_api(self, work: Path, serve_url: str) -> Server:
        """`uvicorn api.main:app --proxy-headers` as deploy/api.Dockerfile runs it (one process), on 127.0.0.1."""
        port = free_port()
        cmd = [str(Path(sys.executable).parent / "uvicorn"), "api.main:app", "--host", "127.0.0.1",
               "--port", str(port), "--proxy-headers"]
        env = {**self.env, "TUNEQUEUE_SERVE_URL": serve_url, "TUNEQUEUE_SERVE_TOKEN": SERVE_TOKEN}
        self.api = Server("api", cmd, env, port, work / "api.log")
        self.api.wait("/healthz", timeout=120)
        return self.api

    def stop_api(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None

    def close(self) -> None:
        from benchmarks.scratch_db import drop_database

        self.stop_api()
        if self.db_handle is not None:
            drop_database(self.db_handle)  # WITH (FORCE): this process's pooled connections go with it
            self.db_handle = None


def open_stack(work: Path, base_id: str, base: Path, template: str | None) -> ApiStack:
    """A scratch database (benchmarks/scratch_db.py) migrated as `tunequeue dev setup` does, this process's
    environment pointed at it (the services below read it), and a tenant with a member key."""
    from benchmarks.scratch_db import scratch_database

    url, handle = scratch_database()
    entry: dict[str, Any] = {"path": str(base)}
    if template:
        entry["template"] = template
    env = {"TUNEQUEUE_DATABASE_URL": url, "TUNEQUEUE_ARTIFACTS": str(work / "store"),
           "TUNEQUEUE_WORK_DIR": str(work / "work"), "TUNEQUEUE_BASE_MODELS": json.dumps({base_id: entry}),
           # The stack has no worker; nothing may republish its jobs onto a queue another engineer's worker reads.
           "TUNEQUEUE_RECONCILE_AFTER_SECONDS": "86400"}
    os.environ.update(env)
    from common.settings import get_settings

    get_settings.cache_clear()
    from common import auth
    from common.db import session_scope
    from common.db_setup import upgrade_database

    stack = ApiStack(env={**os.environ}, db_handle=handle)
    try:
        upgrade_database(url)
        with session_scope() as session:
            tenant = auth.create_tenant(session, f"bench-{secrets.token_hex(4)}")
            _, stack.key = auth.create_key(session, tenant)
            stack.tenant_id = tenant.id
    except BaseException:
        stack.close()
        raise
    return stack


def register_adapters(stack: ApiStack, base_id: str, adapters: list[Path]) -> list[str]:
    """Each adapter as the model of a finished job of the stack's tenant: a training file uploaded and checked
    (`create_file` of common/services/files.py), a LoRA job created (`create_job` of common/services/jobs.py; not
    enqueued: no worker trains it), queued and claimed (common/state.py), then published as worker/runner.py publishes a
    finished attempt: upload_adapter + record_model (worker/publish.py: files under the attempt's key, the
    `models` row and `succeeded` in one transaction), and after the commit the `tunequeue:models` message."""
    from common import state
    from common.artifacts import LocalArtifactStore
    from common.db import session_scope
    from common.model_events import announce
    from common.models import Job
    from common.schemas.job_spec import JobSpec
    from common.services.files import create_file
    from common.services.jobs import create_job
    from common.settings import get_settings
    from worker.publish import record_model, upload_adapter

    settings = get_settings()
    store = LocalArtifactStore(settings.artifacts_path)
    rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                            {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
                   for i in range(8)).encode()
    ids = []
    for n, adapter in enumerate(adapters):
        config = json.loads((adapter / "adapter_config.json").read_text())
        with session_scope() as session:
            file = create_file(session, store, settings, tenant_id=stack.tenant_id, src=io.BytesIO(rows),
                               filename="train.jsonl", purpose="fine-tune")
            spec = JobSpec.model_validate({
                "base_model": base_id, "training_file": file.id, "stage": "sft", "suffix": f"bench{n:02d}",
                "method": {"type": "lora", "lora": {"r": config["r"], "alpha": config["lora_alpha"],
                                                    "dropout": 0.0, "target_modules": "all-linear"}}})
            job, _ = create_job(session, settings, tenant_id=stack.tenant_id, spec=spec)
            state.mark_queued(session, job)
            job_id = job.id
        with session_scope() as session:
            attempt = state.claim(session, job_id, worker="bench-serve:1", lease_seconds=3600)
            assert attempt is not None
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            key, manifest = upload_adapter(store, job, attempt, adapter)
            row = record_model(session, job, attempt, key, manifest)
            assert row is not None
            model_id, storage_key = row.id, row.storage_key
        announce("published", model_id=model_id, tenant_id=stack.tenant_id, base_model=base_id,
                 storage_key=storage_key)
        ids.append(model_id)
    stack.model_ids = ids
    return ids
