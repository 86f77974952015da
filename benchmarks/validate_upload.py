"""Validating an upload: a 100,000-row, ~100 MB chat JSONL (issue #3's target: under 10 s on 2 cores, peak
memory under 300 MB above the API's baseline).

    .venv/bin/python benchmarks/validate_upload.py [--rows 100000] [--repeat 3] [--skip-api]
    .venv/bin/python benchmarks/validate_upload.py --max-rows 20 --skip-api --tokenize   # issue 13's target
        [--tokenizer-of var/models/smollm2-135m-instruct]

Two measurements, each in its own process so that one's memory does not hide the other's:

- library: `common.datasets.upload_check.validate_file` on the file (the work done for every upload), timed
  `--repeat` times; peak RSS (VmHWM, reset with /proc/self/clear_refs after the imports) above the RSS before
  the first call.
- tokenize (--tokenize): the validating_files step's work, every row through the trainer's chat template and
  assistant mask with the tiny model's tokenizer; time and peak RSS above the loaded tokenizer.
- api: the real app under uvicorn (one process, as `uvicorn api.main:app`) with a scratch Postgres database and
  artifact folder: `POST /files` of the file over HTTP (multipart, streamed from disk by httpx), timed end to end
  (transfer + multipart parsing + sha256 + writing to the artifact store + validation). Memory: the server's
  VmRSS after a warm-up upload is the baseline; its peak during the big upload is VmHWM (reset with
  /proc/PID/clear_refs before the upload), cross-checked by sampling RSS every 10 ms.

- preview (with --max-rows): `GET /files/{id}/preview?limit=20`'s work in one process (every row encoded and
  split into trained/untrained segments with the tiny model's tokenizer); peak RSS above the loaded tokenizer.

The rows: a system prompt, 1-3 user/assistant turns of random words (some non-ASCII), ~1 KB per row, fixed seed.
With `--max-rows N` instead: N maximal rows, each a chat row whose JSON line is exactly TUNEQUEUE_MAX_ROW_BYTES
(1 MiB by default) with one long assistant message (issue 13's target: preview and validation of such rows stay
under +100 MB over the process's baseline; the validating step runs with max_seq_length 2048).
It needs Postgres and Redis for the api part (TUNEQUEUE_DATABASE_URL's server; a scratch database is made and
dropped). The results go into docs/benchmarks.md ("Dataset validation"), never into a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scratch_db import drop_database, scratch_database  # noqa: E402

_VOCABULARY = """the a model token train data file user answer question adapter worker job memory fast slow queue
service learning rate batch epoch gradient loss checkpoint café naïve über 東京 データ ✓"""
WORDS = _VOCABULARY.split()


def make_file(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w", encoding="utf-8") as out:
        for _ in range(rows):
            messages = [{"role": "system", "content": "You are a helpful assistant for the TuneQueue service."}]
            turns = rng.choice((1, 1, 2, 3))
            for _ in range(turns):
                messages.append({"role": "user", "content": text(rng.randint(15, 70) // turns)})
                messages.append({"role": "assistant", "content": text(rng.randint(38, 130) // turns)})
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def make_max_file(path: Path, rows: int, row_bytes: int, seed: int = 7) -> None:
    """`rows` chat rows, each a JSON line of exactly `row_bytes` bytes (random words, some non-ASCII)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(rows):
            shell = json.dumps({"messages": [{"role": "user", "content": "Summarise the log."},
                                             {"role": "assistant", "content": ""}]}, ensure_ascii=False)
            parts: list[str] = []
            size = len(shell.encode())
            while size < row_bytes:
                word = rng.choice(WORDS) + " "
                parts.append(word)
                size += len(word.encode())
            text = "".join(parts)
            while len(shell.encode()) + len(text.encode()) > row_bytes:
                text = text[:-1]
            text += "x" * (row_bytes - len(shell.encode()) - len(text.encode()))
            out.write(shell[:-4] + text + shell[-4:] + "\n")


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak() -> int:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs); return that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_kb()


def library_side(path: str, repeat: int) -> None:
    """Runs in a child process: time validate_file, report peak RSS growth."""
    from common.datasets.upload_check import validate_file

    before = reset_peak()
    times = []
    report = None
    for _ in range(repeat):
        start = time.perf_counter()
        report = validate_file(Path(path))
        times.append(time.perf_counter() - start)
    peak = rss_kb(field="VmHWM")
    assert report is not None and report.ok, report
    print(json.dumps({"seconds": times, "rows": report.row_count, "baseline_mb": before / 1024,
                      "peak_mb": peak / 1024, "peak_above_baseline_mb": max(0, peak - before) / 1024}))


def tokenize_side(path: str, model: str) -> None:
    """Runs in a child process: the validating_files step's work on the file (every row through the trainer's
    chat template and mask, statistics accumulated), with the tiny model's tokenizer."""
    from common.datasets.convert import iter_stage_records
    from common.datasets.tokens import Encoder, TokenStats, load_tokenizer
    from common.settings import BaseModelEntry

    encoder = Encoder.for_model(load_tokenizer("tiny", BaseModelEntry(path=model)), model_id="tiny", stage="sft",
                                max_seq_length=2048)
    before = reset_peak()
    stats = TokenStats(max_seq_length=2048)
    start = time.perf_counter()
    for _, row in iter_stage_records(Path(path), "chat", "sft"):
        stats.add(encoder.encode(row))
    seconds = time.perf_counter() - start
    peak = rss_kb(field="VmHWM")
    print(json.dumps({"seconds": seconds, "stats": stats.to_dict(), "baseline_mb": before / 1024,
                      "peak_mb": peak / 1024, "peak_above_baseline_mb": max(0, peak - before) / 1024}))


def preview_side(path: str, model: str) -> None:
    """Runs in a child process: a 20-row preview's work (common/services/files.py `_preview_row`: encode, then
    the segments), with the tiny model's tokenizer."""
    import itertools

    from common.datasets.convert import iter_stage_records
    from common.datasets.tokens import Encoder, load_tokenizer
    from common.settings import BaseModelEntry

    encoder = Encoder.for_model(load_tokenizer("tiny", BaseModelEntry(path=model)), model_id="tiny", stage="sft",
                                registry_template="chatml")
    before = reset_peak()
    start = time.perf_counter()
    tokens = 0
    for _, row in itertools.islice(iter_stage_records(Path(path), "chat", "sft"), 20):
        sequences = encoder.encode(row)
        shown = [(len(s.input_ids), encoder.segments(s)) for s in sequences]
        tokens += sum(n for n, _ in shown)
    seconds = time.perf_counter() - start
    peak = rss_kb(field="VmHWM")
    print(json.dumps({"seconds": seconds, "tokens": tokens, "baseline_mb": before / 1024, "peak_mb": peak / 1024,
                      "peak_above_baseline_mb": max(0, peak - before) / 1024}))


def run_tokenize(path: Path, work: Path, side: str = "--tokenize-side", model: Path | None = None) -> dict[str, Any]:
    from worker.tiny_model import build_tiny_model

    if model is None:
        model = build_tiny_model(work / "tiny-llama")
    out = subprocess.run([sys.executable, __file__, side, str(path), "--model", str(model)],
                         check=True, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_library(path: Path, repeat: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--library-side", str(path), "--repeat", str(repeat)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_api(path: Path, work: Path) -> dict[str, Any]:
    import httpx

    url, handle = scratch_database()
    port = free_port()
    env = {**os.environ, "TUNEQUEUE_DATABASE_URL": url, "TUNEQUEUE_ARTIFACTS": str(work / "artifacts"),
           "TUNEQUEUE_WORK_DIR": str(work / "work"), "TUNEQUEUE_MAX_UPLOAD_BYTES": str(2 * 1024**3),
           "TUNEQUEUE_ENVIRONMENT": "test"}
    os.environ.update(env)
    from common import auth
    from common.db import session_scope
    from common.db_setup import upgrade_database

    upgrade_database(url)
    with session_scope() as session:
        tenant = auth.create_tenant(session, f"bench-{secrets.token_hex(4)}")
        _, key = auth.create_key(session, tenant)
    server = subprocess.Popen([str(Path(sys.executable).parent / "uvicorn"), "api.main:app", "--port", str(port),
                               "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                              timeout=600)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        warm = client.post("/files", files={"file": ("warm.jsonl", path.open("rb").readline())},
                           data={"purpose": "fine-tune"})
        assert warm.status_code == 200 and warm.json()["status"] == "processed", warm.text
        time.sleep(0.5)
        baseline = rss_kb(server.pid)
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        sampled = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                sampled.append(rss_kb(server.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        with path.open("rb") as fh:
            resp = client.post("/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"})
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        peak = rss_kb(server.pid, "VmHWM")
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "processed", resp.text[:500]
        return {"seconds": seconds, "rows": body["row_count"], "baseline_mb": baseline / 1024,
                "peak_above_baseline_mb": (peak - baseline) / 1024,
                "sampled_peak_above_baseline_mb": (max(sampled) - baseline) / 1024}
    finally:
        server.terminate()
        server.wait(timeout=30)
        from common.db import get_engine

        get_engine().dispose()
        drop_database(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--tokenize", action="store_true", help="also time the validating_files token statistics")
    parser.add_argument("--max-rows", type=int, default=0, help="instead of --rows: this many maximal rows "
                        "(TUNEQUEUE_MAX_ROW_BYTES each), and the preview's work too")
    parser.add_argument("--library-side", help=argparse.SUPPRESS)
    parser.add_argument("--tokenize-side", help=argparse.SUPPRESS)
    parser.add_argument("--preview-side", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-of", type=Path, default=None,
                        help="tokenise with this model's tokenizer and chat template (e.g. "
                             "var/models/smollm2-135m-instruct) instead of the tiny model's")
    args = parser.parse_args()
    if args.library_side:
        library_side(args.library_side, args.repeat)
        return
    if args.tokenize_side:
        tokenize_side(args.tokenize_side, args.model)
        return
    if args.preview_side:
        preview_side(args.preview_side, args.model)
        return
    with tempfile.TemporaryDirectory(prefix="tunequeue-bench-") as tmp:
        work = Path(tmp)
        preview = None
        if args.max_rows:
            from common.settings import get_settings

            args.rows = args.max_rows
            path = work / "max-rows.jsonl"
            make_max_file(path, args.rows, get_settings().max_row_bytes)
        else:
            path = work / "chat-100k.jsonl"
            make_file(path, args.rows)
        size_mb = path.stat().st_size / 1e6
        lib = run_library(path, args.repeat)
        api = None if args.skip_api else run_api(path, work)
        tok = run_tokenize(path, work, model=args.tokenizer_of) if args.tokenize else None
        if args.max_rows:
            preview = run_tokenize(path, work, "--preview-side", model=args.tokenizer_of)
    tokenizer = args.tokenizer_of.name if args.tokenizer_of else "tiny-llama"
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"file: {args.rows:,} chat rows, {size_mb:.1f} MB; machine: {machine}")
    print(f"library validate_file: best {min(lib['seconds']):.2f} s of {len(lib['seconds'])} "
          f"({', '.join(f'{s:.2f}' for s in lib['seconds'])}); peak RSS +{lib['peak_above_baseline_mb']:.1f} MB above "
          f"the {lib['baseline_mb']:.1f} MB before the first call")
    if api is not None:
        print(f"api POST /files (upload + hash + store + validate): {api['seconds']:.2f} s; server peak RSS "
              f"+{api['peak_above_baseline_mb']:.1f} MB above its {api['baseline_mb']:.0f} MB baseline "
              f"(sampled: +{api['sampled_peak_above_baseline_mb']:.1f} MB)")
    if tok is not None:
        t = tok["stats"]
        print(f"validating_files token statistics ({tokenizer} tokenizer, one process): {tok['seconds']:.1f} s "
              f"({args.rows / tok['seconds']:,.0f} rows/s), {t['total_tokens']:,} tokens; peak RSS "
              f"+{tok['peak_above_baseline_mb']:.1f} MB above {tok['baseline_mb']:.0f} MB (tokenizer loaded)")
    if preview is not None:
        print(f"preview of 20 rows ({tokenizer} tokenizer, encode + segments): {preview['seconds']:.1f} s, "
              f"{preview['tokens']:,} tokens; peak RSS +{preview['peak_above_baseline_mb']:.1f} MB above "
              f"{preview['baseline_mb']:.0f} MB (tokenizer loaded)")
    print(json.dumps({"rows": args.rows, "megabytes": size_mb, "machine": machine, "library": lib, "api": api,
                      "tokenize": tok, "preview": preview}))


if __name__ == "__main__":
    main()
