"""`python -m worker.train <job_dir>`: one training attempt in a fresh interpreter.

It speaks the protocol of `worker/train/protocol.py`: events on stdout (written by `worker/train/reporter.py`),
everything else, library output included, on stderr, and an exit code that says how it ended: EXIT_OK with a
result event, EXIT_FAILED with an error event, EXIT_CANCELLED after SIGTERM (a cancel) with a "cancelled"
warning and no result, EXIT_PREEMPTED after SIGUSR1 (the worker is shutting down) once a checkpoint event for
the step boundary it stopped at is out, EXIT_USAGE for a wrong command line.

Under torchrun (a job of several devices, worker/train/ranks.py) each rank runs this; rank 0 alone writes events
on stdout, the other ranks only an error event of their own, and none of them outlives torchrun.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback

from worker.train.protocol import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE, TRAINING_ERROR
from worker.train.ranks import Ranks, die_with_parent
from worker.train.reporter import Reporter


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _run(argv: list[str], reporter: Reporter, stop: threading.Event, preempt: threading.Event) -> int:
    if len(argv) != 1:
        print("usage: python -m worker.train <job_dir>", file=sys.stderr)
        return EXIT_USAGE
    # Imported here, after the SIGTERM handler is in place: loading torch and transformers takes seconds.
    from worker.train.config import JobFileError, load_job
    from worker.train.errors import TrainingCancelled, TrainingPreempted, describe_failure

    try:
        job = load_job(argv[0])
    except JobFileError as exc:
        reporter.error(TRAINING_ERROR, str(exc))
        return EXIT_FAILED
    try:
        _quiet_libraries()
        from worker.cpuinfo import peak_rss_bytes
        from worker.train.run import train

        reporter.baseline_rss_bytes = peak_rss_bytes()  # the stack imported, no model yet

        train(job, reporter, stop=stop, preempt=preempt)
    except TrainingCancelled as exc:
        reporter.log(str(exc), "warning")
        return EXIT_CANCELLED
    except TrainingPreempted as exc:
        reporter.log(str(exc), "warning")
        return EXIT_PREEMPTED
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        if _peer_failed(exc):  # another rank failed first: its own error event says why, not this echo of it
            return EXIT_FAILED
        failure = describe_failure(exc)
        reporter.error(failure.code or TRAINING_ERROR, failure.message, failure.param)
        return EXIT_FAILED
    finally:
        _leave_process_group()
    return EXIT_OK


def _peer_failed(exc: BaseException) -> bool:
    """A collective that broke because another rank went away (gloo: the connection closed; NCCL: the
    communicator aborted), on a rank of a job of several devices."""
    if not Ranks.from_env().distributed:
        return False
    torch = sys.modules.get("torch")
    dist_error = getattr(getattr(torch, "distributed", None), "DistError", None) if torch else None
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("connection closed by peer", "connection reset by peer", "nccl communicator"))


def _leave_process_group() -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ranks = Ranks.from_env()
    if ranks.distributed:
        die_with_parent()
    stop, preempt = threading.Event(), threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: preempt.set())
    reporter = Reporter(sys.stdout, errors_only=not ranks.reports)  # the real stdout: events only
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stray print()s of libraries
            return _run(sys.argv[1:] if argv is None else argv, reporter, stop, preempt)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGUSR1, previous_usr1)


if __name__ == "__main__":
    sys.exit(main())
