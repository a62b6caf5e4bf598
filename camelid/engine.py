"""The generation engine: requests in, streams of chunks out, many sequences decoded in one pass.

Each `Engine.step()` processes at most one prompt chunk (of the sequence with the least prompt left,
so a short new request is not stuck behind a long one), then samples the next token of every
sequence whose prompt is done and feeds all those tokens through the network together
(LlamaModel.decode). A sequence's arithmetic does not depend on the others: its prompt rows get the
arithmetic of the batches `camelid run` computes (the prompt split at multiples of n_batch; it runs
in smaller chunks, which let other streams move in between, only where every row's arithmetic stays
the same), and a decoding row is computed as a one-token batch. So a request gives the same tokens
alone or among others, and, with the prefix reuse of `reusable_prefix`, whatever its cache held.

Per request: sampling settings, stop strings, end-of-generation handling, a token limit, a deadline,
log-probabilities of the sampled tokens, and a `token_mask` hook (called before each sample with the
tokens generated so far; it returns a boolean (n_vocab,) array of allowed tokens, or None).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from camelid.errors import CamelidError
from camelid.model.cache import KVCache
from camelid.sampling import Sampler, SamplingParams
from camelid.tokenizer.streaming import StreamingDetokenizer

DEFAULT_BATCH = 512  # prompt tokens per forward call, llama.cpp's n_ubatch
PROMPT_CHUNK = 128  # prompt tokens per engine step, where the rows' arithmetic stays that of n_batch batches

# (token bytes, logprob, [(alternative bytes, logprob), ...]) for one generated token
TokenLogprob = tuple[bytes, float, list[tuple[bytes, float]]]


@dataclass
class GenerationStats:
    """What one generation processed and how fast."""

    prompt_tokens: int = 0  # tokens in the prompt
    cached_tokens: int = 0  # prompt tokens whose keys and values were reused from the cache
    generated_tokens: int = 0
    prompt_seconds: float = 0.0  # time of this request's prompt batches
    generation_seconds: float = 0.0  # from the end of the prompt to the last token

    @property
    def prompt_tokens_per_s(self) -> float:
        processed = self.prompt_tokens - self.cached_tokens
        return processed / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


@dataclass
class GenerationChunk:
    """One step of a stream: new text (possibly empty), the token that produced it, the
    log-probabilities of the tokens sampled since the last chunk (when asked for), and at the end
    finish_reason ("stop": end-of-generation token or stop string, "length": token limit or
    deadline, "context": the context is full, "error": `error` stopped it) with the stats."""

    text: str
    token: int | None = None
    finish_reason: str | None = None
    stats: GenerationStats | None = None
    logprobs: list[TokenLogprob] | None = None
    error: Exception | None = None


@dataclass
class Request:
    """What to generate. prompt: token ids; max_tokens < 0: until the context is full; ignore_eos:
    end-of-generation tokens are never sampled (llama.cpp's --ignore-eos); deadline:
    time.monotonic() at which generation ends as if max_tokens were reached; top_logprobs: how many
    alternatives to report with each token's log-probability (None: no log-probabilities).

    For an interactive session (`camelid run`): reverse_prompts end generation once the text of the
    reply holds one in its last len + reverse_prompt_slack characters (the text is emitted, the token
    fed); penalize_reply_only applies the repetition penalties to the reply's tokens, not the whole
    context; feed_last feeds the last token too (the session goes on from it); make_room(n) is
    called when the cache is full and may free n positions (a context shift), returning whether it did.
    """

    prompt: Sequence[int]
    max_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    top_logprobs: int | None = None
    deadline: float | None = None
    token_mask: Callable[[list[int]], np.ndarray | None] | None = None
    reverse_prompts: Sequence[str] = ()
    reverse_prompt_slack: int = 0
    penalize_reply_only: bool = False
    feed_last: bool = False
    make_room: Callable[[int], bool] | None = None


class StopStringMatcher:
    """Holds back text that could be the start of a stop string; reports a completed one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was reached)."""
        self.pending += text
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                out, self.pending = self.pending[:at], ""
                return out, True
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _row_arithmetic(length: int, start: int, n_batch: int, rules: set[str]) -> list[tuple[bool, bool, bool]]:
    """For prompt rows start..length-1 fed in batches of n_batch from `start`: what, under the
    products' batch rules (QTensor.batch_rules), decides each row's arithmetic: a batch of one token
    (vec_dot in the products and the attention), of 8 or more ("tiled"), the row in the last n % 4 of
    its batch of n ("gemm")."""
    unknown = "unknown" in rules
    rows = []
    for b0 in range(start, length, n_batch):
        n = min(n_batch, length - b0)
        tiled = n >= 8 and (unknown or "tiled" in rules)
        rows += [(n == 1, tiled, (unknown or "gemm" in rules) and i >= n - n % 4) for i in range(n)]
    return rows


def reusable_prefix(cache: KVCache, prompt: Sequence[int], rules: set[str], n_batch: int = DEFAULT_BATCH) -> int:
    """How many leading prompt tokens to keep from the cache: as many of its common prefix with the
    prompt as leave every recomputed row with the arithmetic it has in a fresh cache (llama.cpp's
    kernels round a row differently in batches of different sizes; `rules` are the network's
    batch_rules), and at least the last prompt token to recompute for its logits. So a prompt gives
    the same answer whatever the cache held before."""
    longest = max(0, min(cache.common_prefix(prompt), len(prompt) - 1))
    if "unknown" in rules:
        return 0
    fresh = _row_arithmetic(len(prompt), 0, n_batch, rules)
    for keep in (longest, max(0, longest - 1), longest - longest % 4, longest - longest % n_batch):
        if _row_arithmetic(len(prompt), keep, n_batch, rules) == fresh[keep:]:
            return keep
    return 0


class GenerationSequence:
    """One request in the engine: its cache, sampler, text state and progress."""

    def __init__(self, request: Request, cache: KVCache, tokenizer, rules: set[str], n_batch: int, chunk: int,
                 logits: np.ndarray | None = None, sampler: Sampler | None = None):
        prompt = list(request.prompt)
        if not prompt:
            raise CamelidError("the prompt is empty; give some text (or let the model add a BOS token).")
        if len(prompt) >= cache.n_ctx and logits is None:
            raise CamelidError(f"the prompt is {len(prompt)} tokens but the context holds {cache.n_ctx}; "
                               "use a larger context (-c) or a shorter prompt.")
        self.request, self.cache, self.prompt = request, cache, prompt
        self.sampler = sampler or Sampler(request.sampling)
        self.detok = StreamingDetokenizer(tokenizer, continuation=True)
        self.matcher = StopStringMatcher(request.stop)
        if logits is not None and cache.tokens != prompt:
            raise ValueError("a sequence that starts from logits needs its whole prompt in the cache")
        self.rules, self.n_batch, self.chunk = rules, n_batch, chunk
        self.stats = GenerationStats(prompt_tokens=len(prompt), cached_tokens=len(prompt) if logits is not None else 0)
        self.begun = logits is not None
        self.batch = n_batch
        self.generated: list[int] = []
        self.logits = logits  # (n_vocab,) after the last token fed; None while the prompt runs
        self.logprobs: list[TokenLogprob] = []
        self.prompt_done_at = time.perf_counter()
        self.reply_text = ""  # what the reply printed so far, when reverse prompts are watched
        self.finish_after_feed: str | None = None  # the finish reason once the last sampled token is fed
        self.finished = False

    @property
    def prompt_left(self) -> int:
        if self.logits is not None:
            return 0
        return len(self.prompt) - (self.cache.n_past if self.begun else 0)

    def begin(self) -> None:
        """Before the first prompt batch: keep the reusable part of the cache's prefix (a pooled
        cache finds it in what other sequences have processed by now) and choose the batch size."""
        cached = reusable_prefix(self.cache, self.prompt, self.rules, self.n_batch)
        self.cache.keep_prefix(self.prompt, cached)
        self.stats.cached_tokens = cached
        # the prompt runs in chunks, if they give every row the arithmetic of n_batch batches
        rows = functools.partial(_row_arithmetic, len(self.prompt), cached, rules=self.rules)
        self.batch = self.chunk if self.chunk < self.n_batch and rows(self.chunk) == rows(self.n_batch) else self.n_batch
        self.begun = True


class Engine:
    """Runs requests on a network (LlamaModel) and a tokenizer, each in a KV cache of its own.

    `add` starts a request in a cache, `step` advances every sequence and returns what each produced,
    `remove` drops a sequence at once (its cache keeps the tokens processed so far, for reuse).
    """

    def __init__(self, network, tokenizer, n_batch: int = DEFAULT_BATCH, chunk: int = PROMPT_CHUNK):
        self.network, self.tokenizer, self.n_batch, self.chunk = network, tokenizer, n_batch, chunk
        self.rules = network.batch_rules()
        self.sequences: list[GenerationSequence] = []

    def add(self, request: Request, cache: KVCache, logits: np.ndarray | None = None,
            sampler: Sampler | None = None) -> GenerationSequence:
        """Start `request` in `cache`, reusing the cache's common prefix with the prompt; or, given the
        logits after the prompt, which the cache then holds whole, generate from there. sampler: one
        to continue (its random state), instead of a new one from request.sampling."""
        if any(s.cache is cache for s in self.sequences):
            raise ValueError("that cache is in use by another sequence")
        seq = GenerationSequence(request, cache, self.tokenizer, self.rules, self.n_batch, self.chunk, logits, sampler)
        self.sequences.append(seq)
        return seq

    def remove(self, seq: GenerationSequence) -> None:
        if seq in self.sequences:
            self.sequences.remove(seq)

    def finish(self, seq: GenerationSequence, reason: str) -> GenerationChunk:
        """End a sequence now (e.g. "interrupted"): its held-back text and stats."""
        self.remove(seq)
        return self._finish(seq, reason)

    def step(self) -> list[tuple[GenerationSequence, GenerationChunk]]:
        """One prompt batch (if any prompt is left) and one token of every sequence past its prompt.

        Returns (sequence, chunk) for each sequence that produced text, log-probabilities or its end;
        a finished sequence leaves the engine. An exception in the network or the sampler ends the
        sequences it concerns with finish_reason "error" (the exception in chunk.error).
        """
        out, feeding = [], []
        prefilling = [s for s in self.sequences if s.logits is None]
        if prefilling:
            seq = min(prefilling, key=lambda s: s.prompt_left)
            try:
                self._prompt_batch(seq)
            except Exception as exc:
                out.append((seq, self._fail(seq, exc)))
        for seq in [s for s in self.sequences if s.logits is not None]:
            try:
                chunk = self._next_token(seq)
            except Exception as exc:
                chunk = self._fail(seq, exc)
            if seq.finished:
                self.remove(seq)
            else:
                feeding.append(seq)
            if chunk is not None:
                out.append((seq, chunk))
        if feeding:
            try:
                logits = self.network.decode([s.generated[-1] for s in feeding], [s.cache for s in feeding])
            except Exception as exc:
                return out + [(s, self._fail(s, exc)) for s in feeding]
            for s, row in zip(feeding, logits):
                s.logits = row
                if s.finish_after_feed is not None:
                    self.remove(s)
                    out.append((s, self._finish(s, s.finish_after_feed)))
        return out

    def _fail(self, seq: GenerationSequence, error: Exception) -> GenerationChunk:
        self.remove(seq)
        seq.finished = True
        return GenerationChunk("", None, "error", seq.stats, error=error)

    def _prompt_batch(self, seq: GenerationSequence) -> None:
        """Feed the sequence's next prompt chunk (seq.batch tokens)."""
        if not seq.begun:
            seq.begin()
        done = seq.cache.n_past
        stop = min(len(seq.prompt), done + seq.batch)
        t0 = time.perf_counter()
        logits = self.network.forward(seq.prompt[done:stop], seq.cache, last_only=True)
        seq.prompt_done_at = time.perf_counter()
        seq.stats.prompt_seconds += seq.prompt_done_at - t0
        if stop == len(seq.prompt):
            seq.logits = logits[-1]

    def _next_token(self, seq: GenerationSequence) -> GenerationChunk | None:
        """Sample the sequence's next token (or end it); the chunk to report, if any."""
        r = seq.request
        if r.max_tokens == 0 or (r.deadline is not None and time.monotonic() >= r.deadline):
            return self._finish(seq, "length")
        full = seq.cache.n_free < 1 and not (r.make_room is not None and r.make_room(1))
        if full and r.feed_last:
            return self._finish(seq, "context")
        logits = seq.logits
        if r.ignore_eos:  # as llama.cpp: end-of-generation tokens get a logit bias of -inf
            logits = logits.copy()
            logits[list(self.tokenizer.eog_ids)] = -np.inf
        if r.token_mask is not None and (allowed := r.token_mask(seq.generated)) is not None:
            logits = np.where(allowed, logits, np.float32(-np.inf))
        token = seq.sampler(logits, seq.generated if r.penalize_reply_only else seq.cache.tokens)
        if r.top_logprobs is not None:
            seq.logprobs.append(self._logprob_entry(seq.logits, token, r.top_logprobs))
        seq.generated.append(token)
        seq.stats.generated_tokens += 1
        if token in self.tokenizer.eog_ids:
            return self._finish(seq, "stop", token=token)
        piece = seq.detok.add_token(token)
        text, stopped = seq.matcher.feed(piece)
        if stopped:
            return self._finish(seq, "stop", text, token, stop_string=True)
        if full:  # the token cannot be fed: the last one
            return self._finish(seq, "context", text, token)
        if r.reverse_prompts:
            seq.reply_text += piece
            if any(a in seq.reply_text[-(len(a) + r.reverse_prompt_slack):] for a in r.reverse_prompts):
                seq.finish_after_feed = "reverse_prompt"
        if len(seq.generated) == r.max_tokens and seq.finish_after_feed is None:
            if not r.feed_last:
                return self._finish(seq, "length", text, token)
            seq.finish_after_feed = "length"
        if text or seq.logprobs:
            return GenerationChunk(text, token, logprobs=self._drain_logprobs(seq))
        return None

    def _finish(self, seq: GenerationSequence, reason: str, text: str = "", token: int | None = None,
                stop_string: bool = False) -> GenerationChunk:
        """End a sequence: its last text (with whatever was held back, unless a stop string ended it)
        and its stats."""
        if not stop_string:
            tail, stopped = seq.matcher.feed(seq.detok.finalize(drop_incomplete=True))
            if stopped:
                reason = "stop"
            else:
                tail += seq.matcher.flush()
            text += tail
        seq.finished = True
        seq.stats.generation_seconds = time.perf_counter() - seq.prompt_done_at
        return GenerationChunk(text, token, reason, seq.stats, self._drain_logprobs(seq))

    @staticmethod
    def _drain_logprobs(seq: GenerationSequence) -> list[TokenLogprob] | None:
        if seq.request.top_logprobs is None:
            return None
        out, seq.logprobs = seq.logprobs, []
        return out

    def _logprob_entry(self, logits: np.ndarray, token: int, top_n: int) -> TokenLogprob:
        """The sampled token's log-probability under the network's logits (n_vocab,), with the top_n alternatives."""
        x = logits.astype(np.float64)  # (n_vocab,)
        logp = x - x.max()
        logp -= np.log(np.exp(logp).sum())
        top = np.argpartition(-logp, top_n - 1)[:top_n] if top_n else np.empty(0, dtype=np.int64)
        top = top[np.argsort(-logp[top], kind="stable")]
        piece = self.tokenizer.token_to_bytes
        return piece(token, True), float(logp[token]), [(piece(int(t), True), float(logp[t])) for t in top]


def generate(network, tokenizer, request: Request, cache: KVCache, n_batch: int = DEFAULT_BATCH) -> Iterator[GenerationChunk]:
    """One request on its own: its chunks with text (or log-probabilities), then the final one
    (finish_reason and stats)."""
    engine = Engine(network, tokenizer, n_batch, chunk=n_batch)
    engine.add(request, cache)
    while engine.sequences:
        for _, chunk in engine.step():
            if chunk.error is not None:
                raise chunk.error
            if chunk.text or chunk.logprobs or chunk.finish_reason is not None:
                yield chunk
