"""Generation for one request at a time, on camelid.engine: `stream_generate` (text chunks) and the
token-level `prefill` / `generate_step` for code that drives the network itself.

Every front end consumes the engine: text pieces that never split a UTF-8 character, then one chunk
that says why generation stopped and how fast it ran.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from camelid.engine import (DEFAULT_BATCH, GenerationChunk, GenerationStats, Request, StopStringMatcher, generate,
                            reusable_prefix)
from camelid.errors import CamelidError
from camelid.model.cache import KVCache
from camelid.model.llama import LlamaModel
from camelid.sampling import Sampler, SamplingParams
from camelid.tokenizer import Tokenizer

__all__ = ["DEFAULT_BATCH", "GenerationChunk", "GenerationStats", "StopStringMatcher", "generate_step", "prefill",
           "stream_generate"]


def prefill(model: LlamaModel, cache: KVCache, prompt: Sequence[int], n_batch: int = DEFAULT_BATCH) -> tuple[np.ndarray, int]:
    """Bring the cache to hold exactly `prompt`, reusing what `camelid.engine.reusable_prefix` allows.

    Returns the logits after the last prompt token (n_vocab,) and how many tokens were reused.
    """
    if not prompt:
        raise CamelidError("the prompt is empty; give some text (or let the model add a BOS token).")
    if len(prompt) >= cache.n_ctx:
        raise CamelidError(
            f"the prompt is {len(prompt)} tokens but the context holds {cache.n_ctx}; use a larger context (-c) or a shorter prompt."
        )
    reused = reusable_prefix(cache, prompt, model.batch_rules(), n_batch)
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
    request = Request(list(prompt), max_tokens, sampling or SamplingParams(), stop, ignore_eos, deadline=deadline)
    return generate(model, tokenizer, request, cache, n_batch)
