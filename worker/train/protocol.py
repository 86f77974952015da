"""The wire between the training child (`python -m worker.train`) and the worker parent (`worker/runner.py`).

The child writes one line per event on its stdout: `EVENT_PREFIX` and one JSON object whose `type` names one
of the event shapes below. The parent ignores every other line, so library output is harmless (libraries are
pointed at stderr anyway, see `worker/train/__main__.py`). The child says how it ended with its exit code.

Both sides import this module and nothing else defines these names; it imports nothing of the project, so the
child can load it before torch.
"""

# No `from __future__ import annotations` here: Python 3.11's TypedDict only sees NotRequired in evaluated
# annotations, and `parse_line` checks events against the shapes' required keys.
import json
from typing import Any, Literal, NotRequired, TypedDict, cast

EVENT_PREFIX = "TUNEQUEUE_EVENT "

# --- exit codes ------------------------------------------------------------------------------------------

EXIT_OK = 0  # a result event is out
EXIT_FAILED = 1  # an error event is out
EXIT_USAGE = 2  # a wrong command line
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGUSR1 (the worker is shutting down); the checkpoint event is out, resume from it
EXIT_CANCELLED = 143  # 128 + SIGTERM (a cancel): a "cancelled" log event, no result

# --- error codes the child sends (the error event's `code`) ------------------------------------------------

INVALID_TRAINING_FILE = "invalid_training_file"
BASE_MODEL_UNAVAILABLE = "base_model_unavailable"
CUDA_OOM = "cuda_oom"  # the parent retries at half the micro-batch when batch_size is "auto"
UNSUPPORTED_ON_WORKER = "unsupported_on_worker"
TRAINING_ERROR = "training_error"  # anything else; the parent also uses it for an exit without an error event


# --- event shapes ----------------------------------------------------------------------------------------


class ProgressEvent(TypedDict):
    """One optimizer step. Losses and rates are null where not known yet (or not finite)."""

    type: Literal["progress"]
    step: int
    total_steps: int
    epoch: float
    loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_second: float | None
    trained_tokens: int
    eta_seconds: float | None
    peak_memory_mb: float | None  # CUDA: max allocated; CPU: the process's peak RSS
    # Only at a step that evaluated (docs/progress.md): the validation data's loss, and the accuracy the stage
    # measures — next-token accuracy over trained tokens (sft, pt) or how often the implicit reward (the value
    # head's score for rm) ranks chosen over rejected (dpo, orpo, rm; kto: desirable over undesirable rows).
    valid_loss: NotRequired[float | None]
    valid_mean_token_accuracy: NotRequired[float | None]
    valid_preference_accuracy: NotRequired[float | None]


class CheckpointMetrics(TypedDict):
    """OpenAI's checkpoint metric names (common/services/events.py `checkpoint_public`); null where not
    measured: train_* from the last logging step, valid_* from the last evaluation."""

    train_loss: float | None
    train_mean_token_accuracy: float | None
    valid_loss: float | None
    valid_mean_token_accuracy: float | None
    valid_preference_accuracy: float | None


class CheckpointEvent(TypedDict):
    """A complete Trainer checkpoint dir at `path`; the parent uploads it, records it, then deletes it."""

    type: Literal["checkpoint"]
    step: int
    path: str
    metrics: CheckpointMetrics


class LogEvent(TypedDict):
    type: Literal["log"]
    level: Literal["info", "warning"]
    message: str


class ResultEvent(TypedDict):
    """Training finished. For method full/freeze `adapter_dir` holds the full weights; `merged_dir` is there
    when publish.merged asked for a merged model."""

    type: Literal["result"]
    adapter_dir: str
    first_loss: float | None
    last_loss: float | None
    train_loss: float | None
    trained_tokens: int
    steps: int
    stage: str
    method: str
    merged_dir: NotRequired[str]
    # what the attempt really held, beside its estimate (common/memory_estimate.py): the process's peak RSS and
    # its RSS once the training stack was imported (bytes), and on CUDA torch's max allocated
    peak_memory: NotRequired[dict[str, int | None]]


class EvalSample(TypedDict):
    """One validation prompt, its reference answer from the file, and the model's greedy answer (new tokens only,
    decoded without special tokens)."""

    prompt: str
    reference: str
    answer: str


class EvalSamplesEvent(TypedDict):
    """hyperparameters.eval_samples: the answers generated at the evaluation of `step` (worker/train/samples.py);
    the parent stores them as one `eval_samples` job event with data {step, samples}."""

    type: Literal["eval_samples"]
    step: int
    samples: list[EvalSample]
    seconds: NotRequired[float]  # how long the generation took


class ErrorEvent(TypedDict):
    """Training failed; {code, message, param} become the job's error (`jobs.error`)."""

    type: Literal["error"]
    code: str
    message: str
    param: str | None


Event = ProgressEvent | CheckpointEvent | LogEvent | ResultEvent | ErrorEvent | EvalSamplesEvent

_SHAPES: dict[str, Any] = {"progress": ProgressEvent, "checkpoint": CheckpointEvent, "log": LogEvent,
                           "result": ResultEvent, "error": ErrorEvent, "eval_samples": EvalSamplesEvent}


def encode(event: Event) -> str:
    """The line for `event`, without its newline. JSON has no NaN: the child reports those as null."""
    return EVENT_PREFIX + json.dumps(event, separators=(",", ":"), allow_nan=False)


def parse_line(line: str) -> Event | None:
    """The event on one line of the child's stdout; None for any other line, and for an event of no known type
    or without its required keys (a relay must never trip over a malformed line)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    shape = _SHAPES.get(kind) if isinstance(kind, str) else None
    if shape is None or not shape.__required_keys__ <= event.keys():
        return None
    return cast(Event, event)
