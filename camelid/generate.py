"""Token generation in three layers: prefill -> generate_step (tokens) -> stream_generate (text).

Every front end consumes stream_generate: it yields text pieces that never split a UTF-8 character
and ends with one chunk that says why generation stopped and how fast it ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from camelid.errors import CamelidError
from camelid.model.cache import KVCache
from camelid.model.llama import LlamaModel
from camelid.sampling import Sampler, SamplingParams
from camelid.tokenizer import Tokenizer
from camelid.tokenizer.streaming import StreamingDetokenizer

DEFAULT_BATCH = 512  # prompt tokens per forward call


@dataclass
class GenerationStats:
    """What one generation processed and how fast."""

    prompt_tokens: int = 0  # tokens in the prompt
    cached_tokens: int = 0  # prompt tokens whose keys and values were reused from the cache
    generated_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        processed = self.prompt_tokens - self.cached_tokens
        return processed / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


@dataclass
class GenerationChunk:
    """One step of a stream: new text (possibly empty), the token that produced it, and at the end
    finish_reason ("stop": end-of-generation token or stop string, "length": token limit,
    "context": the context is full) with the stats."""

    text: str
    token: int | None = None
    finish_reason: str | None = None
    stats: GenerationStats | None = None


def prefill(model: LlamaModel, cache: KVCache, prompt: Sequence[int], n_batch: int = DEFAULT_BATCH) -> tuple[np.ndarray, int]:
    """Bring the cache to hold exactly `prompt`, reusing its longest common prefix.

    Returns the logits after the last prompt token (n_vocab,) and how many tokens were reused.
    """
    if not prompt:
        raise CamelidError("the prompt is empty; give some text (or let the model add a BOS token).")
    if len(prompt) >= cache.n_ctx:
        raise CamelidError(
            f"the prompt is {len(prompt)} tokens but the context holds {cache.n_ctx}; use a larger context (-c) or a shorter prompt."
        )
    reused = min(cache.common_prefix(prompt), len(prompt) - 1)  # recompute at least one token for its logits
    cache.truncate(reused)
    logits = None
    for i in range(reused, len(prompt), n_batch):
        logits = model.forward(prompt[i:i + n_batch], cache, last_only=True)
    return logits[-1], reused


def generate_step(model: LlamaModel, cache: KVCache, logits: np.ndarray, sampler: Sampler) -> Iterator[int]:
    """Sample a token from logits, feed it, repeat: an endless stream of token ids.

    The caller stops it; it raises nothing when the context fills (the caller checks cache.n_free).
    """
    while True:
        token = sampler(logits, cache.tokens)
        yield token
        logits = model.forward([token], cache, last_only=True)[-1]


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


def stream_generate(
    model: LlamaModel,
    tokenizer: Tokenizer,
    prompt: Sequence[int],
    cache: KVCache,
    *,
    max_tokens: int = 256,
    sampling: SamplingParams | None = None,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    n_batch: int = DEFAULT_BATCH,
    deadline: float | None = None,
) -> Iterator[GenerationChunk]:
    """Generate a continuation of `prompt` (token ids) as a stream of text chunks.

    Stops at an end-of-generation token (unless ignore_eos), when a stop string appears (the stop
    string itself is not emitted), after max_tokens tokens (max_tokens < 0: no limit), when
    time.monotonic() reaches `deadline` (finish_reason "length", as for max_tokens), or when the
    context is full. The last chunk carries finish_reason and stats.
    """
    sampler = Sampler(sampling or SamplingParams())
    stats = GenerationStats(prompt_tokens=len(prompt))
    t0 = time.perf_counter()
    logits, stats.cached_tokens = prefill(model, cache, list(prompt), n_batch)
    t1 = time.perf_counter()
    stats.prompt_seconds = t1 - t0
    detok = StreamingDetokenizer(tokenizer, continuation=True)
    matcher = StopStringMatcher(stop)
    finish = "length"
    steps = generate_step(model, cache, logits, sampler)
    while max_tokens < 0 or stats.generated_tokens < max_tokens:
        if cache.n_free <= 0:
            finish = "context"
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        token = next(steps)
        stats.generated_tokens += 1
        if token in tokenizer.eog_ids and not ignore_eos:
            finish = "stop"
            break
        text, stopped = matcher.feed(detok.add_token(token))
        if stopped:
            stats.generation_seconds = time.perf_counter() - t1
            yield GenerationChunk(text, token, "stop", stats)
            return
        if text:
            yield GenerationChunk(text, token)
        if stats.generated_tokens == max_tokens:
            break
    steps.close()
    text, stopped = matcher.feed(detok.finalize(drop_incomplete=True))
    if stopped:
        finish = "stop"
    else:
        text += matcher.flush()
    stats.generation_seconds = time.perf_counter() - t1
    yield GenerationChunk(text, None, finish, stats)
