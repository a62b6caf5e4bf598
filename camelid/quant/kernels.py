"""Matrix products in llama.cpp's exact operation order, as Numba kernels, and their registration.

llama.cpp's CPU backend computes every output of a quantized matmul as a dot product of one weight
row with the activation row quantized to int8 (activations.py), and the float rounding of that dot
product depends on how its SIMD code splits the sum. The kernels reproduce the split, so camelid's
products are bit-identical to the x86 AVX-512 build that `pip install llama-cpp-python` compiles on
this machine (tests/test_kernels.py checks every type and batch size against the compiled ggml):

- here, 32-weight blocks. Q4_0 (not repacked), Q4_1, Q5_0, Q5_1, Q8_0 (`ggml_vec_dot_*` AVX2
  paths, and llamafile's tinyBLAS_Q0_AVX for batches, which does the same arithmetic per output):
  per block, 8 integer lane sums of 4 consecutive products (`vpdpbusd`), each added to its own float
  lane as acc[j] = fma(f32(d_w * d_a), lane_j, acc[j]) over the blocks in order; the result is the
  8 lanes summed as ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)) (`hsum_float_8`); Q4_1/Q5_1 then add
  summs = sum over blocks of m_w * s_a (float32, in block order). Q4_0 with a multiple of 8 rows,
  not the token embedding (llama.cpp repacks it into `block_q4_0x8`, `ggml_gemv/gemm_q4_0_8x8_q8_0`):
  one float accumulator per output, acc = fma(f32(block integer sum), f32(d_w * d_a), acc).
- kernels_k.py: Q4_K, Q5_K, Q6_K (vec_dot, the tiled VNNI kernels, the repacked Q4_K 8x8 kernels).
- kernels_float.py: F32, F16, BF16 (tinyBLAS and ggml_vec_dot_f32/_f16/_bf16).

The kernels here compute the integer sums with float32 arithmetic on exactly representable integers,
which any CPU can run. Where the CPU has int8 dot-product instructions (simd.INT8_DOT), the
quantized types use kernels_vnni.py and kernels_k_vnni.py instead: the same results, bit for bit,
3-5x faster; `_build_q32` and `_build_k` choose.

Weights are laid out once per tensor (`QTensor.prepare`) interleaved by groups of `R` rows, so that
the innermost loop runs over R contiguous rows and vectorizes: 4-bit codes two per byte, (n_groups,
n_in/2, R) (nibbles.py), other codes as int8, (n_groups, n_in, R); block scales and mins keep their
float16 bits, (n_groups, n_blocks, R). A 4-bit matrix takes its file's size. Index arithmetic in the
hot loops is uint64: with signed indices Numba emits a negative-index wraparound that stops LLVM
from vectorizing.
"""

from __future__ import annotations

import glob
import os

import numba
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from camelid.cpu import simd
from camelid.quant.types import BLOCK_TYPES
from camelid.cpu.ggml_math import f16_to_f32, fma32, round_f16
from camelid.quant.nibbles import acts2, acts4, load2, load4, pack_nibbles

T = GGMLQuantizationType
U = np.uint64
R = 64  # weight rows interleaved per group: the vector width of the inner loops
PACK_ROWS = 4096  # rows unpacked per step at load time


def kernels_compiled() -> bool:
    """Whether Numba's on-disk cache already holds compiled kernels (else the first use compiles them)."""
    cache_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    return bool(glob.glob(os.path.join(cache_dir, "kernels*.nbi")))


def _n_chunks(n_groups: int) -> int:
    return max(1, min(n_groups, numba.get_num_threads()))


# ---------------------------------------------------------------------------- 32-weight blocks

@njit(cache=True, boundscheck=False)
def _quantize_q8(x, with_sum, aq, ad, as_):
    """ggml's AVX2 quantize_row_q8_0 / _q8_1 of the rows of x (n, k) (see activations.py).

    aq (n * k) int8 codes; ad (n * k/32) the float16 block scales as float32; as_ (n * k/32) the
    Q8_1 sums f16(d * sum(q)) when with_sum. Equal to activations.quantize_q8_0/_q8_1, bit for bit.
    """
    n, k = x.shape
    nb = k // 32
    for t in range(n):
        for b in range(nb):
            amax = np.float32(0.0)
            for i in range(32):
                amax = max(amax, abs(x[t, b * 32 + i]))
            d = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            total = 0
            for i in range(32):
                v = np.int8(np.rint(np.float64(x[t, b * 32 + i] * inv)))
                aq[t * k + b * 32 + i] = v
                total += v
            ad[t * nb + b] = round_f16(d)
            if with_sum:
                as_[t * nb + b] = round_f16(d * np.float32(total))



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
def _mm_q32_lanes8(q, p, nibbles, off, d, m, has_min, aq, ad, as_, n_out, n_in, n_tok, out, n_chunks):
    """out (n_tok * n_out) = the 8-lane vec_dot of every weight row with every activation row.

    Weights: q (n_groups * n_in * R) int8 codes, or with `nibbles` p (n_groups * n_in/2 * R) uint8,
    two 4-bit codes per byte (weights 2k, 2k+1 of a row), each minus `off`; d, m: (n_groups *
    n_blocks * R) the float16 bits (uint16) of the scales and mins; aq: (n_tok * n_in) int8
    activation codes, ad, as_: (n_tok * n_blocks) float32 scales and Q8_1 sums. Tokens go 4 at a time (each weight code is
    converted once for 4 tokens), then 1 by 1. The 4 products of a lane and their sums are integers
    below 2^24, exact in float32 in any order.
    """
    n_blocks = n_in // 32
    n_groups = (n_out + R - 1) // R
    per = (n_groups + n_chunks - 1) // n_chunks
    uR = U(R)
    ub = U(n_blocks)
    uin = U(n_in)
    uout = U(n_out)
    n4 = U(n_tok - n_tok % 4)
    for c in prange(n_chunks):
        acc = np.zeros(4 * 8 * R, np.float32)  # (token, lane, row)
        dd = np.zeros(4 * R, np.float32)  # (token, row)
        dw = np.zeros(R, np.float32)  # the block's weight scales, widened once for 4 tokens
        summs = np.zeros(4 * R, np.float32)
        for g in range(U(c * per), U(min(n_groups, (c + 1) * per))):
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
def _mm_q32_lanes1(q, p, nibbles, off, d, aq, ad, n_out, n_in, n_tok, out, n_chunks):
    """The repacked-Q4_0 order: acc = fma(f32(block integer sum), f32(d_w * d_a), acc) per output.

    Weights as for _mm_q32_lanes8. Tokens go 4 at a time, then 1 by 1; the block sums
    (|sum| <= 32 * 8 * 127) are exact in float32, whatever the order of their terms.
    """
    n_blocks = n_in // 32
    n_groups = (n_out + R - 1) // R
    per = (n_groups + n_chunks - 1) // n_chunks
    uR = U(R)
    ub = U(n_blocks)
    uin = U(n_in)
    uout = U(n_out)
    n4 = U(n_tok - n_tok % 4)
    for c in prange(n_chunks):
        acc = np.zeros(4 * R, np.float32)
        isum = np.zeros(4 * R, np.float32)
        dw = np.zeros(R, np.float32)  # the block's weight scales, widened once for 4 tokens
        for g in range(U(c * per), U(min(n_groups, (c + 1) * per))):
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


def interleave_rows(a: np.ndarray, n_groups: int, rows: int = R) -> np.ndarray:
    """(n_out, k) -> flat (n_groups, k, rows), rows padded with zeros to n_groups * rows."""
    n_out, k = a.shape
    full = np.zeros((n_groups * rows, k), dtype=a.dtype)
    full[:n_out] = a
    return np.ascontiguousarray(full.reshape(n_groups, rows, k).transpose(0, 2, 1)).reshape(-1)


def _codes_q32(recs: np.ndarray, t: GGMLQuantizationType) -> np.ndarray:
    """(n_blocks,) records -> (n_blocks, 32) int8 codes whose integer dot product is ggml's."""
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


_NIBBLE_TYPES = (T.Q4_0, T.Q4_1)


class PackedQ32:
    """A 32-weight-block matrix (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) laid out for the kernels.

    4-bit types keep two codes per byte (p: (n_groups, n_in/2, R) uint8, about the file's size);
    the others are unpacked to int8 codes (q: (n_groups, n_in, R)).
    """

    def __init__(self, raw: np.ndarray, t: GGMLQuantizationType, n_out: int, n_in: int, repacked_q4_0: bool):
        bt = BLOCK_TYPES[t]
        n_blocks = n_in // 32
        self.n_groups = n_groups = (n_out + R - 1) // R
        self.nibbles = t in _NIBBLE_TYPES
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
            codes = _codes_q32(recs, t).reshape(r1 - r0, n_in)
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
        self.lanes = 1 if repacked_q4_0 else 8
        self.copies_weights = True

    def matmul(self, x: np.ndarray) -> np.ndarray:
        n_tok = x.shape[0]
        out = np.empty((n_tok, self.n_out), np.float32)
        aq = np.empty(n_tok * self.n_in, np.int8)
        ad = np.empty(n_tok * (self.n_in // 32), np.float32)
        s = np.empty(n_tok * (self.n_in // 32) if self.has_min else 0, np.float32)
        _quantize_q8(x, self.has_min, aq, ad, s)
        if self.lanes == 8:
            _mm_q32_lanes8(self.q, self.p, self.nibbles, self.off, self.d, self.m, self.has_min, aq, ad, s,
                           self.n_out, self.n_in, n_tok, out.reshape(-1), _n_chunks(self.n_groups))
        else:
            _mm_q32_lanes1(self.q, self.p, self.nibbles, self.off, self.d, aq, ad, self.n_out, self.n_in, n_tok,
                           out.reshape(-1), _n_chunks(self.n_groups))
        return out


# ---------------------------------------------------------------------------- registration

def _repacked_by_llama_cpp(w) -> bool:
    """Whether llama.cpp runs this matrix through its repacked 8x8 kernels (Q4_0, Q4_K on x86).

    It loads Q4_0 and Q4_K weights whose row count is a multiple of 8 into its CPU_REPACK buffer,
    except the token embedding (read by GET_ROWS, which that buffer does not support), so a tied
    output matrix keeps the plain order.
    """
    return w.ggml_type in (T.Q4_0, T.Q4_K) and w.shape[0] % 8 == 0 and w.name != "token_embd.weight"


_CODE_OFFSET = {T.Q4_0: 8, T.Q4_1: 0, T.Q5_0: 16, T.Q5_1: 0, T.Q8_0: 128}  # makes every code unsigned


def _build_q32(w):
    t = w.ggml_type
    if simd.INT8_DOT is None or (t == T.Q8_0 and not simd.BYTE_PRODUCTS_EXACT):
        return PackedQ32(w.raw, t, w.shape[0], w.shape[1], _repacked_by_llama_cpp(w))
    from camelid.quant.kernels_vnni import PackedQ32Vnni

    off = _CODE_OFFSET[t]
    return PackedQ32Vnni(w.raw, t, w.shape[0], w.shape[1], _repacked_by_llama_cpp(w),
                         lambda recs: _codes_q32(recs, t).view(np.uint8) + np.uint8(off), off,
                         t in _NIBBLE_TYPES, t in (T.Q4_1, T.Q5_1))


def _build_k(w):
    from camelid.quant.kernels_k import PackedK

    repacked = _repacked_by_llama_cpp(w)
    if simd.INT8_DOT is None:
        return PackedK(w.raw, w.ggml_type, w.shape[0], w.shape[1], repacked)
    from camelid.quant.kernels_k_vnni import PackedKVnni, PackedQ4KVnni

    if repacked:
        return PackedQ4KVnni(w.raw, w.shape[0], w.shape[1])
    return PackedKVnni(w.raw, w.ggml_type, w.shape[0], w.shape[1])


def _build_float(w):
    from camelid.quant.kernels_float import PackedFloat

    return PackedFloat(w.raw, w.ggml_type, w.shape[0], w.shape[1])


class _Kernel:
    """`kernel(qtensor, x)` for QTensor.matmul; `prepare` unpacks the weights once, into
    `qtensor.kernel_data`; `layout(qtensor)` is what, beside the type, decides the arithmetic of a
    matrix's products (matrices stack into one product only where it is equal)."""

    def __init__(self, build, layout):
        self.build = build
        self.layout = layout

    def prepare(self, w):
        if w.kernel_data is None:
            w.kernel_data = self.build(w)
        return w.kernel_data

    def __call__(self, w, x: np.ndarray) -> np.ndarray:
        return self.prepare(w).matmul(np.ascontiguousarray(x, dtype=np.float32))


def _same_for_all(w) -> bool:
    return True


BUILTIN_KERNELS = {
    **{t: _Kernel(_build_q32, _repacked_by_llama_cpp) for t in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)},
    **{t: _Kernel(_build_k, _repacked_by_llama_cpp) for t in (T.Q4_K, T.Q5_K, T.Q6_K)},
    **{t: _Kernel(_build_float, _same_for_all) for t in (T.F32, T.F16, T.BF16)},
}
