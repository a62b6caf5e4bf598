"""llama.cpp's activation rounding before a quantized product, in Numba, for the kernels.

The same functions as the NumPy reference camelid/quant/activations.py (which documents the rules
and is checked against ggml's), bit for bit, writing into flat arrays the kernels read:

- `quantize_q8_0_or_1`: ggml's AVX2 quantize_row_q8_0 / quantize_row_q8_1 (32 values per block),
  for the Q4_0, Q5_0, Q8_0 (Q8_0) and Q4_1, Q5_1 (Q8_1, with block sums) weights.
- `quantize_q8_K`: ggml's quantize_row_q8_K_ref (256 values per block), for the K-quants, with the
  sums of the codes by 16 (`bsums`); `q8_K_activations` allocates its outputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from camelid.cpu.ggml_math import round_f16
from camelid.cpu.simd import aligned_empty
from camelid.cpu.work_queue import PARALLEL_ROWS

QK8 = 32  # values per Q8_0 / Q8_1 block
QK_K = 256  # values per Q8_K block


@njit(cache=True, boundscheck=False)
def quantize_q8_0_or_1(x, with_sum, aq, ad, as_):
    """ggml's AVX2 quantize_row_q8_0, or with `with_sum` quantize_row_q8_1, of the rows of x (n, k).

    aq (n * k) int8 codes; ad (n * k/32) the float16 block scales as float32; as_ (n * k/32) the
    Q8_1 sums f16(d * sum(q)) when with_sum. Equal to activations.quantize_q8_0/_q8_1, bit for bit.
    """
    if x.shape[0] >= PARALLEL_ROWS:
        _q8_0_or_1_parallel(x, with_sum, aq, ad, as_)
    else:
        for t in range(x.shape[0]):
            _q8_0_or_1_row(x, with_sum, aq, ad, as_, t)


@njit(cache=True, parallel=True, boundscheck=False)
def _q8_0_or_1_parallel(x, with_sum, aq, ad, as_):
    for t in prange(x.shape[0]):
        _q8_0_or_1_row(x, with_sum, aq, ad, as_, t)


@njit(cache=True, inline="always")
def _q8_0_or_1_row(x, with_sum, aq, ad, as_, t):
    """Row t of `quantize_q8_0_or_1`."""
    k = x.shape[1]
    nb = k // QK8
    for b in range(nb):
        amax = np.float32(0.0)
        for i in range(QK8):
            amax = max(amax, abs(x[t, b * QK8 + i]))
        d = amax / np.float32(127.0)
        inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
        total = 0
        for i in range(QK8):
            q = np.int8(np.rint(x[t, b * QK8 + i] * inv))  # _mm256_round_ps: float32 to nearest even
            aq[t * k + b * QK8 + i] = q
            total += q
        ad[t * nb + b] = round_f16(d)
        if with_sum:
            as_[t * nb + b] = round_f16(d * np.float32(total))


@njit(cache=True, boundscheck=False, fastmath={"nnan", "ninf", "nsz", "reassoc"})
def _abs_max(x, t, o):
    """The largest |x[t, o:o+256]| (any order gives the same maximum: it vectorizes with these flags)."""
    m = np.float32(0.0)
    for i in range(o, o + QK_K):
        m = max(m, abs(x[t, i]))
    return m


@njit(cache=True, boundscheck=False)
def quantize_q8_K(x, q, d, sums16):
    """ggml's quantize_row_q8_K_ref of the rows of x (n, k): q (n * k) int8 codes, d (n * k/256)
    float32 scales, sums16 (n * k/16) int32 sums of the codes by 16. Equal to
    activations.quantize_q8_K, bit for bit (the largest magnitude's first occurrence sets the scale
    -127 / max; codes round to nearest even, at most 127)."""
    if x.shape[0] >= PARALLEL_ROWS:
        _q8_K_parallel(x, q, d, sums16)
    else:
        for t in range(x.shape[0]):
            _q8_K_row(x, q, d, sums16, t)


@njit(cache=True, parallel=True, boundscheck=False)
def _q8_K_parallel(x, q, d, sums16):
    for t in prange(x.shape[0]):
        _q8_K_row(x, q, d, sums16, t)


@njit(cache=True, inline="always")
def _q8_K_row(x, q, d, sums16, t):
    """Row t of `quantize_q8_K`."""
    k = x.shape[1]
    nb = k // QK_K
    for b in range(nb):
        o = b * QK_K
        amax = _abs_max(x, t, o)
        vmax = np.float32(0.0)
        for i in range(o, o + QK_K):
            if abs(x[t, i]) == amax:
                vmax = x[t, i]
                break
        if amax == 0:
            d[t * nb + b] = 0
            for i in range(QK_K):
                q[t * k + o + i] = 0
            for i in range(16):
                sums16[(t * nb + b) * 16 + i] = 0
            continue
        iscale = np.float32(-127.0) / vmax
        for j in range(16):
            total = 0
            for i in range(o + 16 * j, o + 16 * j + 16):
                c = np.int32(min(np.float32(127.0), np.rint(iscale * x[t, i])))
                q[t * k + i] = c
                total += c
            sums16[(t * nb + b) * 16 + j] = total
        d[t * nb + b] = np.float32(1.0) / iscale


def q8_K_activations(x: np.ndarray, n_rows: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (n_tok, n_in) -> Q8_K codes (n_rows * n_in) int8, scales (n_rows * n_in/256) float32, and the
    codes' sums by 16 (n_rows * n_in/16) int32, where rows past n_tok (up to n_rows, for whole AMX
    tiles) are zeros; the codes start on a 64-byte line."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_tok, n_in = x.shape
    n_rows = max(n_rows, n_tok)
    q = aligned_empty(n_rows * n_in, np.int8)
    q[n_tok * n_in:] = 0
    d = np.zeros(n_rows * (n_in // QK_K), np.float32)
    sums16 = np.zeros(n_rows * (n_in // 16), np.int32)
    quantize_q8_K(x, q[:n_tok * n_in], d[:n_tok * (n_in // QK_K)], sums16[:n_tok * (n_in // 16)])
    return q, d, sums16
