"""The live-progress hash in Redis: the only key a report writes, fenced by attempt."""

from __future__ import annotations

from common.ids import new_id
from common.progress import ProgressChannel, progress_key
from common.redis_client import get_redis


def test_a_report_writes_the_progress_hash_and_nothing_else() -> None:
    job_id = new_id("ftjob")
    channel = ProgressChannel()
    try:
        assert channel.publish_progress(job_id, {"attempt": 1, "step": 3, "loss": 1.5})
        assert sorted(k.decode() for k in get_redis().scan_iter(match=f"tunequeue:job:{job_id}:*")) == \
            [progress_key(job_id)]
        assert channel.read_progress(job_id) == {"attempt": 1, "step": 3, "loss": 1.5}
    finally:
        channel.clear(job_id)


def test_an_earlier_attempt_does_not_overwrite_a_later_one() -> None:
    job_id = new_id("ftjob")
    channel = ProgressChannel()
    try:
        assert channel.publish_progress(job_id, {"attempt": 2, "step": 1}, replace=True)
        assert not channel.publish_progress(job_id, {"attempt": 1, "step": 9})
        assert channel.read_progress(job_id) == {"attempt": 2, "step": 1}
        assert channel.publish_progress(job_id, {"gpus": []}), "a sample without an attempt merges in"
        assert channel.read_progress(job_id) == {"attempt": 2, "step": 1, "gpus": []}
    finally:
        channel.clear(job_id)
    assert channel.read_progress(job_id) is None
