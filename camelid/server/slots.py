"""Serving many requests on one model: --parallel slots, each with its own KV cache, one worker thread.

The worker thread owns the network. `camelid serve` runs it on the main thread, the one that loaded
the model (`run()`), and serves HTTP from another: Numba's OpenMP layer keeps a thread team for each
thread that starts parallel kernels, and generating from a second thread ran at 0.6-0.7x the speed
(consistent with libgomp spinning less at its barriers once it manages more threads than there are
CPUs). `start()` runs the loop on a thread of its own instead, for embedding the app elsewhere.

Each turn the worker advances every busy slot by one step of that slot's
camelid.generate.stream_generate (about one token; a prompt longer than one batch is processed one
512-token batch per turn first), round-robin, so all clients progress and the event loop stays free.
A new request goes to the free slot whose cache shares the longest prefix with its prompt (the next
turn of a conversation lands where the previous turn left its keys and values, and only the new
tokens are processed), else to the least recently used one; the others wait in a FIFO queue of at
most max_queue jobs beyond the free slots (one more raises QueueFull). Results travel to the asyncio
side through each job's asyncio.Queue; a cancelled job (its client went away) frees its slot at the
worker's next turn. A job past its deadline ends: still queued, with a 503; generating, as if its
max_tokens were reached (finish_reason "length", as llama.cpp's server does for t_max_predict_ms).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numba
import numpy as np

from camelid.errors import CamelidError
from camelid.generate import DEFAULT_BATCH, GenerationChunk, prefill, stream_generate
from camelid.model.cache import KVCache
from camelid.sampling import SamplingParams
from camelid.threads import set_threads

log = logging.getLogger("camelid.server")

SHUTTING_DOWN = "the server is shutting down; retry when it is back."

# (token bytes, logprob, [(alternative bytes, logprob), ...]) for one generated token
TokenLogprob = tuple[bytes, float, list[tuple[bytes, float]]]


class QueueFull(Exception):
    """Every slot is busy and max_queue jobs already wait: the request is refused (429)."""


@dataclass
class Piece:
    """New text of a generation, with the log-probabilities of its tokens when asked for."""

    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Finished:
    """The end of a generation: why, and what it processed."""

    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose keys and values came from the slot's cache
    completion_tokens: int
    prompt_seconds: float
    generation_seconds: float


@dataclass
class Failed:
    """A generation that could not run; status is the HTTP status to report."""

    status: int
    message: str


@dataclass(eq=False)
class Job:
    """One generation request as the scheduler sees it (compared by identity)."""

    prompt: list[int]
    max_tokens: int  # -1: until the context is full
    sampling: SamplingParams
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    ignore_eos: bool = False
    top_logprobs: int | None = None  # None: no log-probabilities
    deadline: float | None = None  # time.monotonic() at which the job ends, queued or generating
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cached_tokens: int = 0
    prompt_seconds: float = 0.0  # time of the prompt batches run before the generator's own prefill

    def post(self, event: Piece | Finished | Failed) -> None:
        """Hand an event to the job's asyncio side (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled.set()


class _LogitsTap:
    """The network as stream_generate sees it, keeping the logits of the last position it computed."""

    def __init__(self, network):
        self.network = network
        self.last_logits: np.ndarray | None = None

    def forward(self, tokens, cache: KVCache, last_only: bool = False) -> np.ndarray:
        logits = self.network.forward(tokens, cache, last_only)
        self.last_logits = logits[-1]
        return logits


class _TokenTap:
    """The tokenizer as stream_generate sees it: each generated token passes through token_to_bytes
    once, right after it was sampled from the tap's last logits, so its log-probability is read there."""

    def __init__(self, tokenizer, logits: _LogitsTap, top_n: int):
        self.tokenizer, self.logits, self.top_n = tokenizer, logits, top_n
        self.entries: list[TokenLogprob] = []

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def token_to_bytes(self, token_id: int, special: bool = False) -> bytes:
        x = self.logits.last_logits.astype(np.float64)  # (n_vocab,)
        logp = x - x.max()
        logp -= np.log(np.exp(logp).sum())
        top = np.argpartition(-logp, self.top_n - 1)[: self.top_n] if self.top_n else np.empty(0, dtype=np.int64)
        top = top[np.argsort(-logp[top], kind="stable")]
        piece = self.tokenizer.token_to_bytes
        self.entries.append((piece(token_id, True), float(logp[token_id]), [(piece(int(t), True), float(logp[t])) for t in top]))
        return self.tokenizer.token_to_bytes(token_id, special)

    def drain(self) -> list[TokenLogprob]:
        out, self.entries = self.entries, []
        return out


class Slot:
    """A KV cache and the job (if any) generating in it."""

    def __init__(self, index: int, cache: KVCache):
        self.index = index
        self.cache = cache
        self.job: Job | None = None
        self.generator: Iterator[GenerationChunk] | None = None
        self.tap: _TokenTap | None = None
        self.filled = 0  # prompt tokens of the job held in the cache before its generator starts
        self.last_used = 0.0


class Scheduler:
    """Runs jobs on n_slots KV caches of `model` (a camelid Model) in one worker thread.

    `metrics` (camelid.server.metrics.Metrics) receives each finished generation.
    """

    def __init__(self, model, n_slots: int, metrics, max_queue: int | None = None):
        if n_slots < 1:
            raise CamelidError(f"--parallel must be at least 1, got {n_slots}.")
        self.model = model
        self.metrics = metrics
        self.max_queue = max_queue  # None: no bound
        self.slots = [Slot(i, model.new_cache()) for i in range(n_slots)]
        self.waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._n_threads = numba.get_num_threads()  # per thread in Numba: what load(n_threads=) set here

    # ---- the asyncio side ----

    def start(self) -> None:
        """Run the worker loop (`run`) on a new daemon thread."""
        self._thread = threading.Thread(target=self.run, name="camelid-slots", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Refuse new jobs and end every queued and running one with a 503 error for its client."""
        with self._cond:
            self._closed = True
            jobs = [*self.waiting, *(s.job for s in self.slots if s.job is not None)]
            self.waiting.clear()
            for job in jobs:
                job.post(Failed(503, SHUTTING_DOWN))
                job.cancelled.set()
            self._cond.notify()

    def stop(self) -> None:
        """drain(), then wait for the worker thread to end."""
        self.drain()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job; after drain() it fails at once with 503. Raises QueueFull when max_queue jobs
        already wait beyond the free slots."""
        with self._cond:
            if self._closed:
                job.post(Failed(503, SHUTTING_DOWN))
                return
            free = sum(s.job is None for s in self.slots)
            if self.max_queue is not None and len(self.waiting) - free >= self.max_queue:
                raise QueueFull(f"the server is busy: all {len(self.slots)} slots are generating and "
                                f"{self.max_queue} requests wait (--max-queue); retry in a moment.")
            self.waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: dropped from the queue now, or its slot freed at the worker's next turn."""
        job.cancelled.set()
        with self._cond:
            if job in self.waiting:
                self.waiting.remove(job)

    def load(self) -> tuple[int, int]:
        """(busy slots, queued jobs)."""
        with self._cond:
            return sum(s.job is not None for s in self.slots), len(self.waiting)

    # ---- the worker thread ----

    def run(self) -> None:
        """The worker loop, on the calling thread: returns once drain() was called and no slot is busy."""
        set_threads(self._n_threads)
        while True:
            with self._cond:
                self._expire_waiting()
                self._assign()
                busy = [s for s in self.slots if s.job is not None]
                if not busy:
                    if self._closed:
                        return
                    self._cond.wait()
                    continue
            for slot in busy:
                self._step(slot)

    def _expire_waiting(self) -> None:
        """End queued jobs whose deadline passed before a slot was free (called with the lock held)."""
        now = time.monotonic()
        expired = [job for job in self.waiting if job.deadline is not None and now >= job.deadline]
        for job in expired:
            self.waiting.remove(job)
            self.metrics.count_timeout()
            job.post(Failed(503, "the server was too busy to start this request within its time limit (--timeout); "
                                 "retry in a moment."))

    def _assign(self) -> None:
        """Move queued jobs into free slots (called with the lock held)."""
        free = [s for s in self.slots if s.job is None]
        while free and self.waiting:
            job = self.waiting.popleft()
            if job.cancelled.is_set():
                continue
            slot = max(free, key=lambda s: (s.cache.common_prefix(job.prompt), -s.last_used))
            free.remove(slot)
            # Recompute at least the last two prompt tokens: a batch of one token takes the
            # matrix-vector kernels, whose rounding differs from a prompt batch's, so a repeated
            # prompt would not give the answer a fresh slot gives. Rows of batches of two or more agree.
            job.cached_tokens = max(0, min(slot.cache.common_prefix(job.prompt), len(job.prompt) - 2))
            slot.cache.truncate(job.cached_tokens)
            slot.job, slot.filled = job, job.cached_tokens

    def _step(self, slot: Slot) -> None:
        """Advance one slot by one prompt batch or one generated piece."""
        job = slot.job
        try:
            if job.cancelled.is_set():
                self._release(slot, generated=max(0, slot.cache.n_past - len(job.prompt)))
                return
            if slot.generator is None and self._past_deadline(job):
                self._finish(slot, "length", 0, 0.0, timed_out=True)
                return
            if slot.generator is None and self._prefill_batch(slot):
                return
            if slot.generator is None:
                slot.generator = self._generator(slot)
            chunk = next(slot.generator)
        except CamelidError as exc:
            job.post(Failed(400, str(exc)))
            self._release(slot)
            return
        except Exception as exc:
            log.exception("generation failed")
            job.post(Failed(500, f"internal error while generating ({type(exc).__name__}); see the server log."))
            slot.cache.clear()
            self._release(slot)
            return
        logprobs = slot.tap.drain() if slot.tap is not None else None
        if chunk.finish_reason is None:
            job.post(Piece(chunk.text, logprobs))
            return
        if chunk.text or logprobs:
            job.post(Piece(chunk.text, logprobs))
        s = chunk.stats
        timed_out = chunk.finish_reason == "length" and s.generated_tokens != job.max_tokens and self._past_deadline(job)
        self._finish(slot, "length" if chunk.finish_reason == "context" else chunk.finish_reason, s.generated_tokens,
                     s.generation_seconds, s.prompt_seconds, timed_out)

    @staticmethod
    def _past_deadline(job: Job) -> bool:
        return job.deadline is not None and time.monotonic() >= job.deadline

    def _finish(self, slot: Slot, reason: str, generated: int, generation_seconds: float,
                generator_prompt_seconds: float = 0.0, timed_out: bool = False) -> None:
        """Report a generation's end to the metrics, free the slot, then tell the client (so a client that
        has its answer finds both already done)."""
        job = slot.job
        prompt_seconds = job.prompt_seconds + generator_prompt_seconds
        self.metrics.record_generation(len(job.prompt), job.cached_tokens, generated, prompt_seconds, generation_seconds)
        if timed_out:
            self.metrics.count_timeout()
        self._release(slot)
        job.post(Finished(reason, len(job.prompt), job.cached_tokens, generated, prompt_seconds, generation_seconds))

    def _prefill_batch(self, slot: Slot) -> bool:
        """Process one more batch of a long prompt; False once at most one batch is left for the
        generator's own prefill (batches fall exactly where an uninterrupted prefill puts them)."""
        job = slot.job
        if len(job.prompt) - slot.filled <= DEFAULT_BATCH:
            return False
        t0 = time.perf_counter()
        prefill(self.model.network, slot.cache, job.prompt[:slot.filled + DEFAULT_BATCH])
        slot.filled += DEFAULT_BATCH
        job.prompt_seconds += time.perf_counter() - t0
        return True

    def _generator(self, slot: Slot) -> Iterator[GenerationChunk]:
        job = slot.job
        network, tokenizer = self.model.network, self.model.tokenizer
        if job.top_logprobs is not None:
            network = _LogitsTap(network)
            tokenizer = slot.tap = _TokenTap(tokenizer, network, job.top_logprobs)
        return stream_generate(network, tokenizer, job.prompt, slot.cache, max_tokens=job.max_tokens,
                               sampling=job.sampling, stop=job.stop, ignore_eos=job.ignore_eos, deadline=job.deadline)

    def _release(self, slot: Slot, generated: int | None = None) -> None:
        """Free a slot; `generated` counts the tokens of a cancelled job for the metrics."""
        if slot.generator is not None:
            slot.generator.close()
        if generated is not None:
            self.metrics.record_cancelled(len(slot.job.prompt), slot.job.cached_tokens, generated)
        slot.job, slot.generator, slot.tap = None, None, None
        slot.last_used = time.perf_counter()
