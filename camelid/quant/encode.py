"""Quantize float32 rows to GGML block types, byte for byte as llama.cpp's reference quantizers do.

`quantize_rows(x, ggml_type)` maps a float32 `(n_rows, n_cols)` array to the raw blocks
`(n_rows, row_bytes)` uint8 that a GGUF file stores. The 32-weight types (Q8_0, Q4_0, Q4_1, Q5_0,
Q5_1) follow ggml's `quantize_row_*_ref` (equal to gguf-py's `gguf.quants.quantize`); the K-quants
live in `encode_k.py`. K-quant rows are quantized in parallel with Numba (`numba.set_num_threads`
or `camelid.threads.set_threads` chooses how many threads); every row is independent, so the result
does not depend on the thread count. F32, F16 and BF16 are converted with NumPy.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES
from numba import njit

from camelid.errors import CamelidError
from camelid.quant.encode_k import F0, F1, put_f16, rows_q4_k, rows_q5_k, rows_q6_k

T = GGMLQuantizationType
_FLT_MAX = np.float32(3.4028234663852886e38)


@njit(cache=True, inline="always", error_model="numpy")
def _roundf(v):
    """C's roundf for |v| < 2^31: nearest integer, halves away from zero."""
    t = np.float32(np.int32(v))
    if abs(v - t) >= np.float32(0.5):
        t += F1 if v > F0 else -F1
    return t


# Q8_0: 32 weights in 34 bytes: f16 d, 32 int8 q; d = amax / 127, q = roundf(x / d)
@njit(cache=True, error_model="numpy")
def _q8_0_row(x, y):
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[34 * b:34 * b + 34]
        amax = F0
        for j in range(32):
            amax = max(amax, abs(xb[j]))
        d = amax / np.float32(127.0)
        idd = F1 / d if d != F0 else F0
        put_f16(yb, 0, d)
        for j in range(32):
            yb[2 + j] = np.uint8(np.int32(_roundf(xb[j] * idd)) & 0xFF)


@njit(cache=True, inline="always", error_model="numpy")
def _signed_max(xb):
    """The value of largest magnitude in the block (the first one on ties), as ggml picks it."""
    amax = F0
    mx = F0
    for j in range(32):
        if amax < abs(xb[j]):
            amax = abs(xb[j])
            mx = xb[j]
    return mx


@njit(cache=True, inline="always", error_model="numpy")
def _min_max(xb):
    mn = _FLT_MAX
    mx = -_FLT_MAX
    for j in range(32):
        if xb[j] < mn:
            mn = xb[j]
        if xb[j] > mx:
            mx = xb[j]
    return mn, mx


# Q4_0: 32 weights in 18 bytes: f16 d, 16 bytes qs (byte j: weight j low nibble, weight j+16 high);
# d = max / -8 (max: the signed value of largest magnitude), q = min(15, trunc(x / d + 8.5))
@njit(cache=True, error_model="numpy")
def _q4_0_row(x, y):
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[18 * b:18 * b + 18]
        d = _signed_max(xb) / np.float32(-8.0)
        idd = F1 / d if d != F0 else F0
        put_f16(yb, 0, d)
        for j in range(16):
            q0 = min(15, np.int32(xb[j] * idd + np.float32(8.5)) & 0xFF)
            q1 = min(15, np.int32(xb[j + 16] * idd + np.float32(8.5)) & 0xFF)
            yb[2 + j] = q0 | (q1 << 4)


# Q4_1: 32 weights in 20 bytes: f16 d, f16 m, 16 bytes qs as in Q4_0; d = (max - min) / 15,
# m = min, q = min(15, trunc((x - min) / d + 0.5))
@njit(cache=True, error_model="numpy")
def _q4_1_row(x, y):
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[20 * b:20 * b + 20]
        mn, mx = _min_max(xb)
        d = (mx - mn) / np.float32(15.0)
        idd = F1 / d if d != F0 else F0
        put_f16(yb, 0, d)
        put_f16(yb, 2, mn)
        for j in range(16):
            q0 = min(15, np.int32((xb[j] - mn) * idd + np.float32(0.5)) & 0xFF)
            q1 = min(15, np.int32((xb[j + 16] - mn) * idd + np.float32(0.5)) & 0xFF)
            yb[4 + j] = q0 | (q1 << 4)


@njit(cache=True, inline="always", error_model="numpy")
def _put_q5(yb, o, q0, q1, j, qh):
    """Low nibbles of 5-bit q0 (weight j) and q1 (weight j+16) into yb[o+j]; their 5th bits into qh."""
    yb[o + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
    return qh | (np.uint32((q0 & 0x10) >> 4) << np.uint32(j)) | (np.uint32((q1 & 0x10) >> 4) << np.uint32(j + 16))


@njit(cache=True, inline="always", error_model="numpy")
def _put_u32(yb, o, v):
    for k in range(4):
        yb[o + k] = np.uint8((v >> np.uint32(8 * k)) & np.uint32(0xFF))


# Q5_0: 32 weights in 22 bytes: f16 d, u32 qh (bit j: 5th bit of weight j), 16 bytes qs as in Q4_0;
# d = max / -16, q = min(31, trunc(x / d + 16.5))
@njit(cache=True, error_model="numpy")
def _q5_0_row(x, y):
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[22 * b:22 * b + 22]
        d = _signed_max(xb) / np.float32(-16.0)
        idd = F1 / d if d != F0 else F0
        put_f16(yb, 0, d)
        qh = np.uint32(0)
        for j in range(16):
            q0 = min(31, np.int32(xb[j] * idd + np.float32(16.5)) & 0xFF)
            q1 = min(31, np.int32(xb[j + 16] * idd + np.float32(16.5)) & 0xFF)
            qh = _put_q5(yb, 6, q0, q1, j, qh)
        _put_u32(yb, 2, qh)


# Q5_1: 32 weights in 24 bytes: f16 d, f16 m, u32 qh, 16 bytes qs; d = (max - min) / 31, m = min,
# q = trunc((x - min) / d + 0.5)
@njit(cache=True, error_model="numpy")
def _q5_1_row(x, y):
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[24 * b:24 * b + 24]
        mn, mx = _min_max(xb)
        d = (mx - mn) / np.float32(31.0)
        idd = F1 / d if d != F0 else F0
        put_f16(yb, 0, d)
        put_f16(yb, 2, mn)
        qh = np.uint32(0)
        for j in range(16):
            q0 = np.int32((xb[j] - mn) * idd + np.float32(0.5)) & 0xFF
            q1 = np.int32((xb[j + 16] - mn) * idd + np.float32(0.5)) & 0xFF
            qh = _put_q5(yb, 8, q0, q1, j, qh)
        _put_u32(yb, 4, qh)


# One driver per type (Numba specializes and caches each). The 32-weight types run at several GB/s
# on one thread, faster than the dequantization feeding them, so only the K-quants (rows_q4_k ...,
# 140-180 MB/s per thread) spread work over threads.
@njit(cache=True, error_model="numpy")
def _rows_q8_0(x, y):
    for r in range(x.shape[0]):
        _q8_0_row(x[r], y[r])


@njit(cache=True, error_model="numpy")
def _rows_q4_0(x, y):
    for r in range(x.shape[0]):
        _q4_0_row(x[r], y[r])


@njit(cache=True, error_model="numpy")
def _rows_q4_1(x, y):
    for r in range(x.shape[0]):
        _q4_1_row(x[r], y[r])


@njit(cache=True, error_model="numpy")
def _rows_q5_0(x, y):
    for r in range(x.shape[0]):
        _q5_0_row(x[r], y[r])


@njit(cache=True, error_model="numpy")
def _rows_q5_1(x, y):
    for r in range(x.shape[0]):
        _q5_1_row(x[r], y[r])


_BLOCK_DRIVERS = {
    T.Q8_0: _rows_q8_0, T.Q4_0: _rows_q4_0, T.Q4_1: _rows_q4_1, T.Q5_0: _rows_q5_0, T.Q5_1: _rows_q5_1,
    T.Q4_K: rows_q4_k, T.Q5_K: rows_q5_k, T.Q6_K: rows_q6_k,
}


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16): nearest-even, NaN kept quiet, as ggml_compute_fp32_to_bf16."""
    u = x.view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # no uint32 overflow: the largest non-NaN pattern, 0xFF800000, has room for the rounding bias
    rounded = np.where(nan, u | np.uint32(0x00400000), u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))))
    return (rounded >> np.uint32(16)).astype(np.uint16)


QUANTIZE_TYPES: tuple[GGMLQuantizationType, ...] = (T.F32, T.F16, T.BF16, *_BLOCK_DRIVERS)


def row_bytes(ggml_type: GGMLQuantizationType, n_cols: int) -> int:
    """Bytes of one row of n_cols weights of ggml_type (n_cols a multiple of its block size)."""
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    return n_cols // block_size * type_size


def quantize_rows(x: np.ndarray, ggml_type) -> np.ndarray:
    """Quantize float32 `x` (n_rows, n_cols) to `ggml_type`: raw blocks, uint8 (n_rows, row_bytes).

    ggml_type is a gguf.GGMLQuantizationType (or its number, or its name in any case).
    n_cols must be a multiple of the type's block size (32, or 256 for the K-quants). The bytes equal
    llama.cpp's reference quantizer for the type (what `llama-quantize` writes without an importance
    matrix); F32, F16 and BF16 return the values' bytes. Raises CamelidError for a type camelid
    cannot write or a row length that is not a whole number of blocks.
    """
    try:
        ggml_type = T[ggml_type.upper()] if isinstance(ggml_type, str) else T(ggml_type)
    except (KeyError, ValueError):
        raise CamelidError(f"unknown GGML type {ggml_type!r}") from None
    if ggml_type not in QUANTIZE_TYPES:
        valid = ", ".join(t.name for t in QUANTIZE_TYPES)
        raise CamelidError(f"camelid cannot quantize to {ggml_type.name}; it writes {valid}.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n_rows, n_cols), got shape {x.shape}")
    n_rows, n_cols = x.shape
    block_size, _ = GGML_QUANT_SIZES[ggml_type]
    if n_cols % block_size:
        raise CamelidError(
            f"rows of {n_cols} values cannot be stored as {ggml_type.name}: its blocks hold {block_size} values "
            f"and {n_cols} is not a multiple of {block_size}."
        )
    if ggml_type == T.F32:
        return x.view(np.uint8)
    if ggml_type == T.F16:
        with np.errstate(over="ignore"):  # beyond 65504: infinity, as in ggml
            return x.astype(np.float16).view(np.uint8)
    if ggml_type == T.BF16:
        return _to_bf16(x).view(np.uint8)
    out = np.empty((n_rows, row_bytes(ggml_type, n_cols)), dtype=np.uint8)
    if n_rows:
        _BLOCK_DRIVERS[ggml_type](x, out)
    return out
