"""Prompt and generation speed of a model, measured the way llama-bench measures llama.cpp.

A prompt test feeds `n_prompt` random token ids to an empty cache in batches of `n_batch` and times
the whole prefill; a generation test feeds `n_gen` tokens one at a time (logits of the last token
only), starting from an empty cache, and times them all. Neither samples nor detokenizes, so the
numbers compare the engines, not the front ends. Each test runs once to warm up, then `repetitions`
times; the result keeps every run so callers can print the median and the spread.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from camelid.errors import CamelidError


@dataclass
class SpeedResult:
    """Tokens per second of each repetition of one test."""

    test: str  # "pp512" or "tg128", as llama-bench names them
    n_tokens: int
    tokens_per_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) over the repetitions."""
        return min(self.tokens_per_s), max(self.tokens_per_s)


def _random_tokens(n_vocab: int, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_vocab, size=n).tolist()


def time_prompt(model, tokens: list[int], n_batch: int) -> float:
    """Seconds to prefill `tokens` into a fresh cache, in batches of n_batch."""
    cache = model.new_cache(len(tokens) + 1)
    start = time.perf_counter()
    for i in range(0, len(tokens), n_batch):
        model.forward(tokens[i:i + n_batch], cache, last_only=True)
    return time.perf_counter() - start


def time_generation(model, tokens: list[int]) -> float:
    """Seconds to feed `tokens` one at a time into a fresh cache."""
    cache = model.new_cache(len(tokens) + 1)
    start = time.perf_counter()
    for t in tokens:
        model.forward([t], cache, last_only=True)
    return time.perf_counter() - start


def time_batched_generation(model, tokens: list[list[int]]) -> float:
    """Seconds to feed several sequences' tokens (one list each, of equal length) into fresh caches,
    one token of every sequence per forward pass (LlamaModel.decode, as the server's batched step)."""
    caches = [model.new_cache(len(row) + 1) for row in tokens]
    start = time.perf_counter()
    for step in zip(*tokens):
        model.network.decode(list(step), caches)
    return time.perf_counter() - start


def run_bench(model, n_prompt: int = 512, n_gen: int = 128, repetitions: int = 5, n_batch: int = 512, seed: int = 1234,
              n_parallel: int = 1) -> list[SpeedResult]:
    """Measure prompt (n_prompt tokens) and generation (n_gen tokens) speed; 0 skips a test. With
    n_parallel > 1, also generation of n_parallel sequences at once ("tg128 x8": tokens per second in
    total, over all sequences)."""
    for name, value in (("prompt length", n_prompt), ("generation length", n_gen), ("batch size", n_batch)):
        if value < 0:
            raise CamelidError(f"the {name} must not be negative, not {value}.")
    if repetitions < 1:
        raise CamelidError(f"the number of repetitions must be at least 1, not {repetitions}.")
    if n_batch < 1:
        raise CamelidError("the batch size must be at least 1.")
    if n_parallel < 1:
        raise CamelidError(f"the number of parallel sequences must be at least 1, not {n_parallel}.")
    n_vocab = model.tokenizer.n_vocab
    limit = model.config.n_ctx_train
    for name, value in (("prompt", n_prompt), ("generation", n_gen)):
        if value >= limit:
            raise CamelidError(f"the {name} test needs {value} positions but the model was trained for {limit}; use a smaller one.")
    results = []
    if n_prompt:
        tokens = _random_tokens(n_vocab, n_prompt, seed)
        result = SpeedResult(f"pp{n_prompt}", n_prompt)
        time_prompt(model, tokens, n_batch)
        for _ in range(repetitions):
            result.tokens_per_s.append(n_prompt / time_prompt(model, tokens, n_batch))
        results.append(result)
    if n_gen:
        tokens = _random_tokens(n_vocab, n_gen, seed + 1)
        result = SpeedResult(f"tg{n_gen}", n_gen)
        time_generation(model, tokens[:min(n_gen, 16)])
        for _ in range(repetitions):
            result.tokens_per_s.append(n_gen / time_generation(model, tokens))
        results.append(result)
    if n_gen and n_parallel > 1:
        rows = [_random_tokens(n_vocab, n_gen, seed + 2 + i) for i in range(n_parallel)]
        result = SpeedResult(f"tg{n_gen} x{n_parallel}", n_gen * n_parallel)
        time_batched_generation(model, [row[:min(n_gen, 16)] for row in rows])
        for _ in range(repetitions):
            result.tokens_per_s.append(n_gen * n_parallel / time_batched_generation(model, rows))
        results.append(result)
    return results


@dataclass
class ProfileRow:
    """Where generation time goes: one function, or the Python that glues the numeric calls."""

    name: str
    ms_per_token: float
    calls_per_token: float


def profile_generation(model, n_gen: int = 32, top: int = 12, seed: int = 1234) -> tuple[float, list[ProfileRow]]:
    """Profile feeding n_gen tokens one at a time; return (ms per token, rows).

    Rows are the functions with the most own time (compiled kernels, NumPy calls, Python functions),
    and a last row "python (interpreter, all functions)" summing the own time of every function
    defined in Python source, which is the per-token cost of the interpreter. cProfile adds its own
    cost to every Python call, so that row is an upper bound.
    """
    import cProfile
    import pstats

    tokens = _random_tokens(model.tokenizer.n_vocab, n_gen, seed)
    time_generation(model, tokens[:4])
    profiler = cProfile.Profile()
    cache = model.new_cache(n_gen + 1)
    start = time.perf_counter()
    profiler.enable()
    for t in tokens:
        model.forward([t], cache, last_only=True)
    profiler.disable()
    ms_per_token = (time.perf_counter() - start) * 1000 / n_gen
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    compiled = {key for key, (_cc, _nc, _tt, _ct, _callers) in stats.items() if _is_compiled(key)}
    rows = []
    python_ms = 0.0
    for key, (_cc, n_calls, tottime, _cumtime, _callers) in stats.items():
        ms = tottime * 1000 / n_gen
        if key[0] != "~" and key not in compiled:
            python_ms += ms
        rows.append(ProfileRow(_label(key, key in compiled), ms, n_calls / n_gen))
    rows.sort(key=lambda r: r.ms_per_token, reverse=True)
    return ms_per_token, rows[:top] + [ProfileRow("python (interpreter, all functions)", python_ms, float("nan"))]


def _is_compiled(key) -> bool:
    """Whether a profiler entry is a Numba-compiled kernel (its dispatcher's own time is the machine code's)."""
    filename, _line, name = key
    return "camelid" in filename and name.startswith("_") and filename.endswith(".py") and _numba_function(filename, name)


def _numba_function(filename: str, name: str) -> bool:
    import sys

    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == filename:
            from numba.core.registry import CPUDispatcher

            return isinstance(getattr(module, name, None), CPUDispatcher)
    return False


def _label(key, compiled: bool) -> str:
    filename, line, name = key
    if filename == "~":
        return name  # a built-in: NumPy method or C function
    short = filename.split("camelid/")[-1] if "camelid/" in filename else filename.rsplit("/", 1)[-1]
    return f"{name} ({short}{', compiled' if compiled else ''})"
