"""Serving many requests on one model: --parallel slots sharing one KV pool, one worker thread running
camelid.engine with continuous batching.

The worker thread owns the network. `camelid serve` runs it on the main thread, the one that loaded
the model (`run()`), and serves HTTP from another: Numba's OpenMP layer keeps a thread team for each
thread that starts parallel kernels, and generating from a second thread ran at 0.6-0.7x the speed
(consistent with libgomp spinning less at its barriers once it manages more threads than there are
CPUs). `start()` runs the loop on a thread of its own instead, for embedding the app elsewhere.

Each turn the worker runs one `Engine.step()`: at most one prompt chunk of 128 or 512 tokens (the
request with the least prompt left goes first, so a short request is not stuck behind a long prompt),
then the next token of every generating slot in one batched forward pass; a new request joins at the
next turn. A slot's results do not depend on the others (see camelid.engine).

The slots' sequences live in one KV pool (camelid.model.kv_pool) of n_slots x n_ctx positions, -c
in all as in llama-server: a prompt reuses the longest prefix that any sequence, running or
finished, has left in the pool (the next turn of a conversation, a system prompt shared by several
users), sharing its blocks rather than copying them; finished sequences stay there as cache until
their blocks are needed, the least recently used first. Requests beyond the free slots wait in a
FIFO queue of at most max_queue jobs (one more raises QueueFull). Results travel to
the asyncio side through each job's asyncio.Queue; a cancelled job (its client went away) frees its
slot at the worker's next turn. A job past its deadline ends: still queued, with a 503; started, as
if its max_tokens were reached (finish_reason "length", as llama.cpp's server does for
t_max_predict_ms).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np

from camelid.embeddings import embed_tokens
from camelid.engine import Engine, GenerationChunk, GenerationSequence, Request, TokenLogprob
from camelid.errors import CamelidError
from camelid.model.kv_pool import BLOCK, PooledCache
from camelid.sampling import SamplingParams
from camelid.threads import set_threads

log = logging.getLogger("camelid.server")

SHUTTING_DOWN = "the server is shutting down; retry when it is back."


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
    cached_tokens: int  # prompt tokens whose keys and values came from the KV pool
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
    token_mask: Callable[[list[int]], np.ndarray | None] | None = None  # constrained output (camelid.constrained)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    first_event_sent: bool = False

    def post(self, event: Piece | Finished | Failed) -> None:
        """Hand an event to the job's asyncio side (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled.set()


@dataclass(eq=False)
class EmbeddingJob:
    """Token-id lists to embed, one vector each, run by the worker between two engine steps; the
    vectors, or a Failed, come back through `future`."""

    inputs: list[list[int]]
    pooling: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    def settle(self, outcome: list | Failed) -> None:
        """Hand the vectors or the failure to the asyncio side (from the worker thread)."""
        def set_result():
            if not self.future.done():
                self.future.set_result(outcome)

        try:
            self.loop.call_soon_threadsafe(set_result)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


class Slot:
    """A place for one generating job: the job, its sequence in the engine and in the KV pool."""

    def __init__(self, index: int):
        self.index = index
        self.job: Job | None = None
        self.seq: GenerationSequence | None = None
        self.cache: PooledCache | None = None


class Scheduler:
    """Runs up to n_slots jobs at once on `model` (a camelid Model), in one worker thread, each
    sequence of at most model.n_ctx positions in a KV pool of n_slots x model.n_ctx.

    `metrics` (camelid.server.metrics.Metrics) receives each finished generation.
    """

    def __init__(self, model, n_slots: int, metrics, max_queue: int | None = None):
        if n_slots < 1:
            raise CamelidError(f"--parallel must be at least 1, got {n_slots}.")
        self.model = model
        self.metrics = metrics
        self.max_queue = max_queue  # None: no bound
        self.slots = [Slot(i) for i in range(n_slots)]
        self.pool = model.network.new_pool(n_slots * -(-model.n_ctx // BLOCK) * BLOCK)
        self.engine = Engine(model.network, model.tokenizer)
        self.waiting: deque[Job] = deque()
        self.embedding_jobs: deque[EmbeddingJob] = deque()
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
            while self.embedding_jobs:
                self.embedding_jobs.popleft().settle(Failed(503, SHUTTING_DOWN))
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

    async def embed(self, inputs: list[list[int]], pooling: str) -> list | Failed:
        """The embeddings of token-id lists (see camelid.embeddings), computed by the worker between
        two engine steps; a Failed when they cannot be."""
        loop = asyncio.get_running_loop()
        job = EmbeddingJob(inputs, pooling, loop, loop.create_future())
        with self._cond:
            if self._closed:
                return Failed(503, SHUTTING_DOWN)
            self.embedding_jobs.append(job)
            self._cond.notify()
        return await job.future

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

    def kv_usage(self) -> dict[str, int]:
        """The KV pool's positions: in all, held by running sequences, kept as cache, evicted so far."""
        used, cached = self.pool.usage()
        return {"total": self.pool.n_cells, "used": used, "cached": cached, "evicted": self.pool.n_evicted_blocks * BLOCK}

    # ---- the worker thread ----

    def run(self) -> None:
        """The worker loop, on the calling thread: returns once drain() was called and no slot is busy."""
        set_threads(self._n_threads)
        while True:
            with self._cond:
                self._expire_waiting()
                started = self._assign()
                embeddings = list(self.embedding_jobs)
                self.embedding_jobs.clear()
                if not started and not embeddings and not any(s.job is not None for s in self.slots):
                    if self._closed:
                        return
                    # with a timeout: a signal that the kernel hands to another thread runs its Python
                    # handler (`camelid serve`'s SIGTERM/SIGINT) only once this, the main thread, wakes
                    self._cond.wait(timeout=0.5)
                    continue
            for job in embeddings:
                self._embed(job)
            for slot in started:
                self._start(slot)
            self._turn()

    def _expire_waiting(self) -> None:
        """End queued jobs whose deadline passed before a slot was free (called with the lock held)."""
        now = time.monotonic()
        expired = [job for job in self.waiting if job.deadline is not None and now >= job.deadline]
        for job in expired:
            self.waiting.remove(job)
            self.metrics.count_timeout()
            job.post(Failed(503, "the server was too busy to start this request within its time limit (--timeout); "
                                 "retry in a moment."))

    def _assign(self) -> list[Slot]:
        """Move queued jobs into free slots (called with the lock held); the slots to start."""
        free = [s for s in self.slots if s.job is None]
        started = []
        while free and self.waiting:
            job = self.waiting.popleft()
            if job.cancelled.is_set():
                continue
            slot = free.pop(0)
            slot.job = job
            started.append(slot)
        return started

    def _start(self, slot: Slot) -> None:
        """Put the slot's new job into the engine, in a new sequence of the KV pool."""
        job = slot.job
        self.metrics.record_queue_time(time.monotonic() - job.submitted)
        slot.cache = self.pool.sequence(self.model.n_ctx)
        request = Request(job.prompt, job.max_tokens, job.sampling, job.stop, job.ignore_eos, job.top_logprobs, job.deadline,
                          token_mask=job.token_mask)
        try:
            slot.seq = self.engine.add(request, slot.cache)
        except CamelidError as exc:
            job.post(Failed(400, str(exc)))
            self._release(slot)

    def _embed(self, job: EmbeddingJob) -> None:
        if job.future.cancelled():
            return
        try:
            job.settle([embed_tokens(self.model.network, tokens, job.pooling) for tokens in job.inputs])
        except CamelidError as exc:
            job.settle(Failed(400, str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged here
            log.error("embedding failed", exc_info=exc)
            job.settle(Failed(500, f"internal error while embedding ({type(exc).__name__}); see the server log."))

    def _turn(self) -> None:
        """Free cancelled and timed-out slots, run one engine step, hand its chunks to the jobs."""
        for slot in self.slots:
            job, seq = slot.job, slot.seq
            if job is None or seq is None:
                continue
            if job.cancelled.is_set():
                self.engine.remove(seq)
                self.metrics.record_cancelled(len(job.prompt), seq.stats.cached_tokens, seq.stats.generated_tokens)
                self._release(slot)
            elif seq.logits is None and self._past_deadline(job):
                self.engine.remove(seq)
                self._finish(slot, "length", timed_out=True)
        by_seq = {id(s.seq): s for s in self.slots if s.seq is not None}
        for seq, chunk in self.engine.step():
            self._deliver(by_seq[id(seq)], chunk)

    def _deliver(self, slot: Slot, chunk: GenerationChunk) -> None:
        job = slot.job
        if chunk.error is not None:
            self._fail(slot, chunk.error)
            return
        if not job.first_event_sent:
            job.first_event_sent = True
            self.metrics.record_first_token(time.monotonic() - job.submitted)
        if chunk.text or chunk.logprobs:
            job.post(Piece(chunk.text, chunk.logprobs))
        if chunk.finish_reason is not None:
            s = chunk.stats
            timed_out = chunk.finish_reason == "length" and s.generated_tokens != job.max_tokens and self._past_deadline(job)
            self._finish(slot, "length" if chunk.finish_reason == "context" else chunk.finish_reason, timed_out)

    def _fail(self, slot: Slot, error: Exception) -> None:
        """Report a job that could not run: a CamelidError as a 400 with its message, else a 500."""
        if isinstance(error, CamelidError):
            slot.job.post(Failed(400, str(error)))
        else:
            log.error("generation failed", exc_info=error)
            slot.job.post(Failed(500, f"internal error while generating ({type(error).__name__}); see the server log."))
        self._release(slot, keep=isinstance(error, CamelidError))

    @staticmethod
    def _past_deadline(job: Job) -> bool:
        return job.deadline is not None and time.monotonic() >= job.deadline

    def _finish(self, slot: Slot, reason: str, timed_out: bool = False) -> None:
        """Report a generation's end to the metrics, free the slot, then tell the client (so a client that
        has its answer finds both already done)."""
        job, s = slot.job, slot.seq.stats
        self.metrics.record_generation(len(job.prompt), s.cached_tokens, s.generated_tokens, s.prompt_seconds, s.generation_seconds)
        if timed_out:
            self.metrics.count_timeout()
        self._release(slot)
        job.post(Finished(reason, len(job.prompt), s.cached_tokens, s.generated_tokens, s.prompt_seconds, s.generation_seconds))

    def _release(self, slot: Slot, keep: bool = True) -> None:
        """Free the slot; its sequence's prefix stays in the pool as cache (unless an internal error
        leaves it in doubt)."""
        if slot.cache is not None:
            slot.cache.release(keep)
        slot.job, slot.seq, slot.cache = None, None, None
