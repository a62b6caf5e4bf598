"""4-bit weight codes kept two per byte, and the exact way the kernels multiply them.

A byte b = lo + 16 * hi holds weights 2k (lo) and 2k+1 (hi) of a row, as codes
0..15 that the type shifts by `off` (8 for Q4_0). With h = floor(b / 16), a pair's product is
  (lo - off) * x0 + (hi - off) * x1 = b * x0 + h * (x1 - 16 * x0) - off * (x0 + x1),
so the kernels load (b, h) per byte and transform the activations once per lane instead of per
row. Every term is an integer below 2^24, so the float32 sums are exact in any order and equal
ggml's integer dot products; splitting bytes in float32 also keeps the loops at full SIMD width,
where byte arithmetic would be widened to int64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

U = np.uint64


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(n, k) codes 0..15 in weight order -> (n, k/2) uint8, weight 2j in the low nibble of byte j."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


@njit(cache=True, inline="always")
def load4(q, p, nibbles, o, o2, uR, r):
    """Weights i..i+3 of row r of a group: int8 codes q at o (one row-stride apart), or for packed
    nibbles p at o2 the (b, h) of bytes i/2 and i/2+1, as float32."""
    if nibbles:
        b0 = np.float32(p[o2 + r])
        b1 = np.float32(p[o2 + uR + r])
        return b0, np.floor(b0 * np.float32(0.0625)), b1, np.floor(b1 * np.float32(0.0625))
    return (np.float32(q[o + r]), np.float32(q[o + uR + r]), np.float32(q[o + U(2) * uR + r]),
            np.float32(q[o + U(3) * uR + r]))


@njit(cache=True, inline="always")
def acts4(aq, at, nibbles, off):
    """Activations at..at+3 as float32, transformed to pair with _load4's weights, and the
    correction to subtract from the lane sum."""
    x0 = np.float32(aq[at])
    x1 = np.float32(aq[at + U(1)])
    x2 = np.float32(aq[at + U(2)])
    x3 = np.float32(aq[at + U(3)])
    if nibbles:
        return x0, x1 - np.float32(16.0) * x0, x2, x3 - np.float32(16.0) * x2, off * (x0 + x1 + x2 + x3)
    return x0, x1, x2, x3, np.float32(0.0)


@njit(cache=True, inline="always")
def load2(q, p, nibbles, o, o2, uR, r):
    """Weights i, i+1 of row r of a group as float32: codes, or (b, h) of byte i/2 (see load4)."""
    if nibbles:
        b = np.float32(p[o2 + r])
        return b, np.floor(b * np.float32(0.0625))
    return np.float32(q[o + r]), np.float32(q[o + uR + r])


@njit(cache=True, inline="always")
def acts2(aq, at, nibbles):
    """Activations at, at+1 as float32, transformed to pair with _load2's weights."""
    x0 = np.float32(aq[at])
    x1 = np.float32(aq[at + U(1)])
    if nibbles:
        return x0, x1 - np.float32(16.0) * x0
    return x0, x1


