"""Products with float weights (F32, F16, BF16) in llama.cpp's exact operation order, on any CPU.

llama.cpp rounds the activations to the weight type (F16: nearest-even float16; BF16: bfloat16; F32:
unchanged), then, for two or more tokens with n_out a multiple of 4 and n_in a multiple of the
vector width, runs llamafile's tinyBLAS; otherwise (one token: decoding) the ggml_vec_dot_* kernels:

- tinyBLAS F32 and F16 (16 lanes): lane l accumulates fma(w[16u+l], x[16u+l], acc) over u in order,
  and the result is GCC's `_mm512_reduce_add_ps` of the 16 lanes (`hsum16`).
- tinyBLAS BF16 (`_mm512_dpbf16_ps`, 32 values per step): lane l adds w*x of the odd value 32u+2l+1,
  then of the even value 32u+2l (each an exact product and one rounding; bfloat16 subnormals read
  as zero, subnormal sums flushed to zero), then `hsum16`.
- ggml_vec_dot_f32: 4 x 16 lanes over 64-value steps, fma; lanes reduced as (s0+s2)+(s1+s3), then
  `hsum16`; GCC turned the scalar tail into groups of 8 rounded products added in order, and the
  last n % 8 values into fmas.
- ggml_vec_dot_f16: the same 4 x 16 lanes (float16 products are exact); the tail is added in float64.
- ggml_vec_dot_bf16: two 16-lane dpbf16 accumulators, for values 0-31 and 32-63 of each 64-value
  step, each reduced by `hsum16` and added in float64 (then a float64 tail).

F16 and BF16 weights are widened to float32 once at load (twice their file size in memory).
The code paths are listed, with the others, in camelid/quant/kernels/__init__.py.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from camelid.quant.activations import fake_quantize
from camelid.cpu.ggml_math import f32_as_u32, fma32, hsum16, u32_as_f32
from camelid.cpu.work_queue import chunk_groups, new_queue, next_chunk, work_split

T = GGMLQuantizationType
U = np.uint64
F32, F16, BF16 = 0, 1, 2  # weight kinds as the kernels take them
_KIND = {T.F32: F32, T.F16: F16, T.BF16: BF16}
_FLT_MIN = np.float32(1.1754943508222875e-38)


@njit(cache=True, inline="always")
def _ftz(a):
    """Flush a float32 subnormal to zero (keeping the sign), as VDPBF16PS does with its results."""
    return a if abs(a) >= _FLT_MIN else np.float32(0.0) * a


@njit(cache=True, inline="always")
def _dot_tiny(w, x, kind, lanes):
    """tinyBLAS: one output from a float32 weight row w and activation row x (n_in % 16 or 32 == 0)."""
    n = w.size
    lanes[:16] = 0
    if kind == BF16:  # rows permuted by `_pair_order`: the odd values of a 32-chunk, then the even
        for u in range(U(0), U(n), U(32)):
            for lane in range(U(16)):
                a = _ftz(fma32(w[u + lane], x[u + lane], lanes[lane]))
                lanes[lane] = _ftz(fma32(w[u + U(16) + lane], x[u + U(16) + lane], a))
    else:
        for u in range(U(0), U(n), U(16)):
            for lane in range(U(16)):
                lanes[lane] = fma32(w[u + lane], x[u + lane], lanes[lane])
    return hsum16(lanes, 0)


@njit(cache=True, inline="always")
def _dot_vec(w, x, kind, lanes):
    """ggml_vec_dot_f32 / _f16 / _bf16 of one weight row and one activation row."""
    n = w.size
    lanes[:] = 0
    n64 = n - n % 64
    if kind == BF16:  # rows permuted by `_pair_order`
        for u in range(U(0), U(n64), U(64)):
            for half in range(U(2)):
                o = u + half * U(32)
                for lane in range(U(16)):
                    i = half * U(16) + lane
                    a = _ftz(fma32(w[o + lane], x[o + lane], lanes[i]))
                    lanes[i] = _ftz(fma32(w[o + U(16) + lane], x[o + U(16) + lane], a))
        total = np.float64(hsum16(lanes, 0)) + np.float64(hsum16(lanes, 16))
        n32 = n - n % 32
        for i in range(n64, n):  # in the natural order of the values
            j = i
            if i < n32:
                c = i - i % 32
                j = c + (i - c) // 2 + (16 if (i - c) % 2 == 0 else 0)
            total += np.float64(w[j] * x[j])
        return np.float32(total)
    for u in range(U(0), U(n64), U(64)):
        for j in range(U(64)):
            lanes[j] = fma32(w[u + j], x[u + j], lanes[j])
    for lane in range(16):
        lanes[lane] = (lanes[lane] + lanes[32 + lane]) + (lanes[16 + lane] + lanes[48 + lane])
    s = hsum16(lanes, 0)
    if kind == F16:
        total = np.float64(s)
        for i in range(n64, n):
            total += np.float64(w[i] * x[i])
        return np.float32(total)
    n8 = n64 + (n - n64) // 8 * 8
    for i in range(n64, n8):
        s = s + w[i] * x[i]
    for i in range(n8, n):
        s = fma32(w[i], x[i], s)
    return s


@njit(cache=True, parallel=True, boundscheck=False)
def _mm_float(w, kind, x, tiny, out, n_chunks, n_workers):
    """out (n_tok, n_out) = rows of the float32 weights w . rows of x, in the order of tinyBLAS
    (tiny) or of ggml_vec_dot_*. The F32 / F16 tinyBLAS outputs go 2 rows x 4 tokens at a time
    (8 independent fma chains); the others one by one."""
    n_tok, n_in = x.shape
    n_out = out.shape[1]
    n_pairs = (n_out + 1) // 2
    uin = U(n_in)
    blocked = tiny
    n4 = n_tok - n_tok % 4 if blocked else 0
    queue = new_queue(n_workers)
    for worker in prange(n_workers):
        lanes = np.zeros(64, np.float32)
        acc = np.zeros(128, np.float32)
        c = next_chunk(queue, worker, n_chunks, n_workers)
        while c < n_chunks:
            p0, p1 = chunk_groups(c, n_chunks, n_pairs)
            for p in range(p0, p1):
                r = 2 * p
                if blocked and r + 1 < n_out:
                    wa = w[r]
                    wb = w[r + 1]
                    for t0 in range(0, n4, 4):
                        x0 = x[t0]
                        x1 = x[t0 + 1]
                        x2 = x[t0 + 2]
                        x3 = x[t0 + 3]
                        acc[:] = 0
                        if kind == BF16:
                            for u in range(U(0), uin, U(32)):
                                for lane in range(U(16)):
                                    i = u + lane
                                    j = i + U(16)
                                    for k in range(U(8)):
                                        vw = wa[i] if k < U(4) else wb[i]
                                        vx = x0[i] if k % U(4) == U(0) else (x1[i] if k % U(4) == U(1) else (x2[i] if k % U(4) == U(2) else x3[i]))
                                        vw2 = wa[j] if k < U(4) else wb[j]
                                        vx2 = x0[j] if k % U(4) == U(0) else (x1[j] if k % U(4) == U(1) else (x2[j] if k % U(4) == U(2) else x3[j]))
                                        a = _ftz(fma32(vw, vx, acc[k * U(16) + lane]))
                                        acc[k * U(16) + lane] = _ftz(fma32(vw2, vx2, a))
                            for tt in range(4):
                                out[t0 + tt, r] = hsum16(acc, 16 * tt)
                                out[t0 + tt, r + 1] = hsum16(acc, 64 + 16 * tt)
                            continue
                        for u in range(U(0), uin, U(16)):
                            for lane in range(U(16)):
                                i = u + lane
                                va = wa[i]
                                vb = wb[i]
                                a0 = x0[i]
                                a1 = x1[i]
                                a2 = x2[i]
                                a3 = x3[i]
                                acc[lane] = fma32(va, a0, acc[lane])
                                acc[U(16) + lane] = fma32(va, a1, acc[U(16) + lane])
                                acc[U(32) + lane] = fma32(va, a2, acc[U(32) + lane])
                                acc[U(48) + lane] = fma32(va, a3, acc[U(48) + lane])
                                acc[U(64) + lane] = fma32(vb, a0, acc[U(64) + lane])
                                acc[U(80) + lane] = fma32(vb, a1, acc[U(80) + lane])
                                acc[U(96) + lane] = fma32(vb, a2, acc[U(96) + lane])
                                acc[U(112) + lane] = fma32(vb, a3, acc[U(112) + lane])
                        for tt in range(4):
                            out[t0 + tt, r] = hsum16(acc, 16 * tt)
                            out[t0 + tt, r + 1] = hsum16(acc, 64 + 16 * tt)
                    t_first = n4
                else:
                    t_first = 0
                for rr in range(r, min(r + 2, n_out)):
                    for t in range(t_first, n_tok):
                        if tiny:
                            out[t, rr] = _dot_tiny(w[rr], x[t], kind, lanes)
                        else:
                            out[t, rr] = _dot_vec(w[rr], x[t], kind, lanes)
            c = next_chunk(queue, worker, n_chunks, n_workers)


@njit(cache=True, parallel=True, boundscheck=False)
def _widen(raw16, kind, out):
    """F16 / BF16 bits (uint16) -> float32, exact; BF16 subnormals read as zero (VDPBF16PS's DAZ)."""
    n = raw16.size
    for i in prange(n):
        h = np.uint32(raw16[i])
        if kind == BF16:
            out[i] = _ftz(u32_as_f32(h << np.uint32(16)))
        else:
            mag = h & np.uint32(0x7FFF)
            if mag >= np.uint32(0x7C00):  # inf / NaN
                bits = np.uint32(0x7F800000) | ((mag & np.uint32(0x03FF)) << np.uint32(13))
            else:  # mag << 13 places exponent and mantissa; * 2^112 rebiases (also subnormals), exact
                bits = f32_as_u32(u32_as_f32(mag << np.uint32(13)) * np.float32(5.192296858534828e33))
            out[i] = u32_as_f32(bits | ((h & np.uint32(0x8000)) << np.uint32(16)))


def _pair_order(n: int) -> np.ndarray:
    """Column order that puts, in each full 32-value chunk, the 16 odd values before the 16 even
    ones: the order VDPBF16PS consumes them in, made contiguous for the BF16 loops."""
    order = np.arange(n)
    n32 = n - n % 32
    chunks = order[:n32].reshape(-1, 16, 2)
    order[:n32] = np.concatenate([chunks[:, :, 1], chunks[:, :, 0]], axis=1).reshape(-1)
    return order


class Dense:
    """An F32 / F16 / BF16 matrix as float32 rows: F32 read in place, F16 / BF16 widened once."""

    batch_rule = "single"  # vec_dot for one token, tinyBLAS from 2 (QTensor.batch_rules)

    def __init__(self, raw: np.ndarray, t: GGMLQuantizationType, n_out: int, n_in: int):
        self.t = t
        self.kind = _KIND[t]
        self.copies_weights = self.kind != F32  # F32 weights are used in place
        self.n_out, self.n_in = n_out, n_in
        if self.kind == F32:
            self.w = raw.view(np.float32).reshape(n_out, n_in)
        else:
            self.w = np.empty((n_out, n_in), np.float32)
            _widen(np.ascontiguousarray(raw).view(np.uint16).reshape(-1), self.kind, self.w.reshape(-1))
            if self.kind == BF16:
                self.w = np.ascontiguousarray(self.w[:, _pair_order(n_in)])

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tok, n_in) float32 -> (n_tok, n_out) float32, as tinyBLAS (from 2 tokens, where the
        shapes allow, unless single_rows) or ggml_vec_dot_* (see the module docstring)."""
        n_tok = x.shape[0]
        xr = np.ascontiguousarray(fake_quantize(x, self.t), dtype=np.float32)
        if self.kind == BF16:
            xr[np.abs(xr) < _FLT_MIN] *= np.float32(0.0)  # VDPBF16PS reads subnormal inputs as zero
            xr = np.ascontiguousarray(xr[:, _pair_order(self.n_in)])
        width = 32 if self.kind == BF16 else 16
        tiny = n_tok >= 2 and not single_rows and self.n_out % 4 == 0 and self.n_in % width == 0
        out = np.empty((n_tok, self.n_out), np.float32)
        _mm_float(self.w, self.kind, xr, tiny, out, *work_split((self.n_out + 1) // 2))
        return out
