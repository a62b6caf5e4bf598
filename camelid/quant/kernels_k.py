"""K-quant products (Q4_K, Q5_K, Q6_K) in llama.cpp's exact operation order, as Numba kernels.

The activations are quantized to Q8_K (256 values, a float32 scale d_a, int8 codes, per-16 sums).
Inside a 256-weight super-block everything llama.cpp does is exact integer arithmetic; what differs
between its three x86 code paths is where the integers become floats and in which order those are
added, so the kernels first build the exact partial sums P[g, k] = sum of the 4 products of values
32g+4k .. 32g+4k+3 (g, k < 8), then combine them the way each path does:

- `VEC` (ggml_vec_dot_q*_K_q8_K, AVX2; used below 8 tokens): 8 float lanes, lane k holding the
  integer sum over g of scale x P[g, k] (Q6_K: the scale of the 16 values P[g, k] lies in, minus
  32 x the (scale, sum) products of sub-blocks 2k and 2k+1), acc[k] = fma(d_a * d_w, lane, acc[k])
  per super-block, then `hsum8`. Q4_K adds 4 more lanes of min terms, fma((-d_a) * dmin_w, ...)
  reduced as (m0+m2)+(m1+m3); Q5_K one float summs += ((-d_a) * dmin_w) * (integer min total).
- `TILED` (ggml's tiled K-quant matmul, AVX-512 VNNI; 8 tokens or more on weights that are not
  repacked): per super-block r = f32(sum of scale x (sub-block dot - 32 x sub-block sum for Q6_K))
  * d_w, then r = fma(-dmin_w, f32(sum of min x sub-block sum), r), and out += r * d_a.
- `GEMV` / `GEMM` (the repacked Q4_K 8x8 kernels llama.cpp uses for Q4_K matrices with a multiple
  of 8 rows, except the token embedding): one accumulator per output and one for the mins,
  acc = fma(f32(integer), d_w * d_a, acc), once per super-block (gemv, single rows) or once per
  64 values (gemm, the rows in groups of 4); the result is acc - acc_min.
"""

from __future__ import annotations

import numba
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from camelid.quant.activations import quantize_q8_K
from camelid.quant.types import BLOCK_TYPES, k_scales_mins
from camelid.cpu.ggml_math import fma32, hsum8
from camelid.quant.kernels import interleave_rows
from camelid.quant.nibbles import acts4, load4, pack_nibbles

T = GGMLQuantizationType
U = np.uint64
R = 64  # weight rows interleaved per group
QK = 256
VEC, TILED, GEMV, GEMM = 0, 1, 2, 3
PACK_ROWS = 2048
# Whether GCC fused these multiply-adds (settled against the compiled library in tests/test_kernels.py)
Q5K_SUMMS_FMA = True
TILED_OUT_FMA = True


@njit(cache=True, boundscheck=False)
def _mm_k(q, p, nibbles, d, dmin, sc, mn, kind, modes, aq, ad, abs16, n_out, n_in, out, n_chunks, summs_fma, out_fma):
    """out (n_tok, n_out) for K-quant weights; modes (n_tok,) picks the code path per token row.

    q: (n_groups * n_in * R) int8 codes (unsigned values), or with `nibbles` (Q4_K) p: (n_groups *
    n_in/2 * R) uint8, two codes per byte (see nibbles.py); d, dmin: (n_groups * n_sb * R) float32;
    sc: (n_groups * n_sb * n_sub * R) integer scales (int8 for Q6_K, else uint8), mn: (n_groups *
    n_sb * 8 * R) uint8 mins (n_sub = 16 for Q6_K, else 8); aq (n_tok, n_in) int8, ad (n_tok, n_sb)
    float32, abs16 (n_tok, n_sb * 16) float64 per-16 sums of aq.
    """
    n_tok = aq.shape[0]
    n_sb = n_in // QK
    n_sub = 16 if kind == 6 else 8
    n_groups = (n_out + R - 1) // R
    per = (n_groups + n_chunks - 1) // n_chunks
    uR = U(R)
    uin = U(n_in)
    for c in range(n_chunks):
        P = np.zeros(64 * R, np.float32)  # (g * 8 + k, row)
        acc = np.zeros(8 * R, np.float32)
        accm = np.zeros(4 * R, np.float32)
        one = np.zeros(R, np.float32)
        onem = np.zeros(R, np.float32)
        lo = np.zeros(R, np.float32)
        hi = np.zeros(R, np.float32)
        dd = np.zeros(R, np.float32)
        dm = np.zeros(R, np.float32)
        s1 = np.zeros(R, np.float64)
        s2 = np.zeros(R, np.float64)
        for grp in range(c * per, min(n_groups, (c + 1) * per)):
            qg = U(grp) * uin * uR
            pg = U(grp) * (uin // U(2)) * uR
            for t in range(n_tok):
                mode = modes[t]
                arow = aq[t]
                acc[:] = 0
                accm[:] = 0
                one[:] = 0
                onem[:] = 0
                for b in range(n_sb):
                    da = ad[t, b]
                    bs = abs16[t, b * 16:(b + 1) * 16]
                    # exact partial sums of 4 products
                    for gk in range(U(64)):
                        i = U(b * QK) + U(4) * gk
                        a0, a1, a2, a3, _ = acts4(arow, i, nibbles, np.float32(0.0))
                        o = qg + i * uR
                        o2 = pg + (i // U(2)) * uR
                        po = gk * uR
                        for r in range(uR):
                            w0, w1, w2, w3 = load4(q, p, nibbles, o, o2, uR, r)
                            P[po + r] = (w0 * a0 + w1 * a1) + (w2 * a2 + w3 * a3)
                    ob = U((grp * n_sb + b) * R)
                    osc = U((grp * n_sb + b) * n_sub * R)
                    omn = U((grp * n_sb + b) * 8 * R)
                    if mode == VEC:
                        for r in range(uR):
                            dd[r] = da * d[ob + r]
                        for k in range(U(8)):
                            # lane k: sum over g of scale x P[g, k] (Q4_K/Q5_K: below 2^24, exact in
                            # float32; Q6_K: two exact float32 halves, the 32 x bsum term, float64)
                            lo[:] = 0
                            hi[:] = 0
                            for g in range(U(8)):
                                if kind == 6:
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
                            if kind == 6:
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
                        if kind != 6:
                            # min terms: per pair of 32-value sub-blocks (Q4_K: 4 float lanes; Q5_K:
                            # their integer total into one float); all exact integers in float32
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
                                    if kind == 4:
                                        accm[kk * uR + r] = fma32(dm[r], prod, accm[kk * uR + r])
                                    lo[r] += prod
                            if kind == 5:
                                for r in range(uR):
                                    if summs_fma:
                                        one[r] = fma32(dm[r], lo[r], one[r])
                                    else:
                                        one[r] = one[r] + dm[r] * lo[r]
                    else:
                        # integer sums over sub-blocks, exact in float64
                        n_part = 4 if mode == GEMM else 1
                        for part in range(n_part):
                            s1[:] = 0
                            s2[:] = 0
                            for g in range(U(part * 8 // n_part), U((part + 1) * 8 // n_part)):
                                op = g * U(8) * uR
                                if kind == 6:
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
                            if mode == TILED:
                                for r in range(uR):
                                    res = np.float32(s1[r]) * d[ob + r]
                                    if kind != 6:
                                        res = fma32(-dmin[ob + r], np.float32(s2[r]), res)
                                    if out_fma:
                                        one[r] = fma32(res, da, one[r])
                                    else:
                                        one[r] = one[r] + res * da
                            else:
                                for r in range(uR):
                                    one[r] = fma32(np.float32(s1[r]), d[ob + r] * da, one[r])
                                    onem[r] = fma32(np.float32(s2[r]), dmin[ob + r] * da, onem[r])
                for r in range(R):
                    row = grp * R + r
                    if row >= n_out:
                        break
                    if mode == VEC:
                        v = hsum8(acc[r], acc[R + r], acc[2 * R + r], acc[3 * R + r],
                                  acc[4 * R + r], acc[5 * R + r], acc[6 * R + r], acc[7 * R + r])
                        if kind == 4:
                            v = v + ((accm[r] + accm[2 * R + r]) + (accm[R + r] + accm[3 * R + r]))
                        elif kind == 5:
                            v = v + one[r]
                        out[t, row] = v
                    elif mode == TILED:
                        out[t, row] = one[r]
                    else:
                        out[t, row] = one[r] - onem[r]


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_k_parallel(q, p, nibbles, d, dmin, sc, mn, kind, modes, aq, ad, abs16, n_out, n_in, out, n_chunks, summs_fma, out_fma):
    n_groups = (n_out + R - 1) // R
    per = (n_groups + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        g0 = c * per
        g1 = min(n_groups, (c + 1) * per)
        if g0 >= g1:
            continue
        _mm_k(q[g0 * n_in * R:g1 * n_in * R], p[g0 * (n_in // 2) * R:g1 * (n_in // 2) * R], nibbles, d[g0 * (n_in // QK) * R:], dmin[g0 * (n_in // QK) * R:],
              sc[g0 * (n_in // QK) * (16 if kind == 6 else 8) * R:], mn[g0 * (n_in // QK) * 8 * R:], kind, modes,
              aq, ad, abs16, min(n_out - g0 * R, (g1 - g0) * R), n_in, out[:, g0 * R:], 1, summs_fma, out_fma)


def _unpack(recs: np.ndarray, t: GGMLQuantizationType):
    """(n,) K-quant records -> codes (n, 256) uint8, d, dmin (n,), scales (n, n_sub), mins (n, 8)."""
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


class PackedK:
    """A Q4_K / Q5_K / Q6_K matrix unpacked for the kernels; `repacked` selects llama.cpp's 8x8 Q4_K path."""

    def __init__(self, raw: np.ndarray, t: GGMLQuantizationType, n_out: int, n_in: int, repacked: bool):
        self.t = t
        self.kind = {T.Q4_K: 4, T.Q5_K: 5, T.Q6_K: 6}[t]
        self.n_out, self.n_in = n_out, n_in
        self.repacked = repacked
        self.copies_weights = True
        n_sb = n_in // QK
        n_sub = 16 if t == T.Q6_K else 8
        self.n_groups = n_groups = (n_out + R - 1) // R
        self.nibbles = t == T.Q4_K
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
            codes, d, dmin, sc, mn = _unpack(recs, t)
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

    def modes(self, n_tok: int) -> np.ndarray:
        """The llama.cpp code path for each of n_tok activation rows."""
        if self.repacked:
            modes = np.full(n_tok, GEMV, np.int64)
            if n_tok > 3:
                modes[:n_tok - n_tok % 4] = GEMM
            return modes
        return np.full(n_tok, TILED if n_tok >= 8 else VEC, np.int64)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        n_tok = x.shape[0]
        d, q = quantize_q8_K(x)
        aq = np.ascontiguousarray(q.reshape(n_tok, self.n_in))
        abs16 = q.reshape(n_tok, -1, 16).sum(axis=2, dtype=np.int32).astype(np.float64)
        out = np.empty((n_tok, self.n_out), np.float32)
        n_chunks = max(1, min(self.n_groups, numba.get_num_threads()))
        _mm_k_parallel(self.q, self.p, self.nibbles, self.d, self.dmin, self.sc, self.mn, self.kind, self.modes(n_tok), aq,
                       np.ascontiguousarray(d, dtype=np.float32), abs16, self.n_out, self.n_in, out, n_chunks,
                       Q5K_SUMMS_FMA, TILED_OUT_FMA)
        return out
