"""The model cache (common/model_cache.py) against a real S3-compatible server (moto's, on loopback:
tests/support/s3_server.py): s3:// base models fetched into a bounded local folder, least recently used first out,
never one in use (by this process, by another, or by a training attempt's folder), a changed model fetched again,
two processes fetching one model fetch it once, and a bad s3:// base model is an error that names the setting and
the fix — for a job, a failed job with base_model_unavailable, not a crash."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.artifacts import get_store
from common.db import session_scope
from common.errors import NotReady
from common.model_cache import ModelCache, get_model_cache
from common.models import Job
from common.schemas.job_spec import JobSpec
from common.services import files as file_service
from common.services import jobs as job_service
from common.settings import BaseModelEntry, Settings
from tests.support.factories import chat_rows, jsonl, spec
from tests.support.model_bucket import put_fake_model, upload_folder
from tests.support.s3_server import CREDENTIALS, S3Server
from tests.support.servers import REPO
from worker.check_job_files import check_job_files

KB = 1024
WEIGHTS = 64 * KB  # each fake model: its weights and two small files


@pytest.fixture
def bucket(moto_s3: S3Server) -> str:
    return moto_s3.new_bucket()


def model_bytes(cache: ModelCache) -> int:
    return sum(int(meta["bytes"]) for _, meta, _ in cache.entries())


def sources(cache: ModelCache) -> list[str]:
    """The cached models' sources, least recently used first."""
    return [meta["source"] for _, meta, _ in cache.entries()]


def make_cache(moto_s3: S3Server, root: Path, models: float) -> ModelCache:
    """A cache bounded at room for `models` fake models."""
    return ModelCache(root, int(models * (WEIGHTS + 64)), client=moto_s3.client())


def fetch(cache: ModelCache, source: str) -> bool:
    """Use the model once (in use only during the call); True when this call downloaded it."""
    with cache.use(source) as cached:
        assert (cached.path / "config.json").is_file()
        return cached.fetched


def test_the_least_recently_used_model_goes_first_and_the_cache_stays_within_its_bound(
        moto_s3: S3Server, bucket: str, tmp_path: Path) -> None:
    client = moto_s3.client()
    a, b, c, d = (put_fake_model(client, bucket, f"models/{n}", n.encode() * WEIGHTS) for n in "abcd")
    cache = make_cache(moto_s3, tmp_path / "cache", 3)
    assert [fetch(cache, source) for source in (a, b, c)] == [True, True, True]
    assert fetch(cache, a) is False  # in the cache already: used again, not fetched
    assert sources(cache) == [b, c, a]

    assert fetch(cache, d) is True
    assert sources(cache) == [c, a, d]  # b, the least recently used, went
    assert model_bytes(cache) <= cache.max_bytes
    assert fetch(cache, b) is True  # fetched again when asked for again; c goes now
    assert sources(cache) == [a, d, b]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == \
        sorted(entry.name for entry, _, _ in cache.entries())  # nothing half-removed or half-fetched left


def test_a_model_in_use_is_never_evicted_until_its_user_ends(moto_s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """In use: by another process (for as long as it lives), and by a training attempt (for as long as its folder
    exists)."""
    client = moto_s3.client()
    a, b, c, d = (put_fake_model(client, bucket, f"models/{n}", n.encode() * WEIGHTS) for n in "abcd")
    root = tmp_path / "cache"
    cache = make_cache(moto_s3, root, 2)
    other = subprocess.Popen(  # another process of this host uses a, until told to stop
        [sys.executable, "-c", (
            "import os, sys; from pathlib import Path; from common.model_cache import ModelCache\n"
            f"with ModelCache(Path({str(root)!r}), 1 << 40, endpoint_url={moto_s3.endpoint_url!r}).use({a!r}):\n"
            "    print('using', flush=True); sys.stdin.read()")],
        cwd=REPO, env={**os.environ, **CREDENTIALS}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline() == "using\n"
        attempt = tmp_path / "attempt-1"
        attempt.mkdir()
        assert cache.hold(b, attempt).fetched  # a training attempt of this process uses b
        assert fetch(cache, c) and fetch(cache, d)
        assert set(sources(cache)) == {a, b, d}  # over the bound, but a and b are in use: c, not in use, went
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=30)
    assert fetch(cache, c)
    assert set(sources(cache)) == {b, c}  # a's process ended: a went; b's attempt still runs
    attempt.rmdir()  # the attempt ended (the worker removes its folder)
    assert fetch(cache, a)
    assert set(sources(cache)) == {c, a}


def test_a_model_changed_in_the_bucket_is_fetched_again(moto_s3: S3Server, bucket: str, tmp_path: Path) -> None:
    client = moto_s3.client()
    source = put_fake_model(client, bucket, "models/m", b"1" * WEIGHTS)
    cache = make_cache(moto_s3, tmp_path / "cache", 4)
    with cache.use(source) as first:
        assert (first.path / "model.safetensors").read_bytes() == b"1" * WEIGHTS
    assert fetch(cache, source) is False
    put_fake_model(client, bucket, "models/m", b"2" * WEIGHTS)  # same names and sizes, new contents (ETags)
    with cache.use(source) as second:
        assert second.fetched and second.path != first.path
        assert (second.path / "model.safetensors").read_bytes() == b"2" * WEIGHTS
    assert not first.path.exists()  # the old version, no longer in use, is gone at once
    assert sources(cache) == [source]


def test_a_tokenizer_copy_holds_no_weights_and_a_whole_copy_serves_it_too(
        moto_s3: S3Server, bucket: str, tmp_path: Path) -> None:
    client = moto_s3.client()
    one, two = (put_fake_model(client, bucket, f"models/{n}", b"w" * WEIGHTS, tokenizer=b'{"t": 1}') for n in "12")
    cache = make_cache(moto_s3, tmp_path / "cache", 4)
    with cache.use(one, part="tokenizer") as tok:
        assert tok.fetched and sorted(p.name for p in tok.path.iterdir()) == ["config.json", "tokenizer.json"]
    assert fetch(cache, two)
    with cache.use(two, part="tokenizer") as tok:  # the whole model's copy has the tokenizer: nothing fetched
        assert not tok.fetched and (tok.path / "model.safetensors").is_file()


FETCH_ONCE = """
import json, sys, time
from pathlib import Path
from common.model_cache import ModelCache
root, source, endpoint, go = sys.argv[1:5]
while not Path(go).exists():
    time.sleep(0.005)
cached = ModelCache(Path(root), 1 << 40, endpoint_url=endpoint).hold(source, Path(root))
print(json.dumps({"fetched": cached.fetched, "path": str(cached.path),
                  "weights": (cached.path / "model.safetensors").stat().st_size}))
"""


def test_two_processes_fetching_one_model_at_once_fetch_it_once(moto_s3: S3Server, bucket: str,
                                                               tmp_path: Path) -> None:
    size = 24 * 1024 * KB  # long enough to download that the second process asks while the first fetches
    source = put_fake_model(moto_s3.client(), bucket, "models/big", os.urandom(size))
    root, go = tmp_path / "cache", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", FETCH_ONCE, str(root), source, moto_s3.endpoint_url, str(go)],
                              cwd=REPO, env={**os.environ, **CREDENTIALS}, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    go.touch()
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r["fetched"] for r in results) == [False, True], results  # one fetched, the other waited for it
    assert results[0]["path"] == results[1]["path"] and results[0]["weights"] == size
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [Path(results[0]["path"]).parent.name]
    assert list(root.glob(".tmp-*")) == []


def test_a_bad_s3_base_model_is_an_error_that_names_the_setting_and_the_fix(
        moto_s3: S3Server, bucket: str, tmp_path: Path) -> None:
    cache = make_cache(moto_s3, tmp_path / "cache", 2)
    cases = {
        "s3://no-such-bucket/models/m": "the bucket 'no-such-bucket' does not exist",
        f"s3://{bucket}/models/nothing-here": "holds no files",
        "s3:///models/m": "is not s3://bucket/prefix",
    }
    client = moto_s3.client()
    client.put_object(Bucket=bucket, Key="models/half/model.safetensors", Body=b"w")
    cases[f"s3://{bucket}/models/half"] = "holds 1 files but no config.json"
    for source, why in cases.items():
        with pytest.raises(NotReady) as caught, cache.use(source, name="broken"):
            pass
        error = caught.value
        assert (error.code, error.param) == ("base_model_unavailable", "base_model")
        assert why in error.message and "TUNEQUEUE_BASE_MODELS" in error.message, error.message
    big = put_fake_model(client, bucket, "models/big", b"w" * 3 * WEIGHTS)
    with pytest.raises(NotReady, match="more than the model cache may hold.*raise TUNEQUEUE_MODEL_CACHE_BYTES"), \
            cache.use(big):
        pass
    assert cache.entries() == []


def _submit(settings: Settings, tenant_id: str, base_model: str) -> str:
    """A job on a four-row file, created as the API creates it (nothing downloads at submit)."""
    with session_scope() as session:
        upload = file_service.create_file(session, get_store(), settings, tenant_id=tenant_id,
                                          src=io.BytesIO(jsonl(chat_rows(4))), filename="t.jsonl", purpose="fine-tune")
        job, _ = job_service.create_job(session, settings, tenant_id=tenant_id,
                                        spec=JobSpec.model_validate(spec(upload.id, base_model=base_model)))
        return job.id

def test_a_job_on_a_missing_s3_base_model_fails_with_base_model_unavailable(
        s3_settings: Settings, tenant: tuple[str, str]) -> None:
    """Submitting does not download (the API checks only that the id is registered); the validation worker, which
    tokenises with the model's tokenizer, fails the job before any GPU is involved, with the fix in the message."""
    s3_settings.base_models["s3-missing"] = BaseModelEntry(path="s3://no-such-bucket/models/tiny", template="chatml")
    job_id = _submit(s3_settings, tenant[0], "s3-missing")
    assert check_job_files(job_id) == "failed"
    with session_scope() as session:
        error = session.get_one(Job, job_id).error
    assert error is not None and (error["code"], error["param"]) == ("base_model_unavailable", "base_model")
    assert "'s3-missing'" in error["message"] and "bucket 'no-such-bucket' does not exist" in error["message"]
    assert get_model_cache(s3_settings).entries() == []


def test_the_validation_worker_reads_an_s3_base_models_tokenizer_without_its_weights(
        s3_settings: Settings, moto_s3: S3Server, bucket: str, tenant: tuple[str, str], tiny_model: Path) -> None:
    s3_settings.base_models["s3-tiny"] = BaseModelEntry(
        path=upload_folder(moto_s3.client(), bucket, "models/tiny-llama", tiny_model), template="chatml")
    job_id = _submit(s3_settings, tenant[0], "s3-tiny")
    assert check_job_files(job_id) == "queued"
    with session_scope() as session:
        stats = session.get_one(Job, job_id).spec["token_stats"]
    assert stats["base_model"] == "s3-tiny" and stats["training_file"]["rows_kept"] == 4
    [(entry, meta, _)] = get_model_cache(s3_settings).entries()
    assert meta["part"] == "tokenizer" and not list(entry.rglob("*.safetensors"))
