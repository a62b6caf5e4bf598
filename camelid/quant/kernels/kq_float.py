"""K-quant products (Q4_K, Q5_K, Q6_K) with float32 arithmetic, on any CPU.

The activations are rounded to Q8_K (activations.py: 256 values, a float32 scale d_a, int8 codes,
per-16 sums). Inside a 256-weight super-block everything llama.cpp does is exact integer arithmetic,
so each kernel first builds the exact partial sums P[g, k] = sum of the 4 products of values
32g+4k .. 32g+4k+3 (g, k < 8) with float32 multiply-adds on exact integers (`_partial_sums`), then
combines them the way its code path does (camelid/quant/kernels/__init__.py): `_mm_vec` (VEC),
`_mm_tiled` (TILED), `_mm_repacked` (GEMM for the tokens in whole groups of 4, GEMV for the rest).

Layout (layout.py, float32 families): groups of 64 rows; codes as int8 (unsigned values), Q4_K's two
per byte; d, dmin as float32, (n_groups, n_sb, R); scales (n_groups, n_sb, n_sub, R) (int8 for Q6_K,
n_sub = 16; else uint8, n_sub = 8) and mins (n_groups, n_sb, 8, R) uint8.

Each kernel runs its row groups in `n_chunks` chunks, which the threads take one by one (camelid.cpu.work_queue),
each chunk a call of the path's serial function `_*_groups` on the groups g0..g1.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from camelid.cpu.ggml_math import fma32, hsum8
from camelid.cpu.work_queue import chunk_groups, new_queue, next_chunk, work_split
from camelid.quant.activations import quantize_q8_K
from camelid.quant.kernels.layout import (K_KIND, KIND_Q4_K, KIND_Q5_K, KIND_Q6_K, NIBBLE_TYPES, QK, R, acts4,
                                          interleave_rows, load4, pack_nibbles, unpack_k)
from camelid.quant.types import BLOCK_TYPES

T = GGMLQuantizationType
U = np.uint64
PACK_ROWS = 2048
# Whether GCC fused these multiply-adds (settled against the compiled library in tests/test_kernels.py)
Q5K_SUMMS_FMA = True  # VEC, Q5_K: summs += dm * (min total)
TILED_OUT_FMA = True  # TILED: out += r * d_a


@njit(cache=True, inline="always")
def _partial_sums(P, q, p, nibbles, qg, pg, arow, b):
    """P (64 * R) = the exact sums of 4 products, (g * 8 + k, row), of super-block b for the group's rows."""
    uR = U(R)
    for gk in range(U(64)):
        i = U(b * QK) + U(4) * gk
        a0, a1, a2, a3, _ = acts4(arow, i, nibbles, np.float32(0.0))
        o = qg + i * uR
        o2 = pg + (i // U(2)) * uR
        po = gk * uR
        for r in range(uR):
            w0, w1, w2, w3 = load4(q, p, nibbles, o, o2, uR, r)
            P[po + r] = (w0 * a0 + w1 * a1) + (w2 * a2 + w3 * a3)


@njit(cache=True, inline="always")
def _sub_block_sums(s1, s2, P, bs, sc, mn, osc, omn, kind, g_lo, g_hi):
    """s1 = sum over sub-blocks g_lo..g_hi of scale x (sub-block dot product; Q6_K: less 32 x the
    activation sum), s2 = sum of min x (activation sum): integer sums, exact in float64."""
    uR = U(R)
    s1[:] = 0
    s2[:] = 0
    for g in range(U(g_lo), U(g_hi)):
        op = g * U(8) * uR
        if kind == KIND_Q6_K:
            c0 = 32.0 * bs[2 * g]
            c1 = 32.0 * bs[2 * g + 1]
            o0 = osc + U(2) * g * uR
            o1 = o0 + uR
            for r in range(uR):
                raw_lo = (P[op + r] + P[op + uR + r]) + (P[op + U(2) * uR + r] + P[op + U(3) * uR + r])
                raw_hi = (P[op + U(4) * uR + r] + P[op + U(5) * uR + r]) + (P[op + U(6) * uR + r] + P[op + U(7) * uR + r])
                s1[r] += np.float64(sc[o0 + r]) * (np.float64(raw_lo) - c0) + np.float64(sc[o1 + r]) * (np.float64(raw_hi) - c1)
        else:
            bsum = np.float64(bs[2 * g] + bs[2 * g + 1])
            os_ = osc + g * uR
            om = omn + g * uR
            for r in range(uR):
                raw = ((P[op + r] + P[op + uR + r]) + (P[op + U(2) * uR + r] + P[op + U(3) * uR + r])) + (
                    (P[op + U(4) * uR + r] + P[op + U(5) * uR + r]) + (P[op + U(6) * uR + r] + P[op + U(7) * uR + r]))
                s1[r] += np.float64(sc[os_ + r]) * np.float64(raw)
                s2[r] += np.float64(mn[om + r]) * bsum


@njit(cache=True, boundscheck=False)
def _vec_groups(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, out, g0, g1):
    """VEC for row groups g0..g1: 8 float lanes, lane k holding the integer sum over g of scale x
    P[g, k] (Q6_K: the scale of the 16 values P[g, k] lies in, minus 32 x the (scale, sum) products of
    sub-blocks 2k and 2k+1), acc[k] = fma(d_a * d_w, lane, acc[k]) per super-block, then hsum8. Q4_K
    adds 4 more lanes of min terms, fma((-d_a) * dmin_w, ...) reduced as (m0+m2)+(m1+m3); Q5_K one
    float summs += ((-d_a) * dmin_w) * (integer min total).

    Weights as the module docstring lays them out; aq (n_tok, n_in) int8, ad (n_tok, n_sb) float32,
    abs16 (n_tok, n_sb * 16) float64 per-16 sums of aq; out (n_tok, n_out).
    """
    n_tok = aq.shape[0]
    n_sb = n_in // QK
    n_sub = 16 if kind == KIND_Q6_K else 8
    uR = U(R)
    uin = U(n_in)
    P = np.zeros(64 * R, np.float32)  # (g * 8 + k, row)
    acc = np.zeros(8 * R, np.float32)
    accm = np.zeros(4 * R, np.float32)
    one = np.zeros(R, np.float32)
    lo = np.zeros(R, np.float32)
    hi = np.zeros(R, np.float32)
    dd = np.zeros(R, np.float32)
    dm = np.zeros(R, np.float32)
    for grp in range(g0, g1):
        qg = U(grp) * uin * uR
        pg = U(grp) * (uin // U(2)) * uR
        for t in range(n_tok):
            arow = aq[t]
            acc[:] = 0
            accm[:] = 0
            one[:] = 0
            for b in range(n_sb):
                da = ad[t, b]
                bs = abs16[t, b * 16:(b + 1) * 16]
                _partial_sums(P, q, p, nibbles, qg, pg, arow, b)
                ob = U((grp * n_sb + b) * R)
                osc = U((grp * n_sb + b) * n_sub * R)
                omn = U((grp * n_sb + b) * 8 * R)
                for r in range(uR):
                    dd[r] = da * d[ob + r]
                for k in range(U(8)):
                    # lane k: sum over g of scale x P[g, k] (Q4_K/Q5_K: below 2^24, exact in
                    # float32; Q6_K: two exact float32 halves, the 32 x bsum term, float64)
                    lo[:] = 0
                    hi[:] = 0
                    for g in range(U(8)):
                        if kind == KIND_Q6_K:
                            os_ = osc + (U(2) * g + (U(1) if k >= U(4) else U(0))) * uR
                        else:
                            os_ = osc + g * uR
                        op = (g * U(8) + k) * uR
                        if g < U(4):
                            for r in range(uR):
                                lo[r] = fma32(np.float32(sc[os_ + r]), P[op + r], lo[r])
                        else:
                            for r in range(uR):
                                hi[r] = fma32(np.float32(sc[os_ + r]), P[op + r], hi[r])
                    if kind == KIND_Q6_K:
                        b0 = 32.0 * bs[2 * k]
                        b1 = 32.0 * bs[2 * k + 1]
                        o0 = osc + U(2) * k * uR
                        o1 = o0 + uR
                        for r in range(uR):
                            lane = (np.float64(lo[r]) + np.float64(hi[r])) - (
                                b0 * np.float64(sc[o0 + r]) + b1 * np.float64(sc[o1 + r]))
                            acc[k * uR + r] = fma32(dd[r], np.float32(lane), acc[k * uR + r])
                    else:
                        for r in range(uR):
                            acc[k * uR + r] = fma32(dd[r], lo[r] + hi[r], acc[k * uR + r])
                if kind != KIND_Q6_K:
                    # min terms: per pair of 32-value sub-blocks (Q4_K: 4 float lanes; Q5_K: their
                    # integer total into one float); all exact integers in float32
                    for r in range(uR):
                        dm[r] = (-da) * dmin[ob + r]
                        lo[r] = 0
                    for kk in range(U(4)):
                        q0 = np.float32(bs[4 * kk] + bs[4 * kk + 1])
                        q1 = np.float32(bs[4 * kk + 2] + bs[4 * kk + 3])
                        o0 = omn + U(2) * kk * uR
                        o1 = o0 + uR
                        for r in range(uR):
                            prod = np.float32(mn[o0 + r]) * q0 + np.float32(mn[o1 + r]) * q1
                            if kind == KIND_Q4_K:
                                accm[kk * uR + r] = fma32(dm[r], prod, accm[kk * uR + r])
                            lo[r] += prod
                    if kind == KIND_Q5_K:
                        for r in range(uR):
                            if Q5K_SUMMS_FMA:
                                one[r] = fma32(dm[r], lo[r], one[r])
                            else:
                                one[r] = one[r] + dm[r] * lo[r]
            for r in range(R):
                row = grp * R + r
                if row >= n_out:
                    break
                val = hsum8(acc[r], acc[R + r], acc[2 * R + r], acc[3 * R + r],
                            acc[4 * R + r], acc[5 * R + r], acc[6 * R + r], acc[7 * R + r])
                if kind == KIND_Q4_K:
                    val = val + ((accm[r] + accm[2 * R + r]) + (accm[R + r] + accm[3 * R + r]))
                elif kind == KIND_Q5_K:
                    val = val + one[r]
                out[t, row] = val


@njit(cache=True, boundscheck=False)
def _tiled_groups(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, out, g0, g1):
    """TILED for row groups g0..g1: per super-block r = f32(s1) * d_w, then (not Q6_K)
    r = fma(-dmin_w, f32(s2), r), and out += r * d_a (see `_sub_block_sums`; arguments as `_vec_groups`)."""
    n_tok = aq.shape[0]
    n_sb = n_in // QK
    n_sub = 16 if kind == KIND_Q6_K else 8
    uR = U(R)
    uin = U(n_in)
    P = np.zeros(64 * R, np.float32)  # (g * 8 + k, row)
    one = np.zeros(R, np.float32)
    s1 = np.zeros(R, np.float64)
    s2 = np.zeros(R, np.float64)
    for grp in range(g0, g1):
        qg = U(grp) * uin * uR
        pg = U(grp) * (uin // U(2)) * uR
        for t in range(n_tok):
            arow = aq[t]
            one[:] = 0
            for b in range(n_sb):
                da = ad[t, b]
                bs = abs16[t, b * 16:(b + 1) * 16]
                _partial_sums(P, q, p, nibbles, qg, pg, arow, b)
                ob = U((grp * n_sb + b) * R)
                osc = U((grp * n_sb + b) * n_sub * R)
                omn = U((grp * n_sb + b) * 8 * R)
                _sub_block_sums(s1, s2, P, bs, sc, mn, osc, omn, kind, 0, 8)
                for r in range(uR):
                    res = np.float32(s1[r]) * d[ob + r]
                    if kind != KIND_Q6_K:
                        res = fma32(-dmin[ob + r], np.float32(s2[r]), res)
                    if TILED_OUT_FMA:
                        one[r] = fma32(res, da, one[r])
                    else:
                        one[r] = one[r] + res * da
            for r in range(R):
                row = grp * R + r
                if row >= n_out:
                    break
                out[t, row] = one[r]


@njit(cache=True, boundscheck=False)
def _repacked_groups(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, n_gemm, out, g0, g1):
    """GEMM (the first n_gemm tokens, a multiple of 4) and GEMV (the rest) for row groups g0..g1: one
    accumulator per output and one for the mins, acc = fma(f32(s1), d_w * d_a, acc) and
    acc_min = fma(f32(s2), dmin_w * d_a, acc_min) once per 64 values (GEMM) or per super-block
    (GEMV); the result is acc - acc_min (arguments as `_vec_groups`)."""
    n_tok = aq.shape[0]
    n_sb = n_in // QK
    n_sub = 16 if kind == KIND_Q6_K else 8
    uR = U(R)
    uin = U(n_in)
    P = np.zeros(64 * R, np.float32)  # (g * 8 + k, row)
    one = np.zeros(R, np.float32)
    onem = np.zeros(R, np.float32)
    s1 = np.zeros(R, np.float64)
    s2 = np.zeros(R, np.float64)
    for grp in range(g0, g1):
        qg = U(grp) * uin * uR
        pg = U(grp) * (uin // U(2)) * uR
        for t in range(n_tok):
            arow = aq[t]
            one[:] = 0
            onem[:] = 0
            n_part = 4 if t < n_gemm else 1  # float steps per super-block
            for b in range(n_sb):
                da = ad[t, b]
                bs = abs16[t, b * 16:(b + 1) * 16]
                _partial_sums(P, q, p, nibbles, qg, pg, arow, b)
                ob = U((grp * n_sb + b) * R)
                osc = U((grp * n_sb + b) * n_sub * R)
                omn = U((grp * n_sb + b) * 8 * R)
                for part in range(n_part):
                    _sub_block_sums(s1, s2, P, bs, sc, mn, osc, omn, kind, part * 8 // n_part, (part + 1) * 8 // n_part)
                    for r in range(uR):
                        one[r] = fma32(np.float32(s1[r]), d[ob + r] * da, one[r])
                        onem[r] = fma32(np.float32(s2[r]), dmin[ob + r] * da, onem[r])
            for r in range(R):
                row = grp * R + r
                if row >= n_out:
                    break
                out[t, row] = one[r] - onem[r]


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_vec(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, out, n_chunks, n_workers):
    """out (n_tok, n_out) in the VEC order (see `_vec_groups`)."""
    n_groups = (n_out + R - 1) // R
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            _vec_groups(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, out, g0, g1)
            c = next_chunk(queue, worker, n_chunks, n_workers)


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_tiled(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, out, n_chunks, n_workers):
    """out (n_tok, n_out) in the TILED order (see `_tiled_groups`)."""
    n_groups = (n_out + R - 1) // R
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            _tiled_groups(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, out, g0, g1)
            c = next_chunk(queue, worker, n_chunks, n_workers)


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_repacked(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, n_gemm, out, n_chunks, n_workers):
    """out (n_tok, n_out) in the GEMM / GEMV order (see `_repacked_groups`)."""
    n_groups = (n_out + R - 1) // R
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            _repacked_groups(q, p, nibbles, d, dmin, sc, mn, kind, aq, ad, abs16, n_out, n_in, n_gemm, out, g0, g1)
            c = next_chunk(queue, worker, n_chunks, n_workers)


class KQuantFloat:
    """A Q4_K / Q5_K / Q6_K matrix unpacked for the float32 kernels: VEC below 8 tokens, TILED from 8."""

    batch_rule = "tiled"  # VEC below 8 tokens, TILED from 8 (QTensor.batch_rules)

    def __init__(self, raw: np.ndarray, t: GGMLQuantizationType, n_out: int, n_in: int):
        self.t = t
        self.kind = K_KIND[t]
        self.n_out, self.n_in = n_out, n_in
        self.copies_weights = True
        n_sb = n_in // QK
        n_sub = 16 if t == T.Q6_K else 8
        self.n_groups = n_groups = (n_out + R - 1) // R
        self.nibbles = t in NIBBLE_TYPES
        self.q = np.empty(0 if self.nibbles else n_groups * n_in * R, np.int8)
        self.p = np.empty(n_groups * n_in // 2 * R if self.nibbles else 0, np.uint8)
        self.d = np.empty(n_groups * n_sb * R, np.float32)
        self.dmin = np.empty(n_groups * n_sb * R, np.float32)
        self.sc = np.empty(n_groups * n_sb * n_sub * R, np.int8 if t == T.Q6_K else np.uint8)
        self.mn = np.empty(n_groups * n_sb * 8 * R if t != T.Q6_K else 0, np.uint8)
        step = max(R, PACK_ROWS // R * R)
        dtype = BLOCK_TYPES[t].dtype
        for r0 in range(0, n_out, step):
            r1 = min(n_out, r0 + step)
            g0, g1 = r0 // R, (r1 + R - 1) // R
            recs = np.ascontiguousarray(raw[r0:r1]).reshape(-1).view(dtype)
            codes, d, dmin, sc, mn = unpack_k(recs, t)
            rows = r1 - r0
            if self.nibbles:
                packed = pack_nibbles(codes.reshape(rows, n_in))
                self.p[g0 * n_in // 2 * R:g1 * n_in // 2 * R] = interleave_rows(packed, g1 - g0)
            else:
                self.q[g0 * n_in * R:g1 * n_in * R] = interleave_rows(codes.reshape(rows, n_in).astype(np.int8), g1 - g0)
            self.d[g0 * n_sb * R:g1 * n_sb * R] = interleave_rows(d.reshape(rows, n_sb), g1 - g0)
            self.dmin[g0 * n_sb * R:g1 * n_sb * R] = interleave_rows(dmin.reshape(rows, n_sb), g1 - g0)
            self.sc[g0 * n_sb * n_sub * R:g1 * n_sb * n_sub * R] = interleave_rows(sc.reshape(rows, n_sb * n_sub).astype(self.sc.dtype), g1 - g0)
            if t != T.Q6_K:
                self.mn[g0 * n_sb * 8 * R:g1 * n_sb * 8 * R] = interleave_rows(mn.reshape(rows, n_sb * 8).astype(np.uint8), g1 - g0)

    def _run(self, kernel, x: np.ndarray, *options) -> np.ndarray:
        """Round x (n_tok, n_in) to Q8_K with NumPy and run one of the parallel kernels on it (options:
        the kernel's arguments between n_in and out)."""
        n_tok = x.shape[0]
        d, q = quantize_q8_K(x)
        aq = np.ascontiguousarray(q.reshape(n_tok, self.n_in))
        abs16 = q.reshape(n_tok, -1, 16).sum(axis=2, dtype=np.int32).astype(np.float64)
        out = np.empty((n_tok, self.n_out), np.float32)
        kernel(self.q, self.p, self.nibbles, self.d, self.dmin, self.sc, self.mn, self.kind, aq,
               np.ascontiguousarray(d, dtype=np.float32), abs16, self.n_out, self.n_in, *options, out, *work_split(self.n_groups))
        return out

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, as llama.cpp's vec_dot (below 8 tokens,
        or every row when single_rows) or tiled kernel (from 8)."""
        return self._run(_mm_tiled if x.shape[0] >= 8 and not single_rows else _mm_vec, x)


class KQuantFloatRepacked(KQuantFloat):
    """A Q4_K matrix that llama.cpp repacks: KQuantFloat's layout, multiplied in the GEMM / GEMV order."""

    batch_rule = "gemm"  # gemm for whole groups of 4 rows, gemv for the rest (QTensor.batch_rules)

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, as llama.cpp's q4_K_8x8 gemm (the tokens
        in whole groups of 4) and gemv (the rest, or every row when single_rows)."""
        n_tok = x.shape[0]
        return self._run(_mm_repacked, x, 0 if single_rows else n_tok - n_tok % 4)
