"""Turn one step's logits into the next token: penalties, filters, temperature, a seeded draw.

The chain and its defaults follow llama.cpp's default sampler chain (common/sampling.cpp):
penalties -> top-k -> top-p -> min-p -> temperature -> draw from the softmax. Each step is a small
function over a float32 logits vector that returns a new vector with -inf for the tokens it
removed, so it can be tested alone. `Sampler` composes them; after top-k it works on the few
surviving candidates only, which keeps a call on a 150k vocabulary around a millisecond.

Ties are broken by token id everywhere: among equal logits the lower id ranks first.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from camelid.errors import CamelidError

__all__ = [
    "SamplingParams", "Sampler", "apply_penalties", "top_k_filter", "top_p_filter",
    "min_p_filter", "apply_temperature", "softmax",
]

# Above this many candidates, top-p first tries the best _TOP_P_PROBE by partial sort (as llama.cpp does)
# and sorts everything only when their mass falls short of p.
_TOP_P_PROBE = 256
_TOP_P_PROBE_MIN_N = 1024
_TOP_K_SAMPLE_STRIDE = 64  # top-k first finds a threshold among every 64th logit


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    try:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an int beyond float's range
        return False


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token, with llama.cpp's defaults and meaning of "disabled".

    temperature <= 0 means greedy (argmax after penalties, no randomness). top_k <= 0, top_p == 1.0
    and min_p == 0.0 disable their filter. repeat_penalty 1.0 disables it; it divides positive and
    multiplies negative logits of tokens seen in the last repeat_last_n tokens of the history
    (0 disables, -1 means the whole history), and frequency_penalty * count + presence_penalty is
    subtracted from the same tokens. seed None draws from OS entropy; an int makes a run repeat exactly.
    Nonsense values raise CamelidError.
    """

    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 40  # keep the k most likely tokens; <= 0 keeps all
    top_p: float = 0.95  # keep the smallest set of tokens whose mass reaches p; 1.0 keeps all
    min_p: float = 0.05  # drop tokens less likely than min_p * the top token's probability; 0 keeps all
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # penalty window over the history; 0: off, -1: whole history
    presence_penalty: float = 0.0  # subtracted once from every token in the window
    frequency_penalty: float = 0.0  # subtracted once per occurrence in the window
    seed: int | None = None  # None: random each run

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_real(value):
                raise CamelidError(f"sampling parameter {name} must be a finite number, got {value!r}.")
        for name in ("top_k", "repeat_last_n"):
            value = getattr(self, name)
            if not _is_int(value):
                raise CamelidError(f"sampling parameter {name} must be an integer, got {value!r}.")
        if not 0.0 < self.top_p <= 1.0:
            raise CamelidError(f"top_p must be in (0, 1], got {self.top_p}; use 1.0 to disable top-p.")
        if not 0.0 <= self.min_p <= 1.0:
            raise CamelidError(f"min_p must be in [0, 1], got {self.min_p}; use 0 to disable min-p.")
        if self.repeat_penalty <= 0.0:
            raise CamelidError(
                f"repeat_penalty must be greater than 0, got {self.repeat_penalty}; "
                "use 1.0 to disable it, values above 1 (e.g. 1.1) discourage repetition."
            )
        if self.repeat_last_n < -1:
            raise CamelidError(
                f"repeat_last_n must be -1 (whole history), 0 (off) or a positive window, got {self.repeat_last_n}."
            )
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise CamelidError(
                f"seed must be a non-negative integer, or None for a random seed (llama.cpp's -1), got {self.seed!r}."
            )

    @property
    def greedy(self) -> bool:
        """True when the temperature asks for plain argmax."""
        return self.temperature <= 0.0


# ---- the individual steps, each on a 1-D logits vector -------------------------------------------


def _check_logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array (n_vocab,), got shape {x.shape}")
    return x


def _masked(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """A copy of x with every position not in keep set to -inf."""
    out = np.full(x.shape, -np.inf, dtype=x.dtype)
    out[keep] = x[keep]
    return out


def _window(history: Sequence[int], last_n: int) -> np.ndarray:
    if last_n == 0 or len(history) == 0:
        return np.empty(0, dtype=np.int64)
    recent = history if last_n < 0 else history[-last_n:]
    return np.asarray(recent, dtype=np.int64).reshape(-1)


def apply_penalties(
    logits: np.ndarray,
    history: Sequence[int],
    *,
    repeat_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    last_n: int = 64,
) -> np.ndarray:
    """Return a copy of logits with llama.cpp's repetition penalties applied.

    Each distinct token among the last `last_n` entries of `history` (0: none, -1: all) is penalized
    once: its logit is divided by repeat_penalty if positive and multiplied by it otherwise, then
    count * frequency_penalty + presence_penalty is subtracted, count being its occurrences in the window.
    """
    x = _check_logits(logits)
    out = np.array(x, dtype=np.float32, copy=True)
    window = _window(history, last_n)
    if window.size == 0 or (repeat_penalty == 1.0 and frequency_penalty == 0.0 and presence_penalty == 0.0):
        return out
    if window.min() < 0 or window.max() >= out.size:
        bad = window[(window < 0) | (window >= out.size)][0]
        raise CamelidError(f"token id {bad} in the history is outside the vocabulary of {out.size} tokens.")
    ids, counts = np.unique(window, return_counts=True)
    vals = out[ids]
    if repeat_penalty != 1.0:
        vals = np.where(vals <= 0.0, vals * np.float32(repeat_penalty), vals / np.float32(repeat_penalty))
    vals = vals - (counts * np.float32(frequency_penalty) + np.float32(presence_penalty)).astype(np.float32)
    out[ids] = vals
    return out


def _highest(x: np.ndarray, value: float, count: int) -> np.ndarray:
    """Ascending positions of the `count` largest entries of x, whose smallest is `value`.

    Every entry above value is taken, then entries equal to value by lower position first.
    """
    mask = x > value
    n_above = int(np.count_nonzero(mask))
    if n_above < count:
        mask[np.flatnonzero(x == value)[: count - n_above]] = True
    return np.flatnonzero(mask)


def _top_k_positions(x: np.ndarray, k: int) -> np.ndarray:
    """Ascending positions of the k largest values of x; at the boundary, equal values go by lower position."""
    n = x.size
    if k <= 0 or k >= n:
        return np.arange(n)
    # The k-th largest of every 64th value is at most the k-th largest of all, so the values at or
    # above it hold the top k: partition those few instead of the whole vocabulary (10x faster).
    sample = x[::_TOP_K_SAMPLE_STRIDE]
    if sample.size > k:
        threshold = np.partition(sample, sample.size - k)[sample.size - k]
        candidates = np.flatnonzero(x >= threshold)
        if candidates.size >= k:
            part = candidates[np.argpartition(x[candidates], candidates.size - k)[candidates.size - k:]]
            return _top_k_of(x, part, k)
    return _top_k_of(x, np.argpartition(x, n - k)[n - k:], k)


def _top_k_of(x: np.ndarray, part: np.ndarray, k: int) -> np.ndarray:
    """`_top_k_positions` from positions `part` of k largest values, ties at the boundary settled."""
    kth = x[part].min()
    if np.count_nonzero(x >= kth) == k:  # no tie straddles the boundary
        return np.sort(part)
    return _highest(x, kth, k)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep exactly the k highest logits (lower token id first among ties), -inf elsewhere; k <= 0 keeps all."""
    x = _check_logits(logits)
    if k <= 0 or k >= x.size:
        return x.copy()
    return _masked(x, _top_k_positions(x, k))


def _top_p_positions(x: np.ndarray, p: float) -> np.ndarray:
    """Ascending positions of the smallest highest-first prefix of x whose softmax mass reaches p (at least one)."""
    n = x.size
    if p >= 1.0 or n == 1:
        return np.arange(n)
    m = float(x.max())
    if not math.isfinite(m):
        return np.arange(n)
    z = float(np.exp(x.astype(np.float64) - m).sum())  # softmax normalizer over every token

    def cut_of(values: np.ndarray) -> tuple[np.ndarray, int]:
        desc = np.sort(values)[::-1]
        cum = np.cumsum(np.exp(desc.astype(np.float64) - m)) / z
        return desc, int(np.searchsorted(cum, p, side="left"))

    # Only the sorted values matter (ties are resolved by _highest), and the best few hundred
    # usually hold the mass: probe them by partial sort first, as llama.cpp does.
    if n > _TOP_P_PROBE_MIN_N:
        desc, cut = cut_of(np.partition(x, n - _TOP_P_PROBE)[n - _TOP_P_PROBE:])
        if cut < desc.size:
            return _highest(x, desc[cut], cut + 1)
    desc, cut = cut_of(x)
    cut = min(cut, n - 1)
    return _highest(x, desc[cut], cut + 1)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability mass reaches p.

    Probabilities are the softmax of the logits as given (llama.cpp applies top-p before temperature).
    At least one token is kept; p >= 1 keeps all; p must be > 0.
    """
    x = _check_logits(logits)
    if not 0.0 < p:
        raise CamelidError(f"top_p must be in (0, 1], got {p}.")
    if p >= 1.0:
        return x.copy()
    return _masked(x, _top_p_positions(x, p))


def _min_p_positions(x: np.ndarray, min_p: float) -> np.ndarray:
    """Ascending positions whose probability is at least min_p times the largest one."""
    if min_p <= 0.0:
        return np.arange(x.size)
    m = float(x.max())
    return np.flatnonzero(x >= m + math.log(min_p))  # p_i >= min_p * p_max, in logit space


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Remove tokens whose probability is below min_p times the most likely token's; 0 keeps all."""
    x = _check_logits(logits)
    if not 0.0 <= min_p <= 1.0:
        raise CamelidError(f"min_p must be in [0, 1], got {min_p}.")
    if min_p == 0.0:
        return x.copy()
    return _masked(x, _min_p_positions(x, min_p))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Return logits / temperature (temperature > 0; greedy decoding is the Sampler's job)."""
    x = _check_logits(logits)
    if not temperature > 0.0:
        raise CamelidError(f"temperature must be > 0 to scale logits, got {temperature}; use greedy decoding for 0.")
    return (x / np.float32(temperature)).astype(x.dtype, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities (float64) of a logits vector; -inf entries get exactly 0."""
    x = _check_logits(logits).astype(np.float64)
    w = np.exp(x - x.max())
    return w / w.sum()


# ---- the chain ---------------------------------------------------------------------------------------


class Sampler:
    """The sampler chain for one generation, owning its seeded random generator.

    `sampler(logits, history)` returns the next token id. logits is the float32 (n_vocab,) output of
    the model for the last position and is not modified; history holds the token ids in the context
    so far (prompt and generated), of which the last repeat_last_n are penalized.
    """

    def __init__(self, params: SamplingParams | None = None):
        self.params = params if params is not None else SamplingParams()
        self.rng = np.random.default_rng(self.params.seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the random stream from `seed` (None: fresh OS entropy)."""
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise CamelidError(f"seed must be a non-negative integer or None, got {seed!r}.")
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        x = apply_penalties(
            logits, history, repeat_penalty=p.repeat_penalty, frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty, last_n=p.repeat_last_n,
        )
        nan = np.isnan(x)
        if nan.any():
            x[nan] = -np.inf  # a NaN logit is no candidate
        if p.greedy:
            best = int(np.argmax(x))
            if not math.isfinite(float(x[best])):
                raise CamelidError(_NO_CANDIDATE)
            return best
        # From here on work on the surviving candidates only: ids ascending, vals their logits.
        ids = _top_k_positions(x, p.top_k)
        vals = x[ids]
        if not math.isfinite(float(vals.max())):
            raise CamelidError(_NO_CANDIDATE)
        keep = _top_p_positions(vals, p.top_p)
        ids, vals = ids[keep], vals[keep]
        keep = _min_p_positions(vals, p.min_p)
        ids, vals = ids[keep], vals[keep]
        return int(ids[self._draw(vals / np.float32(p.temperature))])

    def _draw(self, vals: np.ndarray) -> int:
        """Index drawn from softmax(vals) with the sampler's generator."""
        if vals.size == 1:
            return 0
        w = np.exp((vals - vals.max()).astype(np.float64))
        cum = np.cumsum(w)
        u = self.rng.random() * cum[-1]
        return min(int(np.searchsorted(cum, u, side="right")), vals.size - 1)


_NO_CANDIDATE = (
    "every logit is -inf or NaN, so there is no token to sample; the model produced invalid output "
    "(check the model file and its quantization type)."
)
