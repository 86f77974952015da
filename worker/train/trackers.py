"""The experiment trackers a job names in `integrations` (docs/trackers.md): W&B, MLflow and TensorBoard, each
through its own library, fed from the progress events the child reports (so a tracker holds exactly the numbers
of GET /jobs/{id}/metrics, under the same names: loss, learning_rate, grad_norm, tokens_per_second,
trained_tokens, epoch, valid_loss, valid_mean_token_accuracy, valid_preference_accuracy).

Only the trackers the job names are started: transformers' own integrations stay off (`report_to="none"`,
worker/train/run.py). Credentials arrive in this process's environment from the worker parent
(common/services/secrets.py `child_environment`): WANDB_API_KEY, MLFLOW_TRACKING_TOKEN/USERNAME/PASSWORD.

A worker without a tracker's library refuses the job before anything loads (`check_libraries`,
`unsupported_on_worker`). A tracker that cannot be reached, or fails while logging, is reported once as a warning
event and dropped: the training goes on."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.schemas.integrations import Integration
from worker.train.config import JobConfig
from worker.train.errors import TrainingError
from worker.train.protocol import Event
from worker.train.reporter import VALID_METRICS, Reporter

TENSORBOARD_DIR = "tensorboard"  # under the job's output folder; published with the model (worker/publish.py)
# the library each tracker type imports (the `trackers` extra of pyproject.toml installs them)
LIBRARIES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}
STEP_METRICS = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "trained_tokens", "epoch")
DEFAULT_EXPERIMENT = "tunequeue"


def check_libraries(job: JobConfig) -> None:
    """Refuse, before anything loads, a job whose tracker this worker cannot import."""
    for index, item in enumerate(job.spec.integrations or []):
        library = LIBRARIES[item.type]
        try:
            importlib.import_module(library)
        except ImportError as exc:
            raise TrainingError(
                "unsupported_on_worker",
                f"integrations[{index}] reports to {item.type}, and this worker cannot import the {library} "
                f"library ({exc}); the operator installs the trackers extra on the worker (pip install "
                "'tunequeue[trackers]'), or remove the integration", f"integrations[{index}]") from None


def run_config(job: JobConfig, total_steps: int) -> dict[str, Any]:
    """The run's config (W&B) / params (MLflow) / text (TensorBoard)."""
    spec = job.spec
    config: dict[str, Any] = {
        "job_id": job.job_id, "attempt": job.attempt, "base_model": job.base_model.id, "stage": spec.stage,
        "method": spec.method.type, "seed": spec.seed, "total_steps": total_steps,
    }
    config.update({f"hp.{k}": v for k, v in spec.hyperparameters.model_dump(mode="json").items() if v is not None})
    if spec.method.lora is not None:
        config.update({f"lora.{k}": v for k, v in spec.method.lora.model_dump(mode="json").items() if v is not None})
    return config


def step_metrics(event: Event) -> tuple[int, dict[str, float]] | None:
    """(step, metrics) of a progress event; None for any other event."""
    if event.get("type") != "progress":
        return None
    metrics = {name: float(event[name]) for name in STEP_METRICS  # type: ignore[literal-required]
               if event.get(name) is not None}
    metrics.update({name: float(event[name]) for name in VALID_METRICS  # type: ignore[literal-required]
                    if event.get(name) is not None})
    return int(event["step"]), metrics  # type: ignore[typeddict-item]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """While a library starts helper processes (wandb's service), file descriptor 1 is stderr: they inherit it, and
    the real stdout stays the protocol's alone."""
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Tracker:
    kind = ""

    def __init__(self, job: JobConfig, item: Integration, config: dict[str, Any]) -> None:
        raise NotImplementedError

    def log(self, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        raise NotImplementedError


class _Wandb(_Tracker):
    kind = "wandb"

    def __init__(self, job: JobConfig, item: Integration, config: dict[str, Any]) -> None:
        import wandb

        options = item.wandb
        assert options is not None
        folder = Path(os.environ.get("WANDB_DIR") or job.output_dir.absolute())
        folder.mkdir(parents=True, exist_ok=True)
        with _stdout_to_stderr():
            self.run = wandb.init(
                project=options.project, entity=options.entity, name=options.name or job.job_id,
                tags=options.tags or None, config=config, dir=str(folder), id=job.job_id.replace("ftjob-", "tq-"),
                resume="allow", reinit="create_new",
                settings=wandb.Settings(console="off", silent=True, save_code=False, disable_git=True,
                                        x_disable_stats=True))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self, status: str) -> None:
        import wandb

        with _stdout_to_stderr():
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
            wandb.teardown()  # waits for wandb's service to write (offline) or sync the run's last records


class _Mlflow(_Tracker):
    kind = "mlflow"

    def __init__(self, job: JobConfig, item: Integration, config: dict[str, Any]) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # an unreachable server: seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow import MlflowClient
        from mlflow.entities import Param

        options = item.mlflow
        assert options is not None
        self.client = MlflowClient(tracking_uri=options.tracking_uri)
        name = options.experiment or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        previous = self.client.search_runs([experiment_id], f"tags.`tunequeue.job_id` = '{job.job_id}'",
                                           max_results=1)
        if previous:  # a later attempt of the same job (a retry, a resume): the same run goes on
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=options.run_name or job.job_id,
                                         tags={"tunequeue.job_id": job.job_id, "tunequeue.base_model":
                                               job.base_model.id, "tunequeue.stage": job.spec.stage})
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in config.items()])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class _Tensorboard(_Tracker):
    kind = "tensorboard"

    def __init__(self, job: JobConfig, item: Integration, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = job.output_dir.absolute() / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(folder / f"attempt-{job.attempt}"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()


_KINDS: dict[str, type[_Tracker]] = {"wandb": _Wandb, "mlflow": _Mlflow, "tensorboard": _Tensorboard}


class Trackers:
    """The job's started trackers; `observe` is a Reporter observer."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.started: list[_Tracker] = []

    def _drop(self, tracker: _Tracker, doing: str, exc: Exception) -> None:
        self.started.remove(tracker)
        self.reporter.log(f"{tracker.kind}: {doing} failed ({type(exc).__name__}: {str(exc)[:300]}); training goes "
                          f"on without reporting to {tracker.kind}", "warning")

    def observe(self, event: Event) -> None:
        found = step_metrics(event)
        if found is None or not found[1]:
            return
        step, metrics = found
        for tracker in list(self.started):
            try:
                tracker.log(step, metrics)
            except Exception as exc:
                self._drop(tracker, "logging", exc)

    def close(self, status: str) -> None:
        for tracker in list(self.started):
            try:
                tracker.close(status)
            except Exception as exc:
                self._drop(tracker, "closing the run", exc)
        self.started.clear()


def start_trackers(job: JobConfig, reporter: Reporter, total_steps: int) -> Trackers:
    trackers = Trackers(reporter)
    config = run_config(job, total_steps)
    for item in job.spec.integrations or []:
        try:
            trackers.started.append(_KINDS[item.type](job, item, config))
        except Exception as exc:
            reporter.log(f"{item.type}: could not start the run ({type(exc).__name__}: {str(exc)[:300]}); training "
                         f"goes on without reporting to {item.type}", "warning")
    if trackers.started:
        reporter.log("reporting to " + ", ".join(t.kind for t in trackers.started))
    return trackers
