"""How the kernels lay weights out: row groups, interleaving, nibble packing, K-quant unpacking.

Every kernel family lays a weight matrix out once per tensor (at `QTensor.prepare`) so that its inner
loop reads contiguous memory:

- float32 families (q32_float.py, kq_float.py): groups of `R` = 64 rows interleaved, the innermost
  index running over the group's rows, so that the loop over rows vectorizes. Codes as int8,
  (n_groups, n_in, R), or two 4-bit codes per byte, (n_groups, n_in/2, R); per-block values as
  (n_groups, n_blocks, R). `load4` / `acts4` / `load2` / `acts2` read them (see below).
- int8 families (q32_int8.py, kq_int8.py): groups of `ROWS` = 16 rows, one int32 lane per row, 64
  bytes per step (4 weights of 16 rows): byte (row r, j) of step s holds weight 4s+j of row r at
  byte 4r+j, (n_groups, n_in/4, 16, 4) uint8. 4-bit codes pack 8 weights per step: weight 8s+j in
  the low nibble, 8s+4+j in the high nibble of byte 4r+j, (n_groups, n_in/8, 16, 4) uint8, the
  file's size. `step_codes` reads a step, `store_group` writes a group's 16 outputs.

- AMX tiles (q32_int8.py, kq_int8.py, on CPUs with AMX): a group's 4-bit codes unpacked to bytes,
  one B tile of 8 rows x 64 bytes per 32 weights, and the tile products of two such blocks at a time
  (`start_tiles`, `next_tiles`), 16 tokens per A tile.

Rows are padded with zeros to whole groups. Index arithmetic in the hot loops is uint64: with signed
indices Numba emits a negative-index wraparound that stops LLVM from vectorizing.

4-bit codes in the float32 families: a byte b = lo + 16 * hi holds weights 2k (lo) and 2k+1 (hi) of
a row, as codes 0..15 that the type shifts by `off` (8 for Q4_0). With h = floor(b / 16), a pair's
product is
  (lo - off) * x0 + (hi - off) * x1 = b * x0 + h * (x1 - 16 * x0) - off * (x0 + x1),
so the kernels load (b, h) per byte and transform the activations once per lane instead of per row.
Every term is an integer below 2^24, so the float32 sums are exact in any order and equal ggml's
integer dot products; splitting bytes in float32 also keeps the loops at full SIMD width, where byte
arithmetic would be widened to int64.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from camelid.cpu import amx
from camelid.cpu import simd as v
from camelid.quant.types import QK_K, k_scales_mins

T = GGMLQuantizationType
U = np.uint64
R = 64  # float32 families: weight rows interleaved per group, the vector width of the inner loops
ROWS = 16  # int8 families: rows per group, one int32 lane each
STEP_BYTES = 64  # int8 families: one step, 4 bytes of each of the 16 rows
QK = QK_K  # weights per K-quant super-block

NIBBLE_TYPES = (T.Q4_0, T.Q4_1, T.Q4_K)  # kept two codes per byte, the file's size
# K-quant kinds as the kernels take them (module-level ints are compile-time constants in Numba)
KIND_Q4_K, KIND_Q5_K, KIND_Q6_K = 4, 5, 6
K_KIND = {T.Q4_K: KIND_Q4_K, T.Q5_K: KIND_Q5_K, T.Q6_K: KIND_Q6_K}


# ---------------------------------------------------------------------------- unpacking blocks

def codes_q32(recs: np.ndarray, t: GGMLQuantizationType) -> np.ndarray:
    """(n_blocks,) Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 records -> (n_blocks, 32) int8 codes whose integer dot
    product is ggml's (Q4_0 as nibble - 8, Q5_0 as q5 - 16, Q4_1/Q5_1 unsigned, Q8_0 as stored)."""
    if t == T.Q8_0:
        return recs["qs"].astype(np.int8)
    qs = recs["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # (n, 32) nibbles in weight order
    if t in (T.Q5_0, T.Q5_1):
        q = q | (np.unpackbits(recs["qh"], axis=1, bitorder="little") << 4)
    q = q.astype(np.int8)
    if t == T.Q4_0:
        q -= 8
    elif t == T.Q5_0:
        q -= 16
    return q


def unpack_k(recs: np.ndarray, t: GGMLQuantizationType):
    """(n,) K-quant records -> codes (n, 256) uint8, d, dmin (n,), scales (n, n_sub), mins (n, 8).

    Codes are unsigned (Q6_K's 0..63, its offset 32 left to the kernels); n_sub is 16 for Q6_K (int8
    scales, no mins: dmin and mins are zeros), else 8; d, dmin, scales and mins as float32.
    """
    n = len(recs)
    if t == T.Q6_K:
        ql = recs["ql"].reshape(n, 2, 1, 64)
        low = np.concatenate([ql & 0x0F, ql >> 4], axis=2).reshape(n, 2, 4, 32)
        qh = recs["qh"].reshape(n, 2, 1, 32)
        high = (qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 0x03
        codes = (low | (high << 4)).reshape(n, QK)
        return codes, recs["d"].astype(np.float32), np.zeros(n, np.float32), recs["scales"].astype(np.float32), np.zeros((n, 8), np.float32)
    qs = recs["qs"].reshape(n, 4, 1, 32)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
    if t == T.Q5_K:
        codes = codes | (np.unpackbits(recs["qh"][:, None, :], axis=1, count=8, bitorder="little") << 4)
    sc, mn = k_scales_mins(recs["scales"])
    return codes.reshape(n, QK), recs["d"].astype(np.float32), recs["dmin"].astype(np.float32), sc.astype(np.float32), mn.astype(np.float32)


# ---------------------------------------------------------------------------- float32 families

def interleave_rows(a: np.ndarray, n_groups: int, rows: int = R) -> np.ndarray:
    """(n_out, k) -> flat (n_groups, k, rows), rows padded with zeros to n_groups * rows."""
    n_out, k = a.shape
    full = np.zeros((n_groups * rows, k), dtype=a.dtype)
    full[:n_out] = a
    return np.ascontiguousarray(full.reshape(n_groups, rows, k).transpose(0, 2, 1)).reshape(-1)


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
    """Activations at..at+3 as float32, transformed to pair with load4's weights, and the
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
    """Activations at, at+1 as float32, transformed to pair with load2's weights."""
    x0 = np.float32(aq[at])
    x1 = np.float32(aq[at + U(1)])
    if nibbles:
        return x0, x1 - np.float32(16.0) * x0
    return x0, x1


# ---------------------------------------------------------------------------- int8 families

def steps_interleaved(codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_out, n_in) uint8 byte codes -> the flat int8 step layout, (n_groups, n_in/4, 16, 4)
    (4-bit codes go through pack_nibble_steps instead)."""
    n_out, n_in = codes.shape
    full = np.zeros((n_groups * ROWS, n_in), np.uint8)
    full[:n_out] = codes
    steps = full.reshape(n_groups, ROWS, n_in // 4, 4)  # (group, row, step, j)
    return np.ascontiguousarray(steps.transpose(0, 2, 1, 3)).reshape(-1)


@njit(cache=True, parallel=True, boundscheck=False)
def pack_nibble_steps(raw, type_size, qs_at, k_quant, w):
    """The 4-bit codes of Q4_0 / Q4_1 / Q4_K blocks, raw (n_out, n_blocks * type_size) bytes, into
    the int8 families' nibble step layout w (padding rows of the last group zero). In a Q4_0/Q4_1
    block, weight i < 16 is the low nibble of code byte i, weight 16 + i its high nibble; in a Q4_K
    block, weight 64c + i (i < 32) is the low nibble of code byte 32c + i, weight 64c + 32 + i its
    high nibble."""
    n_out, row_bytes = raw.shape
    n_blocks = row_bytes // type_size
    block_weights = 256 if k_quant else 32
    n_in = n_blocks * block_weights
    n_groups = (n_out + ROWS - 1) // ROWS
    group_bytes = n_in // 2 * ROWS
    for g in prange(n_groups):
        for r in range(ROWS):
            row = g * ROWS + r
            for s in range(n_in // 8):  # the row's 8-weight steps
                wo = g * group_bytes + s * 64 + r * 4
                for j in range(4):
                    if row < n_out:
                        w[wo + j] = _nibble(raw, row, type_size, qs_at, k_quant, 8 * s + j) | (
                            _nibble(raw, row, type_size, qs_at, k_quant, 8 * s + 4 + j) << np.uint8(4))
                    else:
                        w[wo + j] = 0


@njit(cache=True, inline="always")
def _nibble(raw, row, type_size, qs_at, k_quant, i):
    """Code of weight i of a row of 4-bit blocks (see pack_nibble_steps)."""
    if k_quant:
        b, k = i // 256, i % 256
        byte, high = qs_at + 32 * (k // 64) + k % 32, k % 64 >= 32
    else:
        b, k = i // 32, i % 32
        byte, high = qs_at + k % 16, k >= 16
    val = raw[row, b * type_size + byte]
    return val >> np.uint8(4) if high else val & np.uint8(0x0F)


@njit(cache=True, inline="always")
def step_codes(w, o, nibbles):
    """The two 4-weight code vectors of an 8-weight step at byte o: the low and high nibbles of one
    64-byte step, or two consecutive byte steps."""
    if nibbles:
        packed = v.load_bytes(w, o)
        return v.low_nibbles(packed), v.high_nibbles(packed)
    return v.load_bytes(w, o), v.load_bytes(w, o + U(64))


@njit(cache=True, inline="always")
def store_group(out, at, n_valid, acc, tmp):
    """Write a group's 16 outputs (one F32x16) to out[at:at + n_valid] (fewer in a last, partial group)."""
    if n_valid >= ROWS:
        v.store_f32(out, at, acc)
    else:
        v.store_f32(tmp, 0, acc)
        for r in range(n_valid):
            out[at + r] = tmp[r]


# ---------------------------------------------------------------------------- AMX tiles of the int8 layout
# Tiles 0, 1 hold A (16 tokens x 32 activation codes, `a_tiles`) and 2, 3 B (a block's 8 rows of 64
# bytes) of a pair's even and odd block; C (16 tokens x 16 rows int32) goes to 4, 5 and 6, 7 for
# alternate pairs, so that one pair's products run while the last pair's become floats. A tile
# store costs about what a product does, and three times that when not 64-byte aligned.

TILE_TOKENS = 16  # tokens per A tile
TILE_BLOCK = 32  # weights per block product (K)
BLOCK_BYTES = 8 * 64  # one block's B tile: 8 rows of 64 bytes
A_TILE_BYTES = TILE_TOKENS * TILE_BLOCK  # one block's A tile: 16 tokens x 32 codes
C_TILE = TILE_TOKENS * ROWS  # int32 sums per C tile, (16 tokens, 16 rows)
TILE_CONFIG = amx.tile_config({0: (16, 32), 1: (16, 32), 2: (8, 64), 3: (8, 64), 4: (16, 64), 5: (16, 64), 6: (16, 64), 7: (16, 64)})


@njit(cache=True, parallel=True, boundscheck=False)
def a_tiles(aq, n_rows, n_in, k):
    """Activation codes aq (n_rows * n_in, n_rows a multiple of 16) as A tiles of 16 tokens x k
    codes, each tile's rows together: (n_rows / 16, n_in / k, 16, k) int8, from a 64-byte line. A
    tile whose rows lie n_in apart loads slower (measured 15% of the Q4_K kernel's time)."""
    n_k = n_in // k
    out = amx.aligned_empty(n_rows * n_in, np.int8)
    for tile in prange(n_rows // TILE_TOKENS):
        for kb in range(n_k):
            for t in range(TILE_TOKENS):
                src = (tile * TILE_TOKENS + t) * n_in + kb * k
                dst = ((tile * n_k + kb) * TILE_TOKENS + t) * k
                out[dst:dst + k] = aq[src:src + k]
    return out


@njit(cache=True, inline="always")
def nibble_tiles(w, wg, n_blocks, offset, codes):
    """A group's 4-bit codes (nibble steps from byte wg of w), less `offset`, as one B tile per 32
    weights: row 2k the low nibbles of the block's step k, row 2k+1 its high nibbles, (n_blocks, 8,
    16, 4) int8."""
    offsets = v.broadcast_i32(offset * 0x01010101)
    for s in range(n_blocks * U(4)):
        packed = v.load_bytes(w, wg + s * U(64))
        v.store_bytes(codes, s * U(128), v.sub_bytes(v.low_nibbles(packed), offsets))
        v.store_bytes(codes, s * U(128) + U(64), v.sub_bytes(v.high_nibbles(packed), offsets))


def tile_pipeline(start_a, store_a, start_b, store_b):
    """`next_tiles(aq, a_at, codes, k, n_steps, sums)` for kernels whose steps alternate between two
    sets of C tiles: start(aq, a_at, codes, k) issues step k's products, store(sums) stores them.
    It starts step k + 1 (if any) in the other set, then stores step k's, so that the tile unit
    works while the vector units turn step k's sums into floats."""
    @njit(inline="always")
    def next_tiles(aq, a_at, codes, k, n_steps, sums):
        if k % U(2) == U(0):
            if k + U(1) < n_steps:
                start_b(aq, a_at, codes, k + U(1))
            store_a(sums)
        else:
            if k + U(1) < n_steps:
                start_a(aq, a_at, codes, k + U(1))
            store_b(sums)

    return next_tiles


def _tile_pair(c_even: int, c_odd: int):
    """(start, store) of the products of pair p, blocks 2p and 2p + 1, in C tiles c_even, c_odd."""
    @njit(inline="always")
    def start(aq, a_at, codes, p):
        b = U(2) * p
        amx.zero(c_even)
        amx.load(0, aq, a_at + b * U(A_TILE_BYTES), TILE_BLOCK)
        amx.load(2, codes, b * U(BLOCK_BYTES), 64)
        amx.dot(c_even, 0, 2)
        amx.zero(c_odd)
        amx.load(1, aq, a_at + (b + U(1)) * U(A_TILE_BYTES), TILE_BLOCK)
        amx.load(3, codes, (b + U(1)) * U(BLOCK_BYTES), 64)
        amx.dot(c_odd, 1, 3)

    @njit(inline="always")
    def store(sums):
        amx.store(c_even, sums, 0, 64)
        amx.store(c_odd, sums, C_TILE, 64)

    return start, store


_start_a, _store_a = _tile_pair(4, 5)
_start_b, _store_b = _tile_pair(6, 7)


@njit(cache=True, inline="always")
def start_tiles(aq, a_at, codes):
    """Start the products of blocks 0 and 1: the 16 tokens' A tiles (`a_tiles` with k = 32) from
    aq[a_at:] times B tiles `codes`."""
    _start_a(aq, a_at, codes, U(0))


next_tiles = tile_pipeline(_start_a, _store_a, _start_b, _store_b)
next_tiles.__doc__ = """Start the products of pair p + 1 (blocks 2p + 2, 2p + 3) if there is one, then store
pair p's: sums[:C_TILE] block 2p, sums[C_TILE:2 * C_TILE] block 2p + 1, each (16 tokens, 16 rows)
int32. Called as next_tiles(aq, a_at, codes, p, n_pairs, sums)."""


@njit(cache=True, inline="always")
def single_tile(aq, a_at, codes, b, sums):
    """Block b's product alone (an odd last block), stored to sums[:C_TILE]."""
    amx.zero(4)
    amx.load(0, aq, a_at + b * U(A_TILE_BYTES), TILE_BLOCK)
    amx.load(2, codes, b * U(BLOCK_BYTES), 64)
    amx.dot(4, 0, 2)
    amx.store(4, sums, 0, 64)
