"""The 32-weight-block products (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) on integer dot products.

Same results as kernels.py's float32 kernels, bit for bit, with the integer sums done the way
llama.cpp does them: `vpdpbusd` (AVX-512 VNNI; simd.dot_bytes, which falls back to vpmaddubsw +
vpmaddwd on AVX2) multiplies 4 unsigned weight codes by 4 signed int8 activations and adds the
products into an int32 lane. One vector holds 16 rows, one lane per row, so the activations are
broadcast and nothing is summed across lanes.

Layout, per group of 16 rows (rows padded with zeros to a multiple of 16), 64 bytes per step:
- 4-bit codes (Q4_0, Q4_1), 8 weights per step: byte (row r, j) of step s holds weight 8s+j in its
  low nibble and weight 8s+4+j in its high nibble, at byte 4r+j. (n_groups, n_in/8, 16, 4) uint8,
  the file's size.
- other codes (Q5_0, Q5_1 as 0..31, Q8_0 as q+128), 4 weights per step: weight 4s+j of row r at
  byte 4r+j. (n_groups, n_in/4, 16, 4) uint8.
- block scales and mins as float16 bits, (n_groups, n_blocks, 16) uint16.

Codes are unsigned, so each type's offset `off` (8 for Q4_0, 16 for Q5_0, 128 for Q8_0) comes back
as a correction: the int32 accumulators start at -off times the sum of their activations
(`_activation_sums`), and every integer sum equals ggml's.

Float order, as in kernels.py: llama.cpp's repacked Q4_0 gemv/gemm keeps one accumulator per output,
acc = fma(f32(block sum), d_w * d_a, acc) (`_mm_lanes1`); the other types keep 8 lanes of 4 products
per block, acc_j = fma(d_w * d_a, f32(lane j), acc_j), summed as ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)),
plus the Q8_1 min terms (`_mm_lanes8`).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from camelid.cpu import simd as v
from camelid.quant.types import BLOCK_TYPES
from camelid.quant.kernels import _quantize_q8, interleave_rows

U = np.uint64
ROWS = 16  # rows per group: one int32 lane each
PACK_ROWS = 4096  # rows laid out per step at load time


def _n_chunks(n_groups: int) -> int:
    return max(1, min(n_groups, numba.get_num_threads()))


@njit(cache=True, boundscheck=False)
def _activation_sums(aq, n_tok, n_in, off, sums4, sums32):
    """-off times the sums of the int8 activations aq (n_tok * n_in) by 4 (sums4) and by 32 (sums32)."""
    for t in range(n_tok):
        for b in range(n_in // 32):
            block = 0
            for j in range(8):
                o = t * n_in + b * 32 + 4 * j
                s = np.int32(aq[o]) + np.int32(aq[o + 1]) + np.int32(aq[o + 2]) + np.int32(aq[o + 3])
                sums4[t * (n_in // 4) + b * 8 + j] = -off * s
                block += s
            sums32[t * (n_in // 32) + b] = -off * block


@njit(cache=True, inline="always")
def _store_rows(out, at, n_valid, acc, tmp):
    """Write a group's 16 outputs to out[at:at + n_valid]."""
    if n_valid >= ROWS:
        v.store_f32(out, at, acc)
    else:
        v.store_f32(tmp, 0, acc)
        for r in range(n_valid):
            out[at + r] = tmp[r]


@njit(cache=True, inline="always")
def _step_codes(w, o, nibbles):
    """The two 4-weight code vectors of an 8-weight step at byte o (see the module's layout)."""
    if nibbles:
        packed = v.load_bytes(w, o)
        return v.low_nibbles(packed), v.high_nibbles(packed)
    return v.load_bytes(w, o), v.load_bytes(w, o + U(64))


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_lanes1(w, d, aq, ad, sums32, n_out, n_in, n_tok, out, n_chunks):
    """out (n_tok * n_out) in the repacked-Q4_0 order, from 4-bit codes; tokens 4 at a time, then 1 by 1."""
    nb = U(n_in // 32)
    uin = U(n_in)
    uout = U(n_out)
    n_groups = (n_out + ROWS - 1) // ROWS
    per = (n_groups + n_chunks - 1) // n_chunks
    group_bytes = U(n_in // 2 * ROWS)
    n4 = U(n_tok - n_tok % 4)
    for c in prange(n_chunks):
        tmp = np.empty(ROWS, np.float32)
        for g in range(U(c * per), U(min(n_groups, (c + 1) * per))):
            wg = g * group_bytes
            dg = g * nb * U(ROWS)
            row0 = g * U(ROWS)
            n_valid = min(U(ROWS), uout - row0)
            for t in range(U(0), n4, U(4)):
                acc0 = v.zeros_f32()
                acc1 = v.zeros_f32()
                acc2 = v.zeros_f32()
                acc3 = v.zeros_f32()
                for b in range(nb):
                    s0 = v.broadcast_i32(sums32[t * nb + b])
                    s1 = v.broadcast_i32(sums32[(t + U(1)) * nb + b])
                    s2 = v.broadcast_i32(sums32[(t + U(2)) * nb + b])
                    s3 = v.broadcast_i32(sums32[(t + U(3)) * nb + b])
                    for s in range(U(4)):
                        lo, hi = _step_codes(w, wg + (b * U(4) + s) * U(64), True)
                        a = t * uin + b * U(32) + s * U(8)
                        s0 = v.dot_bytes(v.dot_bytes(s0, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                        a += uin
                        s1 = v.dot_bytes(v.dot_bytes(s1, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                        a += uin
                        s2 = v.dot_bytes(v.dot_bytes(s2, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                        a += uin
                        s3 = v.dot_bytes(v.dot_bytes(s3, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                    dw = v.load_f16(d, dg + b * U(ROWS))
                    acc0 = v.fma(v.to_f32(s0), v.mul(dw, v.broadcast_f32(ad[t * nb + b])), acc0)
                    acc1 = v.fma(v.to_f32(s1), v.mul(dw, v.broadcast_f32(ad[(t + U(1)) * nb + b])), acc1)
                    acc2 = v.fma(v.to_f32(s2), v.mul(dw, v.broadcast_f32(ad[(t + U(2)) * nb + b])), acc2)
                    acc3 = v.fma(v.to_f32(s3), v.mul(dw, v.broadcast_f32(ad[(t + U(3)) * nb + b])), acc3)
                _store_rows(out, t * uout + row0, n_valid, acc0, tmp)
                _store_rows(out, (t + U(1)) * uout + row0, n_valid, acc1, tmp)
                _store_rows(out, (t + U(2)) * uout + row0, n_valid, acc2, tmp)
                _store_rows(out, (t + U(3)) * uout + row0, n_valid, acc3, tmp)
            for t in range(n4, U(n_tok)):
                acc = v.zeros_f32()
                for b in range(nb):
                    isum = v.broadcast_i32(sums32[t * nb + b])
                    for s in range(U(4)):
                        lo, hi = _step_codes(w, wg + (b * U(4) + s) * U(64), True)
                        a = t * uin + b * U(32) + s * U(8)
                        isum = v.dot_bytes(v.dot_bytes(isum, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                    dw = v.load_f16(d, dg + b * U(ROWS))
                    acc = v.fma(v.to_f32(isum), v.mul(dw, v.broadcast_f32(ad[t * nb + b])), acc)
                _store_rows(out, t * uout + row0, n_valid, acc, tmp)


@njit(cache=True, inline="always")
def _lane_pair(w, o, nibbles, aq, a, sums4, si, dsc, acc_lo, acc_hi):
    """One 8-weight step of a token: lanes 2s and 2s+1 of the block, added to their accumulators."""
    lo, hi = _step_codes(w, o, nibbles)
    lane_lo = v.dot_bytes(v.broadcast_i32(sums4[si]), lo, v.broadcast_bytes4(aq, a))
    lane_hi = v.dot_bytes(v.broadcast_i32(sums4[si + U(1)]), hi, v.broadcast_bytes4(aq, a + U(4)))
    return v.fma(dsc, v.to_f32(lane_lo), acc_lo), v.fma(dsc, v.to_f32(lane_hi), acc_hi)


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_lanes8(w, nibbles, d, m, has_min, aq, ad, as_, sums4, n_out, n_in, n_tok, out, n_chunks):
    """out (n_tok * n_out) in ggml's 8-lane vec_dot order, from 4-bit or byte codes, token by token."""
    nb = U(n_in // 32)
    n4 = U(n_in // 4)
    uin = U(n_in)
    uout = U(n_out)
    n_groups = (n_out + ROWS - 1) // ROWS
    per = (n_groups + n_chunks - 1) // n_chunks
    step_bytes = U(64 if nibbles else 128)  # per 8 weights of 16 rows
    group_bytes = U(n_in // 8) * step_bytes
    for c in prange(n_chunks):
        tmp = np.empty(ROWS, np.float32)
        for g in range(U(c * per), U(min(n_groups, (c + 1) * per))):
            wg = g * group_bytes
            dg = g * nb * U(ROWS)
            row0 = g * U(ROWS)
            n_valid = min(U(ROWS), uout - row0)
            for t in range(U(n_tok)):
                acc0 = v.zeros_f32()
                acc1 = v.zeros_f32()
                acc2 = v.zeros_f32()
                acc3 = v.zeros_f32()
                acc4 = v.zeros_f32()
                acc5 = v.zeros_f32()
                acc6 = v.zeros_f32()
                acc7 = v.zeros_f32()
                mins = v.zeros_f32()
                for b in range(nb):
                    dsc = v.mul(v.load_f16(d, dg + b * U(ROWS)), v.broadcast_f32(ad[t * nb + b]))
                    o = wg + b * U(4) * step_bytes
                    a = t * uin + b * U(32)
                    si = t * n4 + b * U(8)
                    acc0, acc1 = _lane_pair(w, o, nibbles, aq, a, sums4, si, dsc, acc0, acc1)
                    acc2, acc3 = _lane_pair(w, o + step_bytes, nibbles, aq, a + U(8), sums4, si + U(2), dsc, acc2, acc3)
                    acc4, acc5 = _lane_pair(w, o + U(2) * step_bytes, nibbles, aq, a + U(16), sums4, si + U(4), dsc, acc4, acc5)
                    acc6, acc7 = _lane_pair(w, o + U(3) * step_bytes, nibbles, aq, a + U(24), sums4, si + U(6), dsc, acc6, acc7)
                    if has_min:
                        mins = v.fma(v.load_f16(m, dg + b * U(ROWS)), v.broadcast_f32(as_[t * nb + b]), mins)
                total = v.add(v.add(v.add(acc0, acc4), v.add(acc2, acc6)), v.add(v.add(acc1, acc5), v.add(acc3, acc7)))
                if has_min:
                    total = v.add(total, mins)
                _store_rows(out, t * uout + row0, n_valid, total, tmp)


def _steps_interleaved(codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_out, n_in) uint8 byte codes -> the flat step layout of the module docstring (4-bit codes
    go through pack_nibble_codes instead)."""
    n_out, n_in = codes.shape
    full = np.zeros((n_groups * ROWS, n_in), np.uint8)
    full[:n_out] = codes
    steps = full.reshape(n_groups, ROWS, n_in // 4, 4)  # (group, row, step, j)
    return np.ascontiguousarray(steps.transpose(0, 2, 1, 3)).reshape(-1)


@njit(cache=True, parallel=True, boundscheck=False)
def pack_nibble_codes(raw, type_size, qs_at, k_quant, w):
    """The 4-bit codes of Q4_0 / Q4_1 / Q4_K blocks, raw (n_out, n_blocks * type_size) bytes, into
    the module's step layout w (padding rows of the last group zero). In a Q4_0/Q4_1 block, weight
    i < 16 is the low nibble of code byte i, weight 16 + i its high nibble; in a Q4_K block, weight
    64c + i (i < 32) is the low nibble of code byte 32c + i, weight 64c + 32 + i its high nibble."""
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
    """Code of weight i of a row of 4-bit blocks (see pack_nibble_codes)."""
    if k_quant:
        b, k = i // 256, i % 256
        byte, high = qs_at + 32 * (k // 64) + k % 32, k % 64 >= 32
    else:
        b, k = i // 32, i % 32
        byte, high = qs_at + k % 16, k >= 16
    v = raw[row, b * type_size + byte]
    return v >> np.uint8(4) if high else v & np.uint8(0x0F)


class PackedQ32Vnni:
    """A 32-weight-block matrix laid out for the VNNI kernels (see the module docstring)."""

    def __init__(self, raw: np.ndarray, t, n_out: int, n_in: int, repacked_q4_0: bool, codes_u8, off: int,
                 nibbles: bool, has_min: bool):
        bt = BLOCK_TYPES[t]
        n_blocks = n_in // 32
        self.n_groups = n_groups = (n_out + ROWS - 1) // ROWS
        self.nibbles, self.off, self.has_min = nibbles, np.int32(off), has_min
        group_bytes = n_in // 2 * ROWS if nibbles else n_in * ROWS
        self.w = v.aligned_empty(n_groups * group_bytes, np.uint8)
        self.d = v.aligned_empty(n_groups * n_blocks * ROWS, np.uint16)
        self.m = v.aligned_empty(n_groups * n_blocks * ROWS if has_min else 0, np.uint16)
        if nibbles:
            pack_nibble_codes(np.ascontiguousarray(raw), bt.type_size, bt.dtype.fields["qs"][1], False, self.w)
        for r0 in range(0, n_out, PACK_ROWS):
            r1 = min(n_out, r0 + PACK_ROWS)
            g0, g1 = r0 // ROWS, (r1 + ROWS - 1) // ROWS
            recs = np.ascontiguousarray(raw[r0:r1]).reshape(-1).view(bt.dtype)
            if not nibbles:
                self.w[g0 * group_bytes:g1 * group_bytes] = _steps_interleaved(codes_u8(recs).reshape(r1 - r0, n_in), g1 - g0)
            self.d[g0 * n_blocks * ROWS:g1 * n_blocks * ROWS] = interleave_rows(recs["d"].view(np.uint16).reshape(r1 - r0, n_blocks), g1 - g0, ROWS)
            if has_min:
                self.m[g0 * n_blocks * ROWS:g1 * n_blocks * ROWS] = interleave_rows(recs["m"].view(np.uint16).reshape(r1 - r0, n_blocks), g1 - g0, ROWS)
        self.n_out, self.n_in = n_out, n_in
        self.lanes = 1 if repacked_q4_0 else 8
        self.copies_weights = True

    def matmul(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.n_out), np.float32)
        _matmul(self.w, self.nibbles, self.off, self.d, self.m, self.has_min, self.lanes == 1, x, self.n_out,
                out.reshape(-1), _n_chunks(self.n_groups))
        return out


@njit(cache=True, boundscheck=False)
def _matmul(w, nibbles, off, d, m, has_min, lanes1, x, n_out, out, n_chunks):
    """Quantize the activations x (n_tok, n_in) as llama.cpp does, then run the kernel: one call from Python."""
    n_tok, n_in = x.shape
    nb = n_in // 32
    aq = np.empty(n_tok * n_in, np.int8)
    ad = np.empty(n_tok * nb, np.float32)
    s = np.empty(n_tok * nb if has_min else 0, np.float32)
    _quantize_q8(x, has_min, aq, ad, s)
    sums4 = np.empty(n_tok * n_in // 4, np.int32)
    sums32 = np.empty(n_tok * nb, np.int32)
    _activation_sums(aq, n_tok, n_in, off, sums4, sums32)
    if lanes1:
        _mm_lanes1(w, d, aq, ad, sums32, n_out, n_in, n_tok, out, n_chunks)
    else:
        _mm_lanes8(w, nibbles, d, m, has_min, aq, ad, s, sums4, n_out, n_in, n_tok, out, n_chunks)
