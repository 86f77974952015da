"""The batched generation engine of one base model: continuous batching over a shared KV cache.

One thread per base model owns the model, its adapter bank and the cache. Each loop: run control calls
(adapter loads, evictions), admit queued requests (one prefill forward for all of them, left-padded, rows with
different adapters side by side), then one decode forward for every running sequence — whichever adapter each
uses — and sample each row with its own temperature, top_p and seed. Rows that finish leave the batch at once;
new requests join at the next step, their cache left-padded to the batch's length. Requests wait in a bounded
queue, one line per tenant admitted round-robin (worker/serve/fairness.py `FairQueue`); a full queue refuses new
ones (429). A request's `done` runs once its last sequence has left the engine, however it ended.

Tokens reach the HTTP side as events posted onto the request's asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from common.errors import TuneQueueError, model_not_found
from worker.serve.fairness import FairQueue
from worker.serve.kvcache import keep_rows, merge, new_cache
from worker.serve.lora import LoraAdapter, LoraBank
from worker.serve.text import Detokenizer, StopMatcher

log = logging.getLogger("tunequeue.serve")


class QueueFull(TuneQueueError):
    status_code = 429
    type = "rate_limit_error"
    code = "queue_full"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Event:
    choice: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: TuneQueueError | None = None


class GenRequest:
    """One HTTP request: `n` choices for each prompt (choice index = prompt index × n + j), for `tenant`.
    `on_done` (the tenant's slots back, worker/serve/fairness.py) runs once, from the engine thread, when the
    request has no sequence left in the engine; or from the caller when `submit` refuses it."""

    def __init__(self, prompts: list[list[int]], sampling: Sampling, *, n: int = 1, adapter_id: str | None = None,
                 adapter: LoraAdapter | None = None, loop: asyncio.AbstractEventLoop | None = None,
                 tenant: str = "", on_done: Callable[[], None] | None = None) -> None:
        self.prompts = prompts
        self.sampling = sampling
        self.n = n
        self.adapter_id = adapter_id
        self.adapter = adapter
        self.loop = loop
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.cancelled = False
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.tenant = tenant
        self.on_done = on_done
        self.live_rows = self.rows

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def cancel(self) -> None:
        self.cancelled = True

    def post(self, events: list[Event]) -> None:
        if self.loop is None:
            self.queue.put_nowait(events)
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, events)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.cancelled = True

    def fail(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, TuneQueueError) else TuneQueueError(f"generation failed: {exc}")
        self.post([Event(choice=-1, error=error)])
        self.done()

    def done(self) -> None:
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done()


@dataclass
class RunningRow:
    """One choice of one request, decoding in the batch: its adapter slot, position, sampler and text so far."""

    request: GenRequest
    choice: int
    slot: int
    next_pos: int
    generator: torch.Generator
    detok: Detokenizer
    stopper: StopMatcher
    tokens: list[int] = field(default_factory=list)
    finished: bool = False


class Engine:
    def __init__(self, name: str, model: Any, tokenizer: Any, bank: LoraBank, *, max_batch: int, queue_size: int,
                 max_prefill_tokens: int, context_length: int, eos_ids: set[int],
                 load_adapter: Callable[[str], LoraAdapter]) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.bank = bank
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.max_prefill_tokens = max_prefill_tokens
        self.context_length = context_length
        self.eos_ids = eos_ids
        self.load_adapter = load_adapter
        self.device = bank.device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        self.pending: FairQueue[GenRequest] = FairQueue()
        self.control: deque[Callable[[], None]] = deque()
        self.cond = threading.Condition()
        self.running: list[RunningRow] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None
        self.doomed: set[str] = set()
        self.last_used = time.monotonic()
        self.generated_tokens = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"serve-engine-{name}", daemon=True)

    # ---- called from other threads -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        self._thread.join(timeout=10)

    def submit(self, request: GenRequest) -> None:
        if request.rows > self.max_batch:
            raise QueueFull(f"this request asks for {request.rows} sequences; the server decodes at most "
                            f"{self.max_batch} at once (TUNEQUEUE_SERVE_MAX_BATCH)", param="n")
        with self.cond:
            if len(self.pending) >= self.queue_size:
                raise QueueFull(f"{self.queue_size} requests are already waiting for {self.name}; retry shortly "
                                "(TUNEQUEUE_SERVE_QUEUE_SIZE)")
            self.pending.append(request)
            self.last_used = time.monotonic()
            self.cond.notify()

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine thread between two forward passes (model and bank changes go through here)."""
        with self.cond:
            self.control.append(fn)
            self.cond.notify()

    def forget(self, model_id: str) -> None:
        """An adapter was deleted: refuse new requests for it, unload it once its running sequences finish."""
        self.call(lambda: self._forget(model_id))

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.running)

    def stats(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "running": len(self.running), "adapters": list(self.bank.slots),
                "generated_tokens": self.generated_tokens}

    # ---- the engine thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cond:
                    while not (self._stop or self.control or self.pending or self.running):
                        self.cond.wait(timeout=5)
                    if self._stop:
                        break
                    control = list(self.control)
                    self.control.clear()
                for fn in control:
                    try:
                        fn()
                    except Exception:
                        log.exception("serve control call failed")
                try:
                    self._admit()
                    if self.running:
                        self._decode()
                except Exception as exc:  # a failed forward (OOM, a bug) fails the batch, not the server
                    log.exception("generation step failed on %s", self.name)
                    for request in {id(s.request): s.request for s in self.running}.values():
                        request.fail(exc)
                    self.running, self.cache, self.mask = [], None, None
        for request in list(self.pending) + [s.request for s in self.running]:
            request.fail(TuneQueueError("the inference server is shutting down", code="shutting_down"))

    def _forget(self, model_id: str) -> None:
        self.doomed.add(model_id)
        for request in [r for r in self.pending if r.adapter_id == model_id]:
            self.pending.remove(request)
            request.fail(model_not_found(model_id, "It was deleted."))
        self._evict_doomed()

    def _evict_doomed(self) -> None:
        in_use = {s.request.adapter_id for s in self.running}
        for model_id in [m for m in self.doomed if m not in in_use]:
            self.bank.evict(model_id)
            self.doomed.discard(model_id)

    def _slot_for(self, request: GenRequest, pinned: set[int]) -> int | None:
        if request.adapter_id is None:
            return 0
        if request.adapter_id in self.doomed:
            raise model_not_found(request.adapter_id, "It was deleted.")
        slot = self.bank.slot_of(request.adapter_id)
        if slot is not None:
            return slot
        adapter = request.adapter or self.load_adapter(request.adapter_id)
        return self.bank.load(adapter, pinned)

    def _admit(self) -> None:
        batch: list[tuple[GenRequest, int]] = []
        rows = len(self.running)
        tokens = 0
        pinned = {s.slot for s in self.running}
        while True:
            with self.cond:
                if not self.pending:
                    break
                request = self.pending.head()
                if request.cancelled:
                    self.pending.pop_head()
                    request.done()
                    continue
                if rows + request.rows > self.max_batch or (batch and tokens + request.prompt_tokens
                                                            > self.max_prefill_tokens):
                    break
            try:
                slot = self._slot_for(request, pinned)
            except Exception as exc:
                with self.cond:
                    self.pending.pop_head()
                request.fail(exc)
                continue
            if slot is None:  # every adapter slot is used by a running sequence: wait for one to finish
                break
            with self.cond:
                self.pending.pop_head()
            pinned.add(slot)
            batch.append((request, slot))
            rows += request.rows
            tokens += request.prompt_tokens
        if batch:
            self._prefill(batch)

    def _prefill(self, batch: list[tuple[GenRequest, int]]) -> None:
        prompts = [(request, p, ids, slot) for request, slot in batch for p, ids in enumerate(request.prompts)]
        width = max(len(ids) for _, _, ids, _ in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.bool)
        for row, (_, _, ids, _) in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = True
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        self.bank.set_batch([slot for *_, slot in prompts])
        cache = new_cache()
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        # n choices share one prefill: repeat each prompt's row n times.
        expand = [row for row, (request, *_) in enumerate(prompts) for _ in range(request.n)]
        logits = out.logits[:, -1, :]
        if len(expand) != len(prompts):
            index = torch.tensor(expand, device=self.device)
            cache.batch_select_indices(index)
            mask, logits = mask[index], logits[index]
        seqs: list[RunningRow] = []
        for row in expand:
            request, p, ids, slot = prompts[row]
            j = len([s for s in seqs if s.request is request and s.choice // request.n == p])
            choice = p * request.n + j
            seed = request.sampling.seed
            # Any int the client sends is a seed: folded into torch's 63-bit range.
            generator = torch.Generator().manual_seed((seed + choice) % 2**63 if seed is not None
                                                      else secrets.randbits(62))
            seqs.append(RunningRow(request=request, choice=choice, slot=slot, next_pos=len(ids), generator=generator,
                                 detok=Detokenizer(self.tokenizer), stopper=StopMatcher(list(request.sampling.stop))))
        self._merge(cache, mask)
        self.running.extend(seqs)
        self._advance(seqs, logits)

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None or self.mask is None or not self.running:
            self.cache, self.mask = cache, mask
        else:
            self.mask = merge(self.cache, self.mask, cache, mask)

    def _decode(self) -> None:
        assert self.cache is not None and self.mask is not None
        seqs = self.running
        input_ids = torch.tensor([[s.tokens[-1]] for s in seqs], dtype=torch.long, device=self.device)
        positions = torch.tensor([[s.next_pos] for s in seqs], dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, torch.ones((len(seqs), 1), dtype=torch.bool, device=self.device)], dim=1)
        self.bank.set_batch([s.slot for s in seqs])
        out = self.model(input_ids=input_ids, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                         use_cache=True)
        for s in seqs:
            s.next_pos += 1
        self._advance(seqs, out.logits[:, -1, :])

    def _advance(self, seqs: list[RunningRow], logits: torch.Tensor) -> None:
        """Sample each row's next token, tell its request, and drop finished rows from the batch."""
        tokens = sample(logits, seqs)
        now = time.monotonic()
        events: dict[int, tuple[GenRequest, list[Event]]] = {}
        for seq, token in zip(seqs, tokens, strict=True):
            request = seq.request
            if request.cancelled:
                seq.finished = True
                continue
            seq.tokens.append(token)
            self.generated_tokens += 1
            reason: str | None = None
            if token in self.eos_ids:
                text, reason = seq.stopper.flush(), "stop"
            else:
                text, hit = seq.stopper.feed(seq.detok.step(token))
                if hit:
                    reason = "stop"
                elif len(seq.tokens) >= request.sampling.max_tokens or seq.next_pos >= self.context_length:
                    text, reason = text + seq.stopper.flush(), "length"
            seq.finished = reason is not None
            if request.first_token_at is None:
                request.first_token_at = now
            events.setdefault(id(request), (request, []))[1].append(
                Event(choice=seq.choice, text=text, finish_reason=reason, completion_tokens=len(seq.tokens)))
        for request, batch in events.values():
            request.post(batch)
        if any(s.finished for s in self.running):
            self._drop_finished()

    def _drop_finished(self) -> None:
        for seq in self.running:
            if seq.finished:
                seq.request.live_rows -= 1
                if seq.request.live_rows <= 0:
                    seq.request.done()
        keep = [i for i, s in enumerate(self.running) if not s.finished]
        self.running = [self.running[i] for i in keep]
        if not self.running:
            self.cache, self.mask = None, None
        else:
            assert self.cache is not None and self.mask is not None
            self.mask = keep_rows(self.cache, self.mask, keep)
        if self.doomed:
            self._evict_doomed()


def sample(logits: torch.Tensor, seqs: list[RunningRow]) -> list[int]:
    """Greedy for temperature 0, else temperature + nucleus (top_p) sampling from each row's own generator."""
    greedy = logits.argmax(dim=-1).tolist()
    sampled = [i for i, s in enumerate(seqs) if s.request.sampling.temperature > 0]
    if not sampled:
        return greedy
    rows = logits[sampled].float().cpu()
    temps = torch.tensor([seqs[i].request.sampling.temperature for i in sampled]).unsqueeze(1)
    probs = torch.softmax(rows / temps, dim=-1)
    top_ps = [seqs[i].request.sampling.top_p for i in sampled]
    if any(p < 1 for p in top_ps):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        cut = (sorted_probs.cumsum(-1) - sorted_probs) >= torch.tensor(top_ps).unsqueeze(1)
        sorted_probs[cut] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    for k, i in enumerate(sampled):
        greedy[i] = int(torch.multinomial(probs[k], 1, generator=seqs[i].generator))
    return greedy
