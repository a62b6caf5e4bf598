"""32-weight-block products (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with float32 arithmetic, on any CPU.

The integer sums llama.cpp computes with int8 instructions are done here with float32 multiply-adds
on exactly representable integers (layout.py: codes as int8, 4-bit codes two per byte, groups of 64
rows), then combined in llama.cpp's float order (see camelid/quant/kernels/__init__.py):

- `_mm_vec` (VEC: ggml_vec_dot_q*_q8_* and tinyBLAS_Q0): per block, 8 lane sums of 4 products,
  acc[j] = fma(f32(d_w * d_a), lane_j, acc[j]); hsum_float_8 of the lanes, plus the Q8_1 min terms.
- `_mm_repacked` (REPACKED: ggml_gemv/gemm_q4_0_8x8_q8_0): one accumulator per output,
  acc = fma(f32(block integer sum), f32(d_w * d_a), acc).

Both take tokens 4 at a time (each weight code converted once for 4 tokens), then 1 by 1.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from camelid.cpu.ggml_math import f16_to_f32, fma32
from camelid.cpu.work_queue import chunk_groups, new_queue, next_chunk, work_split
from camelid.quant.kernels.activations import quantize_q8_0_or_1
from camelid.quant.kernels.layout import (NIBBLE_TYPES, R, acts2, acts4, codes_q32, interleave_rows, load2, load4,
                                          pack_nibbles)
from camelid.quant.types import BLOCK_TYPES

T = GGMLQuantizationType
U = np.uint64
PACK_ROWS = 4096  # rows unpacked per step at load time


@njit(cache=True, inline="always")
def _lanes8_finish(acc, summs, has_min, g, n_out, t, out, uR):
    """Store hsum_float_8 of the 8 lanes (+ summs) of one token's accumulators for the group's rows."""
    for r in range(uR):
        row = g * uR + r
        if row < n_out:
            s = ((acc[r] + acc[U(4) * uR + r]) + (acc[U(2) * uR + r] + acc[U(6) * uR + r])) + (
                (acc[uR + r] + acc[U(5) * uR + r]) + (acc[U(3) * uR + r] + acc[U(7) * uR + r]))
            if has_min:
                s = s + summs[r]
            out[t * n_out + row] = s


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_vec(q, p, nibbles, off, d, m, has_min, aq, ad, as_, n_out, n_in, n_tok, out, n_chunks, n_workers):
    """out (n_tok * n_out) = the 8-lane vec_dot of every weight row with every activation row.

    Weights: q (n_groups * n_in * R) int8 codes, or with `nibbles` p (n_groups * n_in/2 * R) uint8,
    two 4-bit codes per byte (weights 2k, 2k+1 of a row), each minus `off`; d, m: (n_groups *
    n_blocks * R) the float16 bits (uint16) of the scales and mins; aq: (n_tok * n_in) int8
    activation codes, ad, as_: (n_tok * n_blocks) float32 scales and Q8_1 sums. The 4 products of a
    lane and their sums are integers below 2^24, exact in float32 in any order.
    """
    n_blocks = n_in // 32
    n_groups = (n_out + R - 1) // R
    uR = U(R)
    ub = U(n_blocks)
    uin = U(n_in)
    uout = U(n_out)
    n4 = U(n_tok - n_tok % 4)
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        acc = np.zeros(4 * 8 * R, np.float32)  # (token, lane, row)
        dd = np.zeros(4 * R, np.float32)  # (token, row)
        dw = np.zeros(R, np.float32)  # the block's weight scales, widened once for 4 tokens
        summs = np.zeros(4 * R, np.float32)
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                qg = g * uin * uR
                pg = g * (uin // U(2)) * uR
                dg = g * ub * uR
                for t0 in range(U(0), n4, U(4)):
                    acc[:] = 0
                    summs[:] = 0
                    a0 = t0 * uin
                    a1 = a0 + uin
                    a2 = a1 + uin
                    a3 = a2 + uin
                    for b in range(ub):
                        db = dg + b * uR
                        for r in range(uR):
                            dw[r] = f16_to_f32(d[db + r])
                        for tt in range(U(4)):
                            da = ad[(t0 + tt) * ub + b]
                            for r in range(uR):
                                dd[tt * uR + r] = dw[r] * da
                        for j in range(U(8)):
                            i = b * U(32) + U(4) * j
                            x00, x01, x02, x03, c0 = acts4(aq, a0 + i, nibbles, off)
                            x10, x11, x12, x13, c1 = acts4(aq, a1 + i, nibbles, off)
                            x20, x21, x22, x23, c2 = acts4(aq, a2 + i, nibbles, off)
                            x30, x31, x32, x33, c3 = acts4(aq, a3 + i, nibbles, off)
                            o = qg + i * uR
                            o2 = pg + (i // U(2)) * uR
                            oa = j * uR
                            for r in range(uR):
                                w0, w1, w2, w3 = load4(q, p, nibbles, o, o2, uR, r)
                                s0 = fma32(w3, x03, fma32(w2, x02, fma32(w1, x01, w0 * x00))) - c0
                                s1 = fma32(w3, x13, fma32(w2, x12, fma32(w1, x11, w0 * x10))) - c1
                                s2 = fma32(w3, x23, fma32(w2, x22, fma32(w1, x21, w0 * x20))) - c2
                                s3 = fma32(w3, x33, fma32(w2, x32, fma32(w1, x31, w0 * x30))) - c3
                                acc[oa + r] = fma32(dd[r], s0, acc[oa + r])
                                acc[U(8) * uR + oa + r] = fma32(dd[uR + r], s1, acc[U(8) * uR + oa + r])
                                acc[U(16) * uR + oa + r] = fma32(dd[U(2) * uR + r], s2, acc[U(16) * uR + oa + r])
                                acc[U(24) * uR + oa + r] = fma32(dd[U(3) * uR + r], s3, acc[U(24) * uR + oa + r])
                        if has_min:
                            for tt in range(U(4)):
                                sa = as_[(t0 + tt) * ub + b]
                                for r in range(uR):
                                    summs[tt * uR + r] = fma32(f16_to_f32(m[db + r]), sa, summs[tt * uR + r])
                    for tt in range(U(4)):
                        _lanes8_finish(acc[tt * U(8) * uR:], summs[tt * uR:], has_min, g, uout, t0 + tt, out, uR)
                for t in range(n4, U(n_tok)):
                    acc[:] = 0
                    summs[:] = 0
                    at = t * uin
                    for b in range(ub):
                        da = ad[t * ub + b]
                        db = dg + b * uR
                        for r in range(uR):
                            dd[r] = f16_to_f32(d[db + r]) * da
                        for j in range(U(8)):
                            i = b * U(32) + U(4) * j
                            x0, x1, x2, x3, corr = acts4(aq, at + i, nibbles, off)
                            o = qg + i * uR
                            o2 = pg + (i // U(2)) * uR
                            oa = j * uR
                            for r in range(uR):
                                w0, w1, w2, w3 = load4(q, p, nibbles, o, o2, uR, r)
                                s = fma32(w3, x3, fma32(w2, x2, fma32(w1, x1, w0 * x0))) - corr
                                acc[oa + r] = fma32(dd[r], s, acc[oa + r])
                        if has_min:
                            sa = as_[t * ub + b]
                            for r in range(uR):
                                summs[r] = fma32(f16_to_f32(m[db + r]), sa, summs[r])
                    _lanes8_finish(acc, summs, has_min, g, uout, t, out, uR)
            c = next_chunk(queue, worker, n_chunks, n_workers)


@njit(cache=True, inline="always")
def _block_correction(aq, at, nibbles, off):
    """off * (the sum of the block's 32 activations from at): what nibble codes owe for their shift."""
    if not nibbles:
        return np.float32(0.0)
    total = np.float32(0.0)
    for i in range(U(32)):
        total += np.float32(aq[at + i])
    return off * total


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_repacked(q, p, nibbles, off, d, aq, ad, n_out, n_in, n_tok, out, n_chunks, n_workers):
    """The repacked-Q4_0 order: acc = fma(f32(block integer sum), f32(d_w * d_a), acc) per output.

    Weights as for _mm_vec. The block sums (|sum| <= 32 * 8 * 127) are exact in float32, whatever
    the order of their terms.
    """
    n_blocks = n_in // 32
    n_groups = (n_out + R - 1) // R
    uR = U(R)
    ub = U(n_blocks)
    uin = U(n_in)
    uout = U(n_out)
    n4 = U(n_tok - n_tok % 4)
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        acc = np.zeros(4 * R, np.float32)
        isum = np.zeros(4 * R, np.float32)
        dw = np.zeros(R, np.float32)  # the block's weight scales, widened once for 4 tokens
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                qg = g * uin * uR
                pg = g * (uin // U(2)) * uR
                dg = g * ub * uR
                for t0 in range(U(0), n4, U(4)):
                    acc[:] = 0
                    a0 = t0 * uin
                    for b in range(ub):
                        isum[:] = 0
                        for i in range(b * U(32), b * U(32) + U(32), U(2)):
                            x0, y0 = acts2(aq, a0 + i, nibbles)
                            x1, y1 = acts2(aq, a0 + uin + i, nibbles)
                            x2, y2 = acts2(aq, a0 + U(2) * uin + i, nibbles)
                            x3, y3 = acts2(aq, a0 + U(3) * uin + i, nibbles)
                            o = qg + i * uR
                            o2 = pg + (i // U(2)) * uR
                            for r in range(uR):
                                w, v = load2(q, p, nibbles, o, o2, uR, r)
                                isum[r] = fma32(v, y0, fma32(w, x0, isum[r]))
                                isum[uR + r] = fma32(v, y1, fma32(w, x1, isum[uR + r]))
                                isum[U(2) * uR + r] = fma32(v, y2, fma32(w, x2, isum[U(2) * uR + r]))
                                isum[U(3) * uR + r] = fma32(v, y3, fma32(w, x3, isum[U(3) * uR + r]))
                        db = dg + b * uR
                        for r in range(uR):
                            dw[r] = f16_to_f32(d[db + r])
                        for tt in range(U(4)):
                            da = ad[(t0 + tt) * ub + b]
                            cb = _block_correction(aq, a0 + tt * uin + b * U(32), nibbles, off)
                            for r in range(uR):
                                acc[tt * uR + r] = fma32(isum[tt * uR + r] - cb, dw[r] * da, acc[tt * uR + r])
                    for tt in range(U(4)):
                        for r in range(uR):
                            row = g * uR + r
                            if row < uout:
                                out[(t0 + tt) * uout + row] = acc[tt * uR + r]
                for t in range(n4, U(n_tok)):
                    acc[:R] = 0
                    at = t * uin
                    for b in range(ub):
                        da = ad[t * ub + b]
                        db = dg + b * uR
                        isum[:R] = 0
                        for i in range(b * U(32), b * U(32) + U(32), U(2)):
                            a0, a1 = acts2(aq, at + i, nibbles)
                            o = qg + i * uR
                            o2 = pg + (i // U(2)) * uR
                            for r in range(uR):
                                w, v = load2(q, p, nibbles, o, o2, uR, r)
                                isum[r] = fma32(v, a1, fma32(w, a0, isum[r]))
                        cb = _block_correction(aq, at + b * U(32), nibbles, off)
                        for r in range(uR):
                            acc[r] = fma32(isum[r] - cb, f16_to_f32(d[db + r]) * da, acc[r])
                    for r in range(uR):
                        row = g * uR + r
                        if row < uout:
                            out[t * uout + row] = acc[r]
            c = next_chunk(queue, worker, n_chunks, n_workers)


class Q32Float:
    """A 32-weight-block matrix laid out for the float32 kernels, multiplied in the VEC order.

    4-bit types keep two codes per byte (p: (n_groups, n_in/2, R) uint8, about the file's size);
    the others are unpacked to int8 codes (q: (n_groups, n_in, R)); d, m: (n_groups, n_blocks, R)
    float16 bits of the block scales and mins.
    """

    batch_rule = "rows"  # a row's arithmetic is the same in any batch (QTensor.batch_rules)

    def __init__(self, raw: np.ndarray, t: GGMLQuantizationType, n_out: int, n_in: int):
        bt = BLOCK_TYPES[t]
        n_blocks = n_in // 32
        self.n_groups = n_groups = (n_out + R - 1) // R
        self.nibbles = t in NIBBLE_TYPES
        self.off = np.float32(8.0 if t == T.Q4_0 else 0.0)
        self.q = np.empty(0 if self.nibbles else n_groups * n_in * R, np.int8)
        self.p = np.empty(n_groups * n_in // 2 * R if self.nibbles else 0, np.uint8)
        self.d = np.empty(n_groups * n_blocks * R, np.uint16)
        self.has_min = t in (T.Q4_1, T.Q5_1)
        self.m = np.empty(n_groups * n_blocks * R if self.has_min else 0, np.uint16)
        step = max(R, PACK_ROWS // R * R)
        for r0 in range(0, n_out, step):
            r1 = min(n_out, r0 + step)
            g0, g1 = r0 // R, (r1 + R - 1) // R
            recs = np.ascontiguousarray(raw[r0:r1]).reshape(-1).view(bt.dtype)
            codes = codes_q32(recs, t).reshape(r1 - r0, n_in)
            if self.nibbles:
                packed = pack_nibbles(codes.view(np.uint8) + np.uint8(self.off))
                self.p[g0 * n_in // 2 * R:g1 * n_in // 2 * R] = interleave_rows(packed, g1 - g0)
            else:
                self.q[g0 * n_in * R:g1 * n_in * R] = interleave_rows(codes, g1 - g0)
            self.d[g0 * n_blocks * R:g1 * n_blocks * R] = interleave_rows(recs["d"].view(np.uint16).reshape(r1 - r0, n_blocks), g1 - g0)
            if self.has_min:
                self.m[g0 * n_blocks * R:g1 * n_blocks * R] = interleave_rows(recs["m"].view(np.uint16).reshape(r1 - r0, n_blocks), g1 - g0)
        self.t = t
        self.n_out, self.n_in = n_out, n_in
        self.copies_weights = True

    def _activations(self, x: np.ndarray):
        """x (n_tok, n_in) as Q8_0 / Q8_1: codes (n_tok * n_in) int8, scales and sums (n_tok * n_blocks)."""
        n_tok = x.shape[0]
        aq = np.empty(n_tok * self.n_in, np.int8)
        ad = np.empty(n_tok * (self.n_in // 32), np.float32)
        s = np.empty(n_tok * (self.n_in // 32) if self.has_min else 0, np.float32)
        quantize_q8_0_or_1(x, self.has_min, aq, ad, s)
        return aq, ad, s

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, in llama.cpp's vec_dot order (the
        same arithmetic for every row whatever the batch, so single_rows changes nothing)."""
        n_tok = x.shape[0]
        out = np.empty((n_tok, self.n_out), np.float32)
        aq, ad, s = self._activations(x)
        _mm_vec(self.q, self.p, self.nibbles, self.off, self.d, self.m, self.has_min, aq, ad, s,
                self.n_out, self.n_in, n_tok, out.reshape(-1), *work_split(self.n_groups))
        return out


class Q32FloatRepacked(Q32Float):
    """A Q4_0 matrix that llama.cpp repacks: Q32Float's layout, multiplied in the REPACKED order."""

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, in llama.cpp's q4_0_8x8 gemv/gemm order
        (the same arithmetic per row in both, so single_rows changes nothing)."""
        n_tok = x.shape[0]
        out = np.empty((n_tok, self.n_out), np.float32)
        aq, ad, _ = self._activations(x)
        _mm_repacked(self.q, self.p, self.nibbles, self.off, self.d, aq, ad, self.n_out, self.n_in, n_tok,
                     out.reshape(-1), *work_split(self.n_groups))
        return out
