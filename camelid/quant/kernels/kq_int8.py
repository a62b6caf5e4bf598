"""K-quant products (Q4_K, Q5_K, Q6_K) on integer dot products (simd.dot_bytes: VNNI, AVX-512BW, AVX2),
and repacked Q4_K prompts on AMX tiles.

Bit-identical to kq_float.py's: the integer parts (sums of 4 products, scaled and summed by lane or by
sub-block) are computed in int32 lanes, exact, and become floats where llama.cpp converts them. One
kernel per code path (camelid/quant/kernels/__init__.py):

- `_mm_vec` (VEC, ggml_vec_dot_q*_K_q8_K; below 8 tokens) and `_mm_tiled` (TILED, the tiled VNNI
  kernel; from 8 tokens), for every K-quant matrix llama.cpp does not repack;
- `_mm_repacked` (GEMM for the tokens in whole groups of 4, GEMV for the rest) for the Q4_K matrices
  it repacks: ggml_gemm/gemv_q4_K_8x8_q8_K. s1 = sum over the 32-weight sub-blocks of scale x (the
  sub-block's dot product), s2 = sum of min x (the sub-block's activation sum), as integers; they
  turn into floats once per 64 weights (gemm) or per super-block (gemv): acc = fma(f32(s1), d_w *
  d_a, acc), acc_min = fma(f32(s2), dmin_w * d_a, acc_min), and the output is acc - acc_min;
- `_mm_tiles` (`KQuantAmxRepacked`, on CPUs with AMX): that gemm for 32 gemm tokens or more, s1 and
  s2 from AMX tile products and vpmaddwd (the AMX section below), the same bits.

Layout (layout.py, int8 families): 4-bit codes (Q4_K) 8 weights per 64-byte step, 5- and 6-bit codes
one per byte (4 weights per step), groups of 16 rows; d and dmin as float16 bits, (n_groups, n_sb,
16); the 6-bit scales and mins as bytes, (n_groups, n_sb, n_sub, 16) (Q6_K's 16 scales per
super-block signed). About the file's size for Q4_K, 1.3x it for Q5_K and Q6_K.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from camelid.cpu import amx
from camelid.cpu import simd as v
from camelid.cpu.work_queue import chunk_groups, new_queue, next_chunk, work_split
from camelid.quant.kernels.activations import q8_K_activations
from camelid.quant.kernels.layout import (C_TILE, K_KIND, KIND_Q4_K, KIND_Q5_K, KIND_Q6_K, NIBBLE_TYPES, QK, ROWS,
                                          TILE_TOKENS, a_tiles, interleave_rows, tile_pipeline, pack_nibble_steps, step_codes, steps_interleaved,
                                          store_group, unpack_k)
from camelid.quant.types import BLOCK_TYPES, k_scales_mins

T = GGMLQuantizationType
U = np.uint64
PACK_ROWS = 2048


@njit(cache=True, inline="always")
def _sum32(sums16, i):
    """The sum of the activation codes of 32-weight sub-block i."""
    return sums16[U(2) * i] + sums16[U(2) * i + U(1)]


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_repacked(w, d, dmin, sc, mn, aq, ad, sums16, n_out, n_in, n_tok, n_gemm, out, n_chunks, n_workers):
    """out (n_tok * n_out): the first n_gemm tokens (a multiple of 4) in the gemm order, 4 at a time,
    the rest in the gemv order.

    aq (n_tok * n_in) int8 Q8_K codes, ad (n_tok * n_sb) float32 scales, sums16 (n_tok * n_sb * 16)
    int32 sums of the codes by 16.
    """
    n_sb = U(n_in // QK)
    uin = U(n_in)
    uout = U(n_out)
    n_groups = (n_out + ROWS - 1) // ROWS
    group_bytes = U(n_in // 2 * ROWS)
    n4 = U(n_gemm)
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        tmp = np.empty(ROWS, np.float32)
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                wg = g * group_bytes
                row0 = g * U(ROWS)
                n_valid = min(U(ROWS), uout - row0)
                for t in range(U(0), n4, U(4)):  # gemm: a float step every 64 weights, 4 tokens per weight load
                    acc0 = acc1 = acc2 = acc3 = v.zeros_f32()
                    min0 = min1 = min2 = min3 = v.zeros_f32()
                    for b in range(n_sb):
                        ob = (g * n_sb + b) * U(ROWS)
                        dw = v.load_f16(d, ob)
                        dmw = v.load_f16(dmin, ob)
                        s0 = s1 = s2 = s3 = v.zeros_i32()
                        m0 = m1 = m2 = m3 = v.zeros_i32()
                        for j in range(U(8)):
                            p0 = p1 = p2 = p3 = v.zeros_i32()  # 16 products of 4-bit codes per int16 half: no overflow
                            for s in range(U(4)):
                                lo, hi = step_codes(w, wg + (b * U(32) + j * U(4) + s) * U(64), True)
                                a = t * uin + b * U(QK) + j * U(32) + s * U(8)
                                p0 = v.dot_bytes_i16(v.dot_bytes_i16(p0, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                                a += uin
                                p1 = v.dot_bytes_i16(v.dot_bytes_i16(p1, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                                a += uin
                                p2 = v.dot_bytes_i16(v.dot_bytes_i16(p2, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                                a += uin
                                p3 = v.dot_bytes_i16(v.dot_bytes_i16(p3, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                            osm = ob * U(8) + j * U(ROWS)
                            scales = v.load_u8_as_i32(sc, osm)
                            mins = v.load_u8_as_i32(mn, osm)
                            si = (t * n_sb + b) * U(8) + j
                            s0 = v.add_i32(s0, v.mul_i32(v.add_i16_pairs(v.zeros_i32(), p0), scales))
                            s1 = v.add_i32(s1, v.mul_i32(v.add_i16_pairs(v.zeros_i32(), p1), scales))
                            s2 = v.add_i32(s2, v.mul_i32(v.add_i16_pairs(v.zeros_i32(), p2), scales))
                            s3 = v.add_i32(s3, v.mul_i32(v.add_i16_pairs(v.zeros_i32(), p3), scales))
                            m0 = v.add_i32(m0, v.mul_i32(mins, v.broadcast_i32(_sum32(sums16, si))))
                            m1 = v.add_i32(m1, v.mul_i32(mins, v.broadcast_i32(_sum32(sums16, si + U(8) * n_sb))))
                            m2 = v.add_i32(m2, v.mul_i32(mins, v.broadcast_i32(_sum32(sums16, si + U(16) * n_sb))))
                            m3 = v.add_i32(m3, v.mul_i32(mins, v.broadcast_i32(_sum32(sums16, si + U(24) * n_sb))))
                            if j % U(2) == U(1):
                                a0 = v.broadcast_f32(ad[t * n_sb + b])
                                a1 = v.broadcast_f32(ad[(t + U(1)) * n_sb + b])
                                a2 = v.broadcast_f32(ad[(t + U(2)) * n_sb + b])
                                a3 = v.broadcast_f32(ad[(t + U(3)) * n_sb + b])
                                acc0 = v.fma(v.to_f32(s0), v.mul(dw, a0), acc0)
                                acc1 = v.fma(v.to_f32(s1), v.mul(dw, a1), acc1)
                                acc2 = v.fma(v.to_f32(s2), v.mul(dw, a2), acc2)
                                acc3 = v.fma(v.to_f32(s3), v.mul(dw, a3), acc3)
                                min0 = v.fma(v.to_f32(m0), v.mul(dmw, a0), min0)
                                min1 = v.fma(v.to_f32(m1), v.mul(dmw, a1), min1)
                                min2 = v.fma(v.to_f32(m2), v.mul(dmw, a2), min2)
                                min3 = v.fma(v.to_f32(m3), v.mul(dmw, a3), min3)
                                s0 = s1 = s2 = s3 = v.zeros_i32()
                                m0 = m1 = m2 = m3 = v.zeros_i32()
                    store_group(out, t * uout + row0, n_valid, v.sub(acc0, min0), tmp)
                    store_group(out, (t + U(1)) * uout + row0, n_valid, v.sub(acc1, min1), tmp)
                    store_group(out, (t + U(2)) * uout + row0, n_valid, v.sub(acc2, min2), tmp)
                    store_group(out, (t + U(3)) * uout + row0, n_valid, v.sub(acc3, min3), tmp)
                for t in range(n4, U(n_tok)):  # gemv: a float step per super-block
                    acc = v.zeros_f32()
                    acc_min = v.zeros_f32()
                    for b in range(n_sb):
                        ob = (g * n_sb + b) * U(ROWS)
                        s = v.zeros_i32()
                        m = v.zeros_i32()
                        for j in range(U(8)):
                            pairs = v.zeros_i32()
                            for st in range(U(4)):
                                lo, hi = step_codes(w, wg + (b * U(32) + j * U(4) + st) * U(64), True)
                                a = t * uin + b * U(QK) + j * U(32) + st * U(8)
                                pairs = v.dot_bytes_i16(v.dot_bytes_i16(pairs, lo, v.broadcast_bytes4(aq, a)), hi, v.broadcast_bytes4(aq, a + U(4)))
                            osm = ob * U(8) + j * U(ROWS)
                            s = v.add_i32(s, v.mul_i32(v.add_i16_pairs(v.zeros_i32(), pairs), v.load_u8_as_i32(sc, osm)))
                            m = v.add_i32(m, v.mul_i32(v.load_u8_as_i32(mn, osm), v.broadcast_i32(_sum32(sums16, (t * n_sb + b) * U(8) + j))))
                        da = v.broadcast_f32(ad[t * n_sb + b])
                        acc = v.fma(v.to_f32(s), v.mul(v.load_f16(d, ob), da), acc)
                        acc_min = v.fma(v.to_f32(m), v.mul(v.load_f16(dmin, ob), da), acc_min)
                    store_group(out, t * uout + row0, n_valid, v.sub(acc, acc_min), tmp)
            c = next_chunk(queue, worker, n_chunks, n_workers)


@njit(cache=True, inline="always")
def _codes4(w, wb, nibbles, g, k):
    """Codes of weights 32g+4k..32g+4k+3 of the super-block whose codes start at byte wb."""
    if nibbles:
        packed = v.load_bytes(w, wb + (g * U(4) + k // U(2)) * U(64))
        return v.low_nibbles(packed) if k % U(2) == 0 else v.high_nibbles(packed)
    return v.load_bytes(w, wb + (g * U(8) + k) * U(64))


@njit(cache=True, inline="always")
def _lane_step(lane, w, wb, nibbles, j, k, aq, a, scales):
    """lane + scales x (the sum of the 4 products of weights 32j+4k.. with activations a+4k..)."""
    p = v.dot_bytes(v.zeros_i32(), _codes4(w, wb, nibbles, j, k), v.broadcast_bytes4(aq, a + k * U(4)))
    return v.add_i32(lane, v.mul_i32(p, scales))


@njit(cache=True, inline="always")
def _scales(sc, o, signed):
    """16 rows' scales at o as int32 (Q6_K's are int8)."""
    return v.load_i8_as_i32(sc, o) if signed else v.load_u8_as_i32(sc, o)


@njit(cache=True, inline="always")
def _add_lane(acc, k, lane, dd, q6, bs, bso, sc, osc):
    """VEC: float lane k += d_a * d_w * lane (Q6_K: less 32 x the activation sums of sub-blocks 2k and
    2k+1 times their scales, as ggml's AVX2 Q6_K dot product folds in the codes' offset)."""
    if q6:
        lane = v.sub_i32(lane, v.add_i32(
            v.mul_i32(v.broadcast_i32(32 * bs[bso + U(2) * k]), _scales(sc, osc + U(2) * k * U(ROWS), True)),
            v.mul_i32(v.broadcast_i32(32 * bs[bso + U(2) * k + U(1)]), _scales(sc, osc + (U(2) * k + U(1)) * U(ROWS), True))))
    v.store_f32(acc, k * U(ROWS), v.fma(dd, v.to_f32(lane), v.load_f32(acc, k * U(ROWS))))


@njit(cache=True, inline="always")
def _hsum8_rows(acc):
    """((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) of the 8 lanes in acc (lane, row)."""
    def lane(i):
        return v.load_f32(acc, U(i * ROWS))

    return v.add(v.add(v.add(lane(0), lane(4)), v.add(lane(2), lane(6))), v.add(v.add(lane(1), lane(5)), v.add(lane(3), lane(7))))


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_vec(w, nibbles, kind, d, dmin, sc, mn, aq, ad, bs, n_out, n_in, n_tok, out, n_chunks, n_workers):
    """out (n_tok * n_out) in the VEC order: 8 float lanes of integer lane sums per super-block, then
    hsum_float_8, then the min terms (Q4_K: 4 float lanes; Q5_K: one float of their integer total).

    aq (n_tok * n_in) int8 Q8_K codes, ad (n_tok * n_sb) float32 scales, bs (n_tok * n_sb * 16) int32
    sums of the codes by 16.
    """
    n_sb = U(n_in // QK)
    uin = U(n_in)
    uout = U(n_out)
    n_sub = U(16 if kind == KIND_Q6_K else 8)
    sb_bytes = U(QK // 8 * 64 if nibbles else QK // 4 * 64)
    n_groups = (n_out + ROWS - 1) // ROWS
    q6 = kind == KIND_Q6_K
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        tmp = np.empty(ROWS, np.float32)
        acc = np.empty(8 * ROWS, np.float32)  # the 8 float lanes, (lane, row)
        acc_min = np.empty(4 * ROWS, np.float32)  # Q4_K: the 4 min lanes
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                row0 = g * U(ROWS)
                n_valid = min(U(ROWS), uout - row0)
                for t in range(U(n_tok)):
                    acc[:] = 0
                    acc_min[:] = 0
                    mins = v.zeros_f32()  # Q5_K
                    for b in range(n_sb):
                        wb = (g * n_sb + b) * sb_bytes
                        ob = (g * n_sb + b) * U(ROWS)
                        osc = ob * n_sub
                        omn = ob * U(8)
                        at = t * uin + b * U(QK)
                        bso = (t * n_sb + b) * U(16)
                        da = ad[t * n_sb + b]
                        dd = v.mul(v.broadcast_f32(da), v.load_f16(d, ob))
                        l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = v.zeros_i32()
                        for j in range(U(8)):
                            if q6:  # the first 16 values of sub-block j have scale 2j, the others 2j + 1
                                s_lo = _scales(sc, osc + U(2) * j * U(ROWS), True)
                                s_hi = _scales(sc, osc + (U(2) * j + U(1)) * U(ROWS), True)
                            else:
                                s_lo = s_hi = _scales(sc, osc + j * U(ROWS), False)
                            a = at + j * U(32)
                            l0 = _lane_step(l0, w, wb, nibbles, j, U(0), aq, a, s_lo)
                            l1 = _lane_step(l1, w, wb, nibbles, j, U(1), aq, a, s_lo)
                            l2 = _lane_step(l2, w, wb, nibbles, j, U(2), aq, a, s_lo)
                            l3 = _lane_step(l3, w, wb, nibbles, j, U(3), aq, a, s_lo)
                            l4 = _lane_step(l4, w, wb, nibbles, j, U(4), aq, a, s_hi)
                            l5 = _lane_step(l5, w, wb, nibbles, j, U(5), aq, a, s_hi)
                            l6 = _lane_step(l6, w, wb, nibbles, j, U(6), aq, a, s_hi)
                            l7 = _lane_step(l7, w, wb, nibbles, j, U(7), aq, a, s_hi)
                        _add_lane(acc, U(0), l0, dd, q6, bs, bso, sc, osc)
                        _add_lane(acc, U(1), l1, dd, q6, bs, bso, sc, osc)
                        _add_lane(acc, U(2), l2, dd, q6, bs, bso, sc, osc)
                        _add_lane(acc, U(3), l3, dd, q6, bs, bso, sc, osc)
                        _add_lane(acc, U(4), l4, dd, q6, bs, bso, sc, osc)
                        _add_lane(acc, U(5), l5, dd, q6, bs, bso, sc, osc)
                        _add_lane(acc, U(6), l6, dd, q6, bs, bso, sc, osc)
                        _add_lane(acc, U(7), l7, dd, q6, bs, bso, sc, osc)
                        if not q6:
                            dm = v.mul(v.broadcast_f32(-da), v.load_f16(dmin, ob))
                            total = v.zeros_i32()
                            for kk in range(U(4)):
                                q0 = bs[bso + U(4) * kk] + bs[bso + U(4) * kk + U(1)]
                                q1 = bs[bso + U(4) * kk + U(2)] + bs[bso + U(4) * kk + U(3)]
                                prod = v.add_i32(v.mul_i32(v.load_u8_as_i32(mn, omn + U(2) * kk * U(ROWS)), v.broadcast_i32(q0)),
                                                 v.mul_i32(v.load_u8_as_i32(mn, omn + (U(2) * kk + U(1)) * U(ROWS)), v.broadcast_i32(q1)))
                                if kind == KIND_Q4_K:
                                    v.store_f32(acc_min, kk * U(ROWS), v.fma(dm, v.to_f32(prod), v.load_f32(acc_min, kk * U(ROWS))))
                                total = v.add_i32(total, prod)
                            if kind == KIND_Q5_K:
                                mins = v.fma(dm, v.to_f32(total), mins)
                    one = _hsum8_rows(acc)  # hsum_float_8 of the lanes, then the min terms
                    if kind == KIND_Q4_K:
                        one = v.add(one, v.add(v.add(v.load_f32(acc_min, U(0)), v.load_f32(acc_min, U(2 * ROWS))),
                                               v.add(v.load_f32(acc_min, U(ROWS)), v.load_f32(acc_min, U(3 * ROWS)))))
                    elif kind == KIND_Q5_K:
                        one = v.add(one, mins)
                    store_group(out, t * uout + row0, n_valid, one, tmp)
            c = next_chunk(queue, worker, n_chunks, n_workers)


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_tiled(w, nibbles, kind, d, dmin, sc, mn, aq, ad, bs, n_out, n_in, n_tok, out, n_chunks, n_workers):
    """out (n_tok * n_out) in the TILED order: per super-block r = f32(s1) * d_w, then (not Q6_K)
    r = fma(-dmin_w, f32(s2), r), and out = fma(r, d_a, out); arguments as `_mm_vec`."""
    n_sb = U(n_in // QK)
    uin = U(n_in)
    uout = U(n_out)
    n_sub = U(16 if kind == KIND_Q6_K else 8)
    sb_bytes = U(QK // 8 * 64 if nibbles else QK // 4 * 64)
    n_groups = (n_out + ROWS - 1) // ROWS
    q6 = kind == KIND_Q6_K
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        tmp = np.empty(ROWS, np.float32)
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                row0 = g * U(ROWS)
                n_valid = min(U(ROWS), uout - row0)
                for t in range(U(n_tok)):
                    one = v.zeros_f32()
                    for b in range(n_sb):
                        wb = (g * n_sb + b) * sb_bytes
                        ob = (g * n_sb + b) * U(ROWS)
                        osc = ob * n_sub
                        omn = ob * U(8)
                        at = t * uin + b * U(QK)
                        bso = (t * n_sb + b) * U(16)
                        da = ad[t * n_sb + b]
                        s1 = v.zeros_i32()
                        s2 = v.zeros_i32()
                        for j in range(U(8)):
                            lo = v.zeros_i32()
                            hi = v.zeros_i32()
                            for k in range(U(4)):
                                lo = v.dot_bytes(lo, _codes4(w, wb, nibbles, j, k), v.broadcast_bytes4(aq, at + j * U(32) + k * U(4)))
                                hi = v.dot_bytes(hi, _codes4(w, wb, nibbles, j, k + U(4)), v.broadcast_bytes4(aq, at + j * U(32) + U(16) + k * U(4)))
                            if q6:
                                lo = v.sub_i32(lo, v.broadcast_i32(32 * bs[bso + U(2) * j]))
                                hi = v.sub_i32(hi, v.broadcast_i32(32 * bs[bso + U(2) * j + U(1)]))
                                s1 = v.add_i32(s1, v.add_i32(v.mul_i32(lo, _scales(sc, osc + U(2) * j * U(ROWS), True)),
                                                             v.mul_i32(hi, _scales(sc, osc + (U(2) * j + U(1)) * U(ROWS), True))))
                            else:
                                s1 = v.add_i32(s1, v.mul_i32(v.add_i32(lo, hi), _scales(sc, osc + j * U(ROWS), False)))
                                bsum = bs[bso + U(2) * j] + bs[bso + U(2) * j + U(1)]
                                s2 = v.add_i32(s2, v.mul_i32(v.load_u8_as_i32(mn, omn + j * U(ROWS)), v.broadcast_i32(bsum)))
                        res = v.mul(v.to_f32(s1), v.load_f16(d, ob))
                        if not q6:
                            res = v.fma(v.mul(v.load_f16(dmin, ob), v.broadcast_f32(-1.0)), v.to_f32(s2), res)
                        one = v.fma(res, v.broadcast_f32(da), one)
                    store_group(out, t * uout + row0, n_valid, one, tmp)
            c = next_chunk(queue, worker, n_chunks, n_workers)


class KQuantInt8:
    """A Q4_K, Q5_K or Q6_K matrix laid out for the int8 kernels (see the module docstring): VEC
    below 8 tokens, TILED from 8."""

    batch_rule = "tiled"  # VEC below 8 tokens, TILED from 8 (QTensor.batch_rules)

    def __init__(self, raw: np.ndarray, t: GGMLQuantizationType, n_out: int, n_in: int):
        dtype = BLOCK_TYPES[t].dtype
        n_sb = n_in // QK
        self.kind = K_KIND[t]
        self.nibbles = t in NIBBLE_TYPES
        q6 = self.kind == KIND_Q6_K
        n_sub = 16 if q6 else 8
        self.n_out, self.n_in = n_out, n_in
        self.n_groups = n_groups = (n_out + ROWS - 1) // ROWS
        group_bytes = n_in // 2 * ROWS if self.nibbles else n_in * ROWS
        self.w = v.aligned_empty(n_groups * group_bytes, np.uint8)
        self.d = v.aligned_empty(n_groups * n_sb * ROWS, np.uint16)
        self.dmin = v.aligned_empty(n_groups * n_sb * ROWS if not q6 else 0, np.uint16)
        self.sc = v.aligned_empty(n_groups * n_sb * n_sub * ROWS, np.int8 if q6 else np.uint8)
        self.mn = v.aligned_empty(n_groups * n_sb * 8 * ROWS if not q6 else 0, np.uint8)
        if self.nibbles:
            pack_nibble_steps(np.ascontiguousarray(raw), dtype.itemsize, dtype.fields["qs"][1], True, self.w)
        for r0 in range(0, n_out, PACK_ROWS):
            r1 = min(n_out, r0 + PACK_ROWS)
            g0, g1 = r0 // ROWS, (r1 + ROWS - 1) // ROWS
            rows = r1 - r0
            recs = np.ascontiguousarray(raw[r0:r1]).reshape(-1).view(dtype)
            if not self.nibbles:
                codes = unpack_k(recs, t)[0].reshape(rows, n_in)
                self.w[g0 * group_bytes:g1 * group_bytes] = steps_interleaved(codes, g1 - g0)
            self.d[g0 * n_sb * ROWS:g1 * n_sb * ROWS] = interleave_rows(recs["d"].view(np.uint16).reshape(rows, n_sb), g1 - g0, ROWS)
            if q6:
                sc = recs["scales"]
            else:
                self.dmin[g0 * n_sb * ROWS:g1 * n_sb * ROWS] = interleave_rows(recs["dmin"].view(np.uint16).reshape(rows, n_sb), g1 - g0, ROWS)
                sc, mn = k_scales_mins(recs["scales"])
                self.mn[g0 * n_sb * 8 * ROWS:g1 * n_sb * 8 * ROWS] = interleave_rows(mn.reshape(rows, n_sb * 8), g1 - g0, ROWS)
            self.sc[g0 * n_sb * n_sub * ROWS:g1 * n_sb * n_sub * ROWS] = interleave_rows(
                sc.reshape(rows, n_sb * n_sub).astype(self.sc.dtype), g1 - g0, ROWS)
        self.copies_weights = True

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, as llama.cpp's vec_dot (below 8 tokens,
        or every row when single_rows) or tiled kernel (from 8)."""
        n_tok = x.shape[0]
        q, d, sums16 = q8_K_activations(x)
        out = np.empty((n_tok, self.n_out), np.float32)
        kernel = _mm_tiled if n_tok >= 8 and not single_rows else _mm_vec
        kernel(self.w, self.nibbles, self.kind, self.d, self.dmin, self.sc, self.mn, q, d, sums16, self.n_out, self.n_in,
               n_tok, out.reshape(-1), *work_split(self.n_groups))
        return out


class KQuantInt8Repacked(KQuantInt8):
    """A Q4_K matrix that llama.cpp repacks: KQuantInt8's layout, multiplied in the GEMM / GEMV order."""

    batch_rule = "gemm"  # gemm for whole groups of 4 rows, gemv for the rest (QTensor.batch_rules)

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, as llama.cpp's q4_K_8x8 gemm (the tokens
        in whole groups of 4) and gemv (the rest, or every row when single_rows)."""
        n_tok = x.shape[0]
        q, d, sums16 = q8_K_activations(x)
        out = np.empty((n_tok, self.n_out), np.float32)
        n_gemm = 0 if single_rows else n_tok - n_tok % 4
        _mm_repacked(self.w, self.d, self.dmin, self.sc, self.mn, q, d, sums16, self.n_out, self.n_in, n_tok, n_gemm,
                     out.reshape(-1), *work_split(self.n_groups))
        return out


# ---------------------------------------------------------------------------- AMX tiles
# The repacked gemm's integer s = sc_j x dot_j + sc_j+1 x dot_j+1 per 64 weights comes whole from two
# tile products: with sc = 8 hi + lo (hi, lo in 0..7), B_lo holds code x lo and B_hi code x hi (at
# most 15 x 7 = 105, int8), so A x B_lo + 8 (A x B_hi) = s, K = 64 per product. The mins' integer
# mn_j asum_j + mn_j+1 asum_j+1 is one vpmaddwd of int16 pairs. Tiles: 0 = A (16 tokens x 64 codes),
# 1 = B_lo, 2 = B_hi (16 rows of 64 bytes), C in 4, 5 and 6, 7 for alternate pairs.

MIN_TOKENS = 32  # fewer gemm tokens go to the VNNI kernel (unpacking the weights costs more than it saves)
PAIR_BYTES = 2 * 16 * 64  # one pair's B_lo and B_hi tiles
_PAIR_CONFIG = amx.tile_config({0: (16, 64), 1: (16, 64), 2: (16, 64), 4: (16, 64), 5: (16, 64), 6: (16, 64), 7: (16, 64)})


@njit(cache=True, inline="always")
def _scaled_tiles(w, wg, sc, g, n_pairs, codes):
    """A group's 4-bit codes (nibble steps from byte wg) times the low and high 3 bits of their
    sub-block's scale, as B tiles: per pair of sub-blocks, B_lo then B_hi, each 16 rows of 64 bytes
    (row 2m the low nibbles of the pair's step m, row 2m+1 its high nibbles), (n_pairs, 2, 16, 16, 4) int8."""
    low3 = v.broadcast_i32(7)
    repeat = v.broadcast_i32(0x01010101)
    for p in range(n_pairs):
        for half in range(U(2)):
            scales = v.load_u8_as_i32(sc, (g * n_pairs * U(2) + U(2) * p + half) * U(ROWS))  # sub-block 2p + half
            lo = v.mul_i32(v.and_i32(scales, low3), repeat)  # each row's 3 bits in its 4 bytes
            hi = v.mul_i32(v.shift_right_i32(scales, 3), repeat)
            for m in range(U(4)):
                packed = v.load_bytes(w, wg + (U(8) * p + U(4) * half + m) * U(64))
                at = p * U(PAIR_BYTES) + (U(8) * half + U(2) * m) * U(64)
                v.store_bytes(codes, at, v.mul_bytes(v.low_nibbles(packed), lo))
                v.store_bytes(codes, at + U(64), v.mul_bytes(v.high_nibbles(packed), lo))
                v.store_bytes(codes, at + U(1024), v.mul_bytes(v.low_nibbles(packed), hi))
                v.store_bytes(codes, at + U(1088), v.mul_bytes(v.high_nibbles(packed), hi))


def _scaled_pair(c_lo: int, c_hi: int):
    """(start, store) of a pair's two products A x B_lo, A x B_hi in C tiles c_lo, c_hi."""
    @njit(inline="always")
    def start(aq, a_at, codes, p):
        amx.zero(c_lo)
        amx.zero(c_hi)
        amx.load(0, aq, a_at + p * U(TILE_TOKENS * 64), 64)
        amx.load(1, codes, p * U(PAIR_BYTES), 64)
        amx.load(2, codes, p * U(PAIR_BYTES) + U(1024), 64)
        amx.dot(c_lo, 0, 1)
        amx.dot(c_hi, 0, 2)

    @njit(inline="always")
    def store(sums):
        amx.store(c_lo, sums, 0, 64)
        amx.store(c_hi, sums, C_TILE, 64)

    return start, store


_start_a, _store_a = _scaled_pair(4, 5)
_start_b, _store_b = _scaled_pair(6, 7)
_next_pair = tile_pipeline(_start_a, _store_a, _start_b, _store_b)  # starts pair p + 1, stores pair p's C_lo, C_hi


@njit(cache=True, inline="always")
def _add_pair(sums, d, dmin, mn, ob, j, ad, pair_sums, t0, n_sb, b, n_pairs, p, acc, acc_min):
    """The gemm order's float step for sub-blocks j, j + 1 of super-block b: acc += f32(C_lo + 8 C_hi)
    * (d_w * d_a), acc_min += f32(mn_j asum_j + mn_j+1 asum_j+1) * (dmin_w * d_a), per token."""
    dw = v.load_f16(d, ob)
    dmw = v.load_f16(dmin, ob)
    osm = ob * U(8) + j * U(ROWS)
    mins = v.or_i32(v.load_u8_as_i32(mn, osm), v.shift_left_i32(v.load_u8_as_i32(mn, osm + U(ROWS)), 16))
    for t in range(U(TILE_TOKENS)):
        o = t * U(ROWS)
        s = v.add_i32(v.load_i32(sums, o), v.shift_left_i32(v.load_i32(sums, U(C_TILE) + o), 3))
        m = v.dot_i16_pairs(mins, v.broadcast_i32(pair_sums[(t0 + t) * n_pairs + p]))
        da = v.broadcast_f32(ad[(t0 + t) * n_sb + b])
        v.store_f32(acc, o, v.fma(v.to_f32(s), v.mul(dw, da), v.load_f32(acc, o)))
        v.store_f32(acc_min, o, v.fma(v.to_f32(m), v.mul(dmw, da), v.load_f32(acc_min, o)))


@njit(cache=True, boundscheck=False)
def _pair_sums(sums16, n_rows, n_pairs):
    """Each pair of sub-blocks' activation sums as int16 halves of an int32, (n_rows * n_pairs): the
    even sub-block's low, the odd one's high (|sum| <= 32 x 127 fits int16)."""
    out = np.empty(n_rows * n_pairs, np.int32)
    for i in range(n_rows * n_pairs):
        even = sums16[4 * i] + sums16[4 * i + 1]
        odd = sums16[4 * i + 2] + sums16[4 * i + 3]
        out[i] = (even & 0xFFFF) | (odd << 16)
    return out


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_tiles(w, d, dmin, sc, mn, aq, ad, pair_sums, n_out, n_in, n_tok, out, n_chunks, n_workers, config):
    """out (n_tok * n_out) in the repacked-Q4_K gemm order, the integers from AMX tiles (above). aq
    the Q8_K codes as A tiles (`a_tiles`), ad as `_mm_repacked`'s and pair_sums from `_pair_sums`, all
    padded with zeros to whole tiles of 16 tokens."""
    n_sb = U(n_in // QK)
    n_pairs = U(n_in // 64)
    uin = U(n_in)
    uout = U(n_out)
    n_groups = (n_out + ROWS - 1) // ROWS
    group_bytes = U(n_in // 2 * ROWS)
    n_pad = U((n_tok + TILE_TOKENS - 1) // TILE_TOKENS * TILE_TOKENS)
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        codes = amx.aligned_empty(n_pairs * U(PAIR_BYTES), np.int8)
        sums = amx.aligned_empty(2 * C_TILE, np.int32)  # a pair's C_lo and C_hi, (2, 16 tokens, 16 rows)
        acc = amx.aligned_empty(C_TILE, np.float32)  # (16 tokens, 16 rows)
        acc_min = amx.aligned_empty(C_TILE, np.float32)
        tmp = np.empty(ROWS, np.float32)
        amx.configure(config)
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            g0, g1 = chunk_groups(c, n_chunks, n_groups)
            for g in range(U(g0), U(g1)):
                _scaled_tiles(w, g * group_bytes, sc, g, n_pairs, codes)
                row0 = g * U(ROWS)
                n_valid = min(U(ROWS), uout - row0)
                for t0 in range(U(0), n_pad, U(TILE_TOKENS)):
                    acc[:] = 0.0
                    acc_min[:] = 0.0
                    a_at = t0 * uin  # its A tiles, 1 KB each
                    _start_a(aq, a_at, codes, U(0))
                    for p in range(n_pairs):
                        _next_pair(aq, a_at, codes, p, n_pairs, sums)
                        b = p // U(4)
                        _add_pair(sums, d, dmin, mn, (g * n_sb + b) * U(ROWS), U(2) * (p % U(4)), ad, pair_sums, t0, n_sb, b,
                                  n_pairs, p, acc, acc_min)
                    for t in range(U(0), min(U(TILE_TOKENS), U(n_tok) - t0)):
                        o = t * U(ROWS)
                        store_group(out, (t0 + t) * uout + row0, n_valid, v.sub(v.load_f32(acc, o), v.load_f32(acc_min, o)), tmp)
            c = next_chunk(queue, worker, n_chunks, n_workers)
        amx.release()


class KQuantAmxRepacked(KQuantInt8Repacked):
    """A repacked Q4_K matrix (KQuantInt8Repacked's layout) whose gemm tokens, when there are
    MIN_TOKENS or more, run on AMX tiles (above): the same integers and float steps as `_mm_repacked`'s gemm."""

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, as llama.cpp's q4_K_8x8 gemm (the tokens
        in whole groups of 4) and gemv (the rest, or every row when single_rows)."""
        n_tok, n_in = x.shape
        n_gemm = n_tok - n_tok % 4
        if single_rows or n_gemm < MIN_TOKENS:
            return super().matmul(x, single_rows)
        n_rows = max(n_tok, (n_gemm + TILE_TOKENS - 1) // TILE_TOKENS * TILE_TOKENS)
        q, d, sums16 = q8_K_activations(x, n_rows)
        out = np.empty((n_tok, self.n_out), np.float32)
        n_chunks, n_workers = work_split(self.n_groups)
        _mm_tiles(self.w, self.d, self.dmin, self.sc, self.mn, a_tiles(q, n_rows, n_in, 64), d, _pair_sums(sums16, n_rows, n_in // 64),
                  self.n_out, n_in,
                  n_gemm, out.reshape(-1), n_chunks, n_workers, _PAIR_CONFIG)
        if n_gemm < n_tok:  # the last 1-3 tokens in the gemv order
            n_sb = n_in // QK
            _mm_repacked(self.w, self.d, self.dmin, self.sc, self.mn, q[n_gemm * n_in:n_tok * n_in], d[n_gemm * n_sb:n_tok * n_sb],
                         sums16[n_gemm * n_in // 16:n_tok * n_in // 16], self.n_out, n_in, n_tok - n_gemm, 0,
                         out[n_gemm:].reshape(-1), n_chunks, n_workers)
        return out
