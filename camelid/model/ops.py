"""The transformer's non-matmul operations, with llama.cpp's numerics bit for bit.

Each op works on float32 and rounds exactly where llama.cpp's x86 AVX-512 CPU path rounds (see
camelid.cpu.ggml_math for the primitives): RMSNorm's float64 sum, RoPE with glibc's cosf/sinf and
GCC's fused multiply-adds, SwiGLU with ggml_v_silu, and the attention as ggml's non-flash path runs
it: float16 keys and values, queries and attention weights rounded to float16, the two products in
tinyBLAS's or ggml_vec_dot_f16's lane order, and ggml's softmax with ggml_v_expf.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from camelid.cpu import simd
from camelid.cpu.work_queue import PARALLEL_ROWS
from camelid.cpu.ggml_math import (f16_bits, f16_to_f32, fma32, hsum16, libm_cosf, libm_sinf, libm_tanhf, round_f16, silu_f32,
                                   v_expf, v_silu)

U = np.uint64


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (n, d) float32 -> x / sqrt(mean(x^2) + eps) * weight, rounded where ggml rounds.

    ggml squares in float32, sums in float64 in order, and takes the mean, the square root and the
    scale in float32; matching it bit for bit matters because the next matmul quantizes this output
    to int8.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    (_rms_norm_parallel if len(x) >= PARALLEL_ROWS else _rms_norm)(x, weight, np.float32(eps), out)
    return out


@njit(cache=True, boundscheck=False)
def _rms_norm(x, weight, eps, out):
    for t in range(x.shape[0]):
        _rms_norm_row(x, weight, eps, out, t)


@njit(cache=True, parallel=True, boundscheck=False)
def _rms_norm_parallel(x, weight, eps, out):
    for t in prange(x.shape[0]):
        _rms_norm_row(x, weight, eps, out, t)


@njit(cache=True, inline="always")
def _rms_norm_row(x, weight, eps, out, t):
    d = x.shape[1]
    total = 0.0
    for i in range(d):
        total += np.float64(x[t, i] * x[t, i])
    scale = np.float32(1.0) / np.sqrt(np.float32(total / d) + eps)
    for i in range(d):
        out[t, i] = (x[t, i] * scale) * weight[i]


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    """SwiGLU's elementwise part: silu(gate) * up, as ggml_vec_swiglu_f32, from gate_up (n, 2 * n_ff)
    float32 holding gate then up in each row (the stacked gate/up product); returns (n, n_ff).

    Each row goes 16 values at a time through ggml_v_silu; a last partial group uses the scalar
    ggml_silu_f32 (glibc's expf).
    """
    gate_up = np.ascontiguousarray(gate_up, dtype=np.float32)
    n, m2 = gate_up.shape
    out = np.empty((n, m2 // 2), np.float32)
    _swiglu(gate_up, out)
    return out


@njit(cache=True, parallel=True, boundscheck=False)
def _swiglu(gate_up, out):
    n, m = out.shape
    m16 = U(m - m % 16)
    um = U(m)
    gu = gate_up.reshape(-1)
    of = out.reshape(-1)
    for r in prange(n):
        o = U(r) * um
        g = U(2) * o  # gate at g, up at g + m
        for i in range(m16):
            of[o + i] = v_silu(gu[g + i]) * gu[g + um + i]
        for i in range(m16, um):
            of[o + i] = silu_f32(gu[g + i]) * gu[g + um + i]


@functools.cache
def _gelu_table() -> np.ndarray:
    """ggml_table_gelu_f16 widened to float32: for each float16 bit pattern h, ggml_gelu_f32(h)
    rounded to float16. (65536,) float32."""
    table = np.empty(1 << 16, np.float32)
    _fill_gelu_table(table)
    return table


@njit(cache=True)
def _fill_gelu_table(table):
    """0.5x (1 + tanhf(sqrt(2/pi) x (1 + 0.044715 x x))) per float16 x, as GCC compiles ggml_gelu_f32:
    the inner 1 + (0.044715 x) x fused, glibc's tanhf."""
    for h in range(len(table)):
        x = f16_to_f32(np.uint16(h))
        inner = fma32(np.float32(0.044715) * x, x, np.float32(1.0))
        t = libm_tanhf(np.float32(0.7978845608028654) * x * inner)
        table[h] = round_f16(np.float32(0.5) * x * (np.float32(1.0) + t))


def gelu_mul(gate_up: np.ndarray) -> np.ndarray:
    """GeGLU's elementwise part: gelu_tanh(gate) * up, as ggml_vec_geglu_f32 with GGML_GELU_FP16,
    from gate_up (n, 2 * n_ff) float32 holding gate then up in each row; returns (n, n_ff).

    A gate value in (-10, 10) is rounded to float16 and looked up in ggml's float16 GELU table; at
    or below -10 the result is +0, at or above 10 the gate passes unchanged.
    """
    gate_up = np.ascontiguousarray(gate_up, dtype=np.float32)
    out = np.empty((gate_up.shape[0], gate_up.shape[1] // 2), np.float32)
    _gelu_mul(gate_up, _gelu_table(), out)
    return out


@njit(cache=True, parallel=True, boundscheck=False)
def _gelu_mul(gate_up, table, out):
    n, m = out.shape
    for t in prange(n):
        for i in range(m):
            x = gate_up[t, i]
            if x <= np.float32(-10.0):
                out[t, i] = np.float32(0.0)  # +0 whatever the sign of up, as ggml
            elif x >= np.float32(10.0) or x != x:
                out[t, i] = x * gate_up[t, m + i]
            else:
                out[t, i] = table[f16_bits(x)] * gate_up[t, m + i]


@njit(cache=True, boundscheck=False)
def _angles(positions, theta_scale, out):
    """out[t, i] = positions[t] * theta_scale^i, by repeated float32 multiplication."""
    for t in range(out.shape[0]):
        theta = positions[t]
        for i in range(out.shape[1]):
            out[t, i] = theta
            theta = theta * theta_scale


class Rope:
    """Rotary position embedding for one model, with the angles computed as ggml computes them.

    ggml builds each position's angles in float32 by repeated multiplication, theta_{i+1} =
    theta_i * base^(-2/rope_dim) starting from theta_0 = position, then scales by 1/scale (linear
    scaling) and divides by freq_factor[i] (Llama 3.1's rope_freqs). The float32 rounding of that
    recurrence reaches about 1e-5 relative at the last pair; reproducing it keeps the rotated queries
    next to llama.cpp's, which matters because they are later rounded to float16. `attn_factor`
    ({arch}.rope.scaling.attn_factor, Phi-3 LongRoPE's magnitude scale) multiplies the cosines and
    sines in float32, as ggml's rope_yarn multiplies them by mscale.
    """

    def __init__(self, head_dim: int, rope_dim: int, base: float, scale: float, neox: bool, freq_factors: np.ndarray | None = None,
                 attn_factor: float = 1.0):
        if rope_dim % 2 or not 2 <= rope_dim <= head_dim:
            raise ValueError(f"Rope: rope_dim {rope_dim} must be even and within the head size {head_dim}")
        if freq_factors is not None and freq_factors.shape != (rope_dim // 2,):
            raise ValueError(f"Rope: {freq_factors.shape} frequency factors for rope_dim {rope_dim}")
        self.head_dim = head_dim
        self.rope_dim = rope_dim
        self.neox = neox
        self.theta_scale = np.float32(base) ** np.float32(-2.0 / rope_dim)  # powf(base, -2/n_dims)
        self.freq_scale = np.float32(1.0 / scale)
        self.freq_factors = None if freq_factors is None else freq_factors.astype(np.float32)
        self.attn_factor = np.float32(attn_factor)
        self._last = None  # (positions bytes, (cos, sin)) of the last call to cos_sin
        self._rotation: Rope | None = None  # rotation_only()'s result, made once

    def angles(self, positions: np.ndarray) -> np.ndarray:
        """(n,) positions -> (n, rope_dim/2) float32 angles."""
        out = np.empty((len(positions), self.rope_dim // 2), dtype=np.float32)
        _angles(positions.astype(np.float32), self.theta_scale, out)
        if self.freq_factors is not None:
            out /= self.freq_factors[None, :]
        return out * self.freq_scale

    def cos_sin(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, rope_dim/2) float32 cosines and sines of the angles, by glibc's cosf and sinf.

        The last result is kept: every layer rotates its queries and keys by the same positions.
        """
        key = np.asarray(positions).tobytes()
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        angles = self.angles(positions)
        cos = np.empty_like(angles)
        sin = np.empty_like(angles)
        _cos_sin(angles.reshape(-1), cos.reshape(-1), sin.reshape(-1))
        if self.attn_factor != 1:
            cos *= self.attn_factor
            sin *= self.attn_factor
        self._last = (key, (cos, sin))
        return cos, sin

    def rotation_only(self) -> "Rope":
        """This RoPE without its attn_factor: a pure rotation, for turning keys already in the cache."""
        if self.attn_factor == 1:
            return self
        if self._rotation is None:
            self._rotation = Rope.__new__(Rope)
            self._rotation.__dict__.update(self.__dict__, attn_factor=np.float32(1.0), _last=None)
        return self._rotation

    def apply(self, x: np.ndarray, positions: np.ndarray, cos_sin=None) -> np.ndarray:
        """x (n, n_heads, head_dim) float32 rotated in place by positions (n,); returns x.

        Pairs (x0, x1) become (x0*cos - x1*sin, x0*sin + x1*cos) with GCC's contraction of ggml's
        rotate_pairs: fma(x0, cos, -(x1*sin)) and fma(x0, sin, x1*cos). `cos_sin` may pass the
        result of `cos_sin(positions)` to share it between the queries and the keys.
        """
        cos, sin = self.cos_sin(positions) if cos_sin is None else cos_sin
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            raise ValueError("Rope.apply needs a C-contiguous float32 array")
        half = (len(positions), self.rope_dim // 2)
        if x.ndim < 2 or x.shape[0] != len(positions) or x.shape[-1] != self.head_dim or cos.shape != half or sin.shape != half:
            raise ValueError(f"Rope.apply: x {x.shape}, cos {cos.shape}, sin {sin.shape} for {len(positions)} positions, "
                             f"head size {self.head_dim}, rope_dim {self.rope_dim}")
        _rotate(x.reshape(x.shape[0], -1, x.shape[-1]), cos, sin, self.rope_dim, self.neox)
        return x


@njit(cache=True, boundscheck=False)
def _cos_sin(angles, cos, sin):
    for i in range(angles.size):
        cos[i] = libm_cosf(angles[i])
        sin[i] = libm_sinf(angles[i])


@njit(cache=True, boundscheck=False)
def _rotate(x, cos, sin, rope_dim, neox):
    n, n_heads, _ = x.shape
    half = rope_dim // 2
    for t in range(n):
        for h in range(n_heads):
            for i in range(half):
                if neox:
                    i0, i1 = i, i + half
                else:
                    i0, i1 = 2 * i, 2 * i + 1
                c = cos[t, i]
                s = sin[t, i]
                x0 = x[t, h, i0]
                x1 = x[t, h, i1]
                x[t, h, i0] = fma32(x0, c, -(x1 * s))
                x[t, h, i1] = fma32(x0, s, x1 * c)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int, scale: float | None = None, window: int = 0,
              rows: np.ndarray | None = None) -> np.ndarray:
    """Causal grouped-query attention, as ggml's non-flash path computes it.

    q (n, n_head, d) float32 for positions start..start+n-1; k, v (T, n_head_kv, d) float16 for
    positions 0..T-1 with T = start + n; or, given rows (T,) int64, k, v (N, n_head_kv, d) where
    position t is row rows[t] < N (a paged cache, camelid.model.kv_pool; the kernels do not check
    the rows, the pool builds them in range). Query head h reads key/value
    head h // (n_head / n_head_kv).
    Returns (n, n_head * d) float32. The scores are multiplied by `scale` (default 1/sqrt(d)); with
    `window` > 0 a query at position p sees only positions p - window + 1..p (llama.cpp's standard
    sliding window: masked where p - t >= window).

    llama.cpp pads the number of cached positions it reads to a multiple of 256 and masks the extra
    ones; they contribute exact zeros, so only the lane structure they imply is reproduced. With
    n >= 2 tokens both products run in llamafile's tinyBLAS (16 float lanes over the contracted
    index, in order, then `_mm512_reduce_add_ps`); a single token uses ggml_vec_dot_f16 (4 x 16
    lanes over 64-value steps); a head size tinyBLAS cannot take (not a multiple of 16 for the
    scores, of 4 for the output) falls back to ggml_vec_dot_f16 as llama.cpp does.
    """
    n, n_head, d = q.shape
    n_rows, n_kv, _ = k.shape
    if rows is None:
        rows = np.arange(n_rows, dtype=np.int64)
    t = len(rows)
    if k.shape != v.shape or k.shape[2] != d or t != start + n or n_head % n_kv or rows.dtype != np.int64:
        raise ValueError(f"attention: {t} cached positions for {n} queries from {start}, {n_head} heads over {n_kv}")
    q16 = np.empty(q.shape, np.float32)
    _round_f16_all(np.ascontiguousarray(q, dtype=np.float32).reshape(-1), q16.reshape(-1))
    k16 = np.ascontiguousarray(k, dtype=np.float16).view(np.uint16)  # Numba has no float16: the bits
    v16 = np.ascontiguousarray(v, dtype=np.float16).view(np.uint16)
    scale = np.float32(1.0) / np.sqrt(np.float32(d)) if scale is None else np.float32(scale)  # 1.0f / sqrtf(head_dim)
    window = int(window) if window and window > 0 else 1 << 62
    out = np.empty((n, n_head * d), dtype=np.float32)
    if n == 1 and d % 64 == 0:
        _attention_one(q16, k16, v16, rows, scale, window, out)
        return out
    # the cache widened to float32 once per call: keys transposed, (n_kv, d, T16 + 16) flat, so that
    # the scores of consecutive positions come out of vector operations; values (n_kv, T16, d)
    t16 = (t + 15) // 16 * 16
    kt = simd.aligned_empty(n_kv * d * (t16 + 16), np.float32)  # rows 16 apart from a power of two: no cache-set conflicts
    v32 = simd.aligned_empty((n_kv, t16, d), np.float32)  # positions padded with zeros to t16
    v32[:, t:] = 0
    _widen_kv(k16, v16, rows, kt, v32)
    if n >= 2 and d % 16 == 0:
        _attention_tiled(q16, kt, v32, start, scale, window, out)
    else:
        _attention(q16, kt, v32, start, scale, window, n >= 2 and d % 16 == 0, n >= 2 and d % 4 == 0, out)
    return out


@njit(cache=True, parallel=True, boundscheck=False)
def _round_f16_all(x, out):
    """out = x rounded to float16 (nearest even), as float32; flat arrays."""
    n = len(x)
    per = 1 << 14
    for c in prange((n + per - 1) // per):
        for i in range(c * per, min(n, (c + 1) * per)):
            out[i] = round_f16(x[i])


@njit(cache=True, parallel=True, boundscheck=False)
def _widen_kv(k16, v16, rows, kt, v32):
    """float16 bits -> float32: position t (row rows[t] of k16, v16 (N, n_kv, d)): values into v32
    (n_kv, >= T, d), keys transposed into kt, flat (n_kv, d, row stride >= T16), through a tile of
    16 positions (read by rows, written by columns)."""
    _, n_kv, d = k16.shape
    t_len = len(rows)
    t_alloc = v32.shape[1]
    ud = U(d)
    ks = U(len(kt) // (n_kv * d))  # kt's row stride
    kflat = k16.reshape(-1)
    vflat = v16.reshape(-1)
    v32flat = v32.reshape(-1)
    for hk in prange(n_kv):
        tile = np.empty(16 * d, np.float32)
        uh = U(hk)
        for t in range(U(t_len)):
            oi = (U(rows[t]) * U(n_kv) + uh) * ud
            oo = (uh * U(t_alloc) + t) * ud
            for c in range(ud):
                v32flat[oo + c] = f16_to_f32(vflat[oi + c])
        for t0 in range(U(0), U(t_len), U(16)):
            nb = min(U(16), U(t_len) - t0)
            for tt in range(nb):
                oi = (U(rows[t0 + tt]) * U(n_kv) + uh) * ud
                for c in range(ud):
                    tile[tt * ud + c] = f16_to_f32(kflat[oi + c])
            for c in range(ud):
                ok = (uh * ud + c) * ks + t0
                for tt in range(nb):
                    kt[ok + tt] = tile[tt * ud + c]


@njit(cache=True, parallel=True, boundscheck=False)
def _attention(q, kt, v32, start, scale, window, kq_tiny, kqv_tiny, out):
    """One (head, query) per job; see `attention`. Positions go 64 at a time through the scores:
    blk[lane, tt] holds lane `lane` (tinyBLAS: c % 16; vec_dot_f16: c % 64) of position t0 + tt."""
    n, n_head, d = q.shape
    n_kv, t_len, _ = v32.shape
    group = n_head // n_kv
    ud = U(d)
    ks = U(len(kt) // (n_kv * d))  # kt's row stride
    n_lanes = U(16) if kq_tiny else U(64)
    n64 = U(d) if kq_tiny else U(d - d % 64)  # vec_dot_f16 adds the last d % 64 products in float64
    for job in prange(n_head * n):
        h = job // n
        i = job % n
        hk = h // group
        n_vis = start + i + 1  # positions this query sees
        n_pad = (n_vis + 15) // 16 * 16  # the 16-value groups that hold them
        w = np.empty(n_pad, np.float32)
        blk = np.zeros(64 * 64, np.float32)  # (lane, position in the block)
        tail = np.zeros(64, np.float64)
        # scores kq[t] = k[t] . q, then w = kq * scale + mask; up to 64 positions at a time
        for t0 in range(U(0), U(n_pad), U(64)):
            nb = min(U(64), U(n_pad) - t0)  # a multiple of 16, and a run-time trip count (vectorized)
            blk[:] = 0
            for c in range(n64):
                qc = q[i, h, c]
                o = (c % n_lanes) * U(64)
                ok = (U(hk) * ud + c) * ks + t0
                for tt in range(nb):
                    blk[o + tt] = fma32(kt[ok + tt], qc, blk[o + tt])
            if not kq_tiny:  # 4 registers of 16 lanes: (s0 + s2) + (s1 + s3)
                for lane in range(U(16)):
                    o = lane * U(64)
                    for tt in range(nb):
                        blk[o + tt] = (blk[o + tt] + blk[U(2048) + o + tt]) + (blk[U(1024) + o + tt] + blk[U(3072) + o + tt])
            for tt in range(nb):  # _mm512_reduce_add_ps of each position's 16 lanes
                b0 = blk[tt] + blk[U(512) + tt]
                b1 = blk[U(64) + tt] + blk[U(576) + tt]
                b2 = blk[U(128) + tt] + blk[U(640) + tt]
                b3 = blk[U(192) + tt] + blk[U(704) + tt]
                b4 = blk[U(256) + tt] + blk[U(768) + tt]
                b5 = blk[U(320) + tt] + blk[U(832) + tt]
                b6 = blk[U(384) + tt] + blk[U(896) + tt]
                b7 = blk[U(448) + tt] + blk[U(960) + tt]
                w[t0 + tt] = ((b0 + b4) + (b2 + b6)) + ((b1 + b5) + (b3 + b7))
            if n64 < ud:  # vec_dot_f16's tail, summed in float64 (float16 products are exact)
                for tt in range(nb):
                    tail[tt] = np.float64(w[t0 + tt])
                for c in range(n64, ud):
                    qc = q[i, h, c]
                    ok = (U(hk) * ud + c) * ks + t0
                    for tt in range(nb):
                        tail[tt] += np.float64(kt[ok + tt] * qc)
                for tt in range(nb):
                    w[t0 + tt] = np.float32(tail[tt])
        _softmax(w, n_vis, scale, window)
        # output: out[i, h*d + c] = sum_t w[t] * v[t, hk, c], lanes t % 16 (tinyBLAS) or t % 64
        o = h * d
        n_acc = U(16) if kqv_tiny else U(64)
        acc = np.zeros(n_acc * ud, np.float32)  # (t % n_acc, c)
        vflat = v32.reshape(-1)
        ov = U(hk) * U(t_len) * ud
        for t in range(U(n_vis)):
            p = w[t]
            oa = (t % n_acc) * ud
            ot = ov + t * ud
            for c in range(ud):
                acc[oa + c] = fma32(p, vflat[ot + c], acc[oa + c])
        if not kqv_tiny:
            for lane in range(U(16)):
                for c in range(ud):
                    acc[lane * ud + c] = (acc[lane * ud + c] + acc[(U(32) + lane) * ud + c]) + (
                        acc[(U(16) + lane) * ud + c] + acc[(U(48) + lane) * ud + c])
        for c in range(ud):
            b0 = acc[c] + acc[U(8) * ud + c]
            b1 = acc[ud + c] + acc[U(9) * ud + c]
            b2 = acc[U(2) * ud + c] + acc[U(10) * ud + c]
            b3 = acc[U(3) * ud + c] + acc[U(11) * ud + c]
            b4 = acc[U(4) * ud + c] + acc[U(12) * ud + c]
            b5 = acc[U(5) * ud + c] + acc[U(13) * ud + c]
            b6 = acc[U(6) * ud + c] + acc[U(14) * ud + c]
            b7 = acc[U(7) * ud + c] + acc[U(15) * ud + c]
            out[i, U(o) + c] = ((b0 + b4) + (b2 + b6)) + ((b1 + b5) + (b3 + b7))


@njit(cache=True, inline="always")
def _sum16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    """_mm512_reduce_add_ps of lanes a0..a15, for 16 sums at once (one per vector lane)."""
    c0 = simd.add(simd.add(a0, a8), simd.add(a4, a12))
    c1 = simd.add(simd.add(a1, a9), simd.add(a5, a13))
    c2 = simd.add(simd.add(a2, a10), simd.add(a6, a14))
    c3 = simd.add(simd.add(a3, a11), simd.add(a7, a15))
    return simd.add(simd.add(c0, c2), simd.add(c1, c3))


@njit(cache=True, parallel=True, boundscheck=False)
def _attention_tiled(q, kt, v32, start, scale, window, out):
    """`_attention` for n >= 2 tokens and a head size that is a multiple of 16 (tinyBLAS on both
    products): 16 positions (scores) or 16 outputs (values) per vector, the 16 lanes of
    tinyBLAS in 16 registers, reduced in _mm512_reduce_add_ps's order. v32 (n_kv, T16, d) has zero
    padding rows; the masked positions have weight 0."""
    n, n_head, d = q.shape
    n_kv, t16, _ = v32.shape
    group = n_head // n_kv
    ud = U(d)
    ut16 = U(t16)
    uks = U(len(kt) // (n_kv * d))  # kt's row stride
    vflat = v32.reshape(-1)
    oflat = out.reshape(-1)
    for job in prange(n_head * n):
        h = job // n
        i = job % n
        hk = U(h // group)
        n_vis = start + i + 1
        n_pad = (n_vis + 15) // 16 * 16
        w = np.empty(n_pad, np.float32)
        kh = hk * ud * uks
        for t0 in range(U(0), U(n_pad), U(16)):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = simd.zeros_f32()
            a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = simd.zeros_f32()
            for c in range(U(0), ud, U(16)):
                o = kh + c * uks + t0
                a0 = simd.fma(simd.load_f32(kt, o), simd.broadcast_f32(q[i, h, c]), a0)
                a1 = simd.fma(simd.load_f32(kt, o + uks), simd.broadcast_f32(q[i, h, c + U(1)]), a1)
                a2 = simd.fma(simd.load_f32(kt, o + U(2) * uks), simd.broadcast_f32(q[i, h, c + U(2)]), a2)
                a3 = simd.fma(simd.load_f32(kt, o + U(3) * uks), simd.broadcast_f32(q[i, h, c + U(3)]), a3)
                a4 = simd.fma(simd.load_f32(kt, o + U(4) * uks), simd.broadcast_f32(q[i, h, c + U(4)]), a4)
                a5 = simd.fma(simd.load_f32(kt, o + U(5) * uks), simd.broadcast_f32(q[i, h, c + U(5)]), a5)
                a6 = simd.fma(simd.load_f32(kt, o + U(6) * uks), simd.broadcast_f32(q[i, h, c + U(6)]), a6)
                a7 = simd.fma(simd.load_f32(kt, o + U(7) * uks), simd.broadcast_f32(q[i, h, c + U(7)]), a7)
                a8 = simd.fma(simd.load_f32(kt, o + U(8) * uks), simd.broadcast_f32(q[i, h, c + U(8)]), a8)
                a9 = simd.fma(simd.load_f32(kt, o + U(9) * uks), simd.broadcast_f32(q[i, h, c + U(9)]), a9)
                a10 = simd.fma(simd.load_f32(kt, o + U(10) * uks), simd.broadcast_f32(q[i, h, c + U(10)]), a10)
                a11 = simd.fma(simd.load_f32(kt, o + U(11) * uks), simd.broadcast_f32(q[i, h, c + U(11)]), a11)
                a12 = simd.fma(simd.load_f32(kt, o + U(12) * uks), simd.broadcast_f32(q[i, h, c + U(12)]), a12)
                a13 = simd.fma(simd.load_f32(kt, o + U(13) * uks), simd.broadcast_f32(q[i, h, c + U(13)]), a13)
                a14 = simd.fma(simd.load_f32(kt, o + U(14) * uks), simd.broadcast_f32(q[i, h, c + U(14)]), a14)
                a15 = simd.fma(simd.load_f32(kt, o + U(15) * uks), simd.broadcast_f32(q[i, h, c + U(15)]), a15)
            simd.store_f32(w, t0, _sum16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15))
        _softmax(w, n_vis, scale, window)
        ov = hk * ut16 * ud
        oo = U(i * n_head * d + h * d)
        for c in range(U(0), ud, U(16)):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = simd.zeros_f32()
            a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = simd.zeros_f32()
            for t0 in range(U(0), U(n_pad), U(16)):
                o = ov + t0 * ud + c
                a0 = simd.fma(simd.broadcast_f32(w[t0]), simd.load_f32(vflat, o), a0)
                a1 = simd.fma(simd.broadcast_f32(w[t0 + U(1)]), simd.load_f32(vflat, o + ud), a1)
                a2 = simd.fma(simd.broadcast_f32(w[t0 + U(2)]), simd.load_f32(vflat, o + U(2) * ud), a2)
                a3 = simd.fma(simd.broadcast_f32(w[t0 + U(3)]), simd.load_f32(vflat, o + U(3) * ud), a3)
                a4 = simd.fma(simd.broadcast_f32(w[t0 + U(4)]), simd.load_f32(vflat, o + U(4) * ud), a4)
                a5 = simd.fma(simd.broadcast_f32(w[t0 + U(5)]), simd.load_f32(vflat, o + U(5) * ud), a5)
                a6 = simd.fma(simd.broadcast_f32(w[t0 + U(6)]), simd.load_f32(vflat, o + U(6) * ud), a6)
                a7 = simd.fma(simd.broadcast_f32(w[t0 + U(7)]), simd.load_f32(vflat, o + U(7) * ud), a7)
                a8 = simd.fma(simd.broadcast_f32(w[t0 + U(8)]), simd.load_f32(vflat, o + U(8) * ud), a8)
                a9 = simd.fma(simd.broadcast_f32(w[t0 + U(9)]), simd.load_f32(vflat, o + U(9) * ud), a9)
                a10 = simd.fma(simd.broadcast_f32(w[t0 + U(10)]), simd.load_f32(vflat, o + U(10) * ud), a10)
                a11 = simd.fma(simd.broadcast_f32(w[t0 + U(11)]), simd.load_f32(vflat, o + U(11) * ud), a11)
                a12 = simd.fma(simd.broadcast_f32(w[t0 + U(12)]), simd.load_f32(vflat, o + U(12) * ud), a12)
                a13 = simd.fma(simd.broadcast_f32(w[t0 + U(13)]), simd.load_f32(vflat, o + U(13) * ud), a13)
                a14 = simd.fma(simd.broadcast_f32(w[t0 + U(14)]), simd.load_f32(vflat, o + U(14) * ud), a14)
                a15 = simd.fma(simd.broadcast_f32(w[t0 + U(15)]), simd.load_f32(vflat, o + U(15) * ud), a15)
            simd.store_f32(oflat, oo + c, _sum16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15))


@njit(cache=True, inline="always")
def _softmax(w, n_vis, scale, window):
    """w[:n_pad] scores -> float16-rounded softmax weights of positions n_vis - window..n_vis - 1
    (all of the first n_vis when window >= n_vis), 0 for the rest, as ggml_soft_max
    (ggml_vec_max_f32, ggml_v_expf, a float64 sum of 16-lane sums)."""
    n_pad = len(w)
    lo = n_vis - 1 - window  # the query's position p = n_vis - 1 masks t <= p - window
    for t in range(n_pad):
        w[t] = w[t] * scale if lo < t < n_vis else -np.inf
    mx = -np.inf
    for t in range(n_vis):
        mx = max(mx, w[t])
    for t in range(n_pad):
        w[t] = v_expf(w[t] - mx)
    total = 0.0
    for b in range(0, n_pad, 16):
        total += np.float64(hsum16(w, b))
    inv = np.float32(1.0 / total)
    for t in range(n_pad):
        w[t] = round_f16(w[t] * inv)


@njit(cache=True, parallel=True, boundscheck=False)
def _attention_one(q, k16, v16, rows, scale, window, out):
    """`_attention` for one query and a head size that is a multiple of 64 (ggml_vec_dot_f16 on
    both products), straight from the float16 cache k16, v16 (N, n_kv, d), position t in row
    rows[t]: the 64 lanes of a score are 4 vectors along the head, and the 64 lanes (positions
    mod 64) of the outputs a (64, d) float32 scratch."""
    _, n_head, d = q.shape
    _, n_kv, _ = k16.shape
    t_len = len(rows)
    group = n_head // n_kv
    ud = U(d)
    row = U(n_kv) * ud  # cache elements per position
    kflat = k16.reshape(-1)
    vflat = v16.reshape(-1)
    oflat = out.reshape(-1)
    n_pad = (t_len + 15) // 16 * 16
    for h in prange(n_head):
        hk = U(h // group)
        w = np.empty(n_pad, np.float32)
        acc = np.zeros(64 * d, np.float32)  # (position mod 64, c)
        qh = q[0, h]
        for t in range(U(t_len)):
            o = U(rows[t]) * row + hk * ud
            s0 = s1 = s2 = s3 = simd.zeros_f32()
            for c in range(U(0), ud, U(64)):
                s0 = simd.fma(simd.load_f16(kflat, o + c), simd.load_f32(qh, c), s0)
                s1 = simd.fma(simd.load_f16(kflat, o + c + U(16)), simd.load_f32(qh, c + U(16)), s1)
                s2 = simd.fma(simd.load_f16(kflat, o + c + U(32)), simd.load_f32(qh, c + U(32)), s2)
                s3 = simd.fma(simd.load_f16(kflat, o + c + U(48)), simd.load_f32(qh, c + U(48)), s3)
            w[t] = simd.reduce_add(simd.add(simd.add(s0, s2), simd.add(s1, s3)))
        _softmax(w, t_len, scale, window)
        for t in range(U(t_len)):
            p = simd.broadcast_f32(w[t])
            o = U(rows[t]) * row + hk * ud
            oa = (t % U(64)) * ud
            for c in range(U(0), ud, U(16)):
                simd.store_f32(acc, oa + c, simd.fma(p, simd.load_f16(vflat, o + c), simd.load_f32(acc, oa + c)))
        oo = U(h * d)
        for c in range(U(0), ud, U(16)):
            simd.store_f32(oflat, oo + c, _lanes64(acc, ud, c))


@njit(cache=True, inline="always")
def _lane4(acc, ud, c, l):
    """(lane l + lane l+32) + (lane l+16 + lane l+48) of the (64, d) scratch, at outputs c..c+15."""
    return simd.add(simd.add(simd.load_f32(acc, U(l) * ud + c), simd.load_f32(acc, U(l + 32) * ud + c)),
                    simd.add(simd.load_f32(acc, U(l + 16) * ud + c), simd.load_f32(acc, U(l + 48) * ud + c)))


@njit(cache=True, inline="always")
def _lanes64(acc, ud, c):
    """ggml_vec_dot_f16's sum of 64 lanes, at outputs c..c+15: 4 registers added as (s0 + s2) +
    (s1 + s3), then _mm512_reduce_add_ps's tree."""
    return _sum16(_lane4(acc, ud, c, 0), _lane4(acc, ud, c, 1), _lane4(acc, ud, c, 2), _lane4(acc, ud, c, 3),
                  _lane4(acc, ud, c, 4), _lane4(acc, ud, c, 5), _lane4(acc, ud, c, 6), _lane4(acc, ud, c, 7),
                  _lane4(acc, ud, c, 8), _lane4(acc, ud, c, 9), _lane4(acc, ud, c, 10), _lane4(acc, ud, c, 11),
                  _lane4(acc, ud, c, 12), _lane4(acc, ud, c, 13), _lane4(acc, ud, c, 14), _lane4(acc, ud, c, 15))
