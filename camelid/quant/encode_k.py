"""K-quant quantizers (Q4_K, Q5_K, Q6_K) and the scalar helpers every quantizer shares, in Numba.

`rows_q4_k`, `rows_q5_k`, `rows_q6_k` quantize (n_rows, n_cols) float32 to raw blocks in parallel.
Each row function follows ggml's reference quantizer (`quantize_row_q4_K_ref`,
`quantize_row_q5_K_ref`, `quantize_row_q6_K_ref` with `make_qkx2_quants` / `make_qx_quants`, what
`llama-quantize` runs when no importance matrix is given) step by step in float32, in the same
operation order and with no fused multiply-adds, so the output bytes are identical. Float16 values
are written as their bits (Numba has no float16 type), rounded to nearest-even as ggml does.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from camelid.cpu.ggml_math import f16_to_f32, f32_as_u32

F0 = np.float32(0.0)
F1 = np.float32(1.0)
_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds a float32 to an integer in the mantissa
_GROUP_MAX_EPS = np.float32(1e-15)
_K_CHUNK_WEIGHTS = 8192  # weights per work item: 32 KB per lane array, cache-resident; measured best


@njit(cache=True, inline="always", error_model="numpy")
def nearest_int(f):
    """ggml's nearest_int: round float32 `f` to nearest-even through the bits of f + 1.5 * 2^23."""
    bits = f32_as_u32(np.float32(f + _MAGIC))
    return np.int32(bits & np.uint32(0x007FFFFF)) - np.int32(0x00400000)


@njit(cache=True, inline="always", error_model="numpy")
def f16_bits(f):
    """float32 -> the bits of the nearest-even IEEE half (uint16), as ggml's fp32_to_fp16."""
    w = f32_as_u32(f)
    sign = (w >> np.uint32(16)) & np.uint32(0x8000)
    a = w & np.uint32(0x7FFFFFFF)
    if a > np.uint32(0x7F800000):  # NaN
        return np.uint16(sign | np.uint32(0x7E00))
    if a >= np.uint32(0x477FF000):  # |f| >= 65520 rounds to infinity
        return np.uint16(sign | np.uint32(0x7C00))
    if a >= np.uint32(0x38800000):  # a normal half: rebias the exponent by 112, round 13 mantissa bits
        h = a - np.uint32(0x38000000)
        h = (h + np.uint32(0x0FFF) + ((h >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        return np.uint16(sign | h)
    # a subnormal half (or zero): |f| * 2^24 (exact) rounded to an integer, nearest-even
    m = np.rint(abs(f) * np.float32(16777216.0))
    return np.uint16(sign | np.uint32(m))


@njit(cache=True, inline="always", error_model="numpy")
def put_f16(out, o, f):
    """Store float32 `f` as a little-endian half at out[o:o+2]; return the half's float32 value."""
    h = f16_bits(np.float32(f))
    out[o] = np.uint8(h & np.uint16(0xFF))
    out[o + 1] = np.uint8(h >> np.uint16(8))
    return f16_to_f32(h)


# The fits below run on all sub-blocks of a row at once, one SIMD lane per sub-block: X holds the
# row transposed, element i of sub-block s at X[i * m + s] (m sub-blocks), so every loop over s is
# contiguous. Each lane performs exactly the scalar reference's operations in the same order
# (branches become per-lane selects), so the results are the reference's bit for bit. Each loop
# writes a single array: LLVM vectorizes those, but not loops that update several arrays it cannot
# prove distinct.


@njit(cache=True, error_model="numpy")
def _levels(Lf, X, iscale, mn, lo, hi, n, m):
    """Lf[i, s] = clamp(nearest_int(iscale[s] * (X[i, s] - mn[s])), lo, hi), as float32."""
    for i in range(n):
        o = i * m
        for s in range(m):
            l = nearest_int(iscale[s] * (X[o + s] - mn[s]))
            l = lo if l < lo else l
            l = hi if l > hi else l
            Lf[o + s] = np.float32(l)


@njit(cache=True, error_model="numpy")
def _acc(acc, A, B, n, m):
    """acc[s] += A[i, s] * B[i, s] for i in order."""
    for i in range(n):
        o = i * m
        for s in range(m):
            acc[s] += A[o + s] * B[o + s]


@njit(cache=True, error_model="numpy")
def _acc3(acc, A, B, C, n, m):
    """acc[s] += A[i, s] * B[i, s] * C[i, s] for i in order (the product left to right)."""
    for i in range(n):
        o = i * m
        for s in range(m):
            acc[s] += A[o + s] * B[o + s] * C[o + s]


@njit(cache=True, error_model="numpy")
def _acc_err(acc, W, Lf, scale, mn, X, n, m):
    """acc[s] += W * (scale * L + min - x)^2 for i in order: the weighted squared error."""
    for i in range(n):
        o = i * m
        for s in range(m):
            diff = scale[s] * Lf[o + s] + mn[s] - X[o + s]
            acc[s] += W[o + s] * (diff * diff)


@njit(cache=True, error_model="numpy")
def _take(L, Lnew, better, n, m):
    for i in range(n):
        o = i * m
        for s in range(m):
            L[o + s] = Lnew[o + s] if better[s] else L[o + s]


@njit(cache=True, error_model="numpy")
def qkx2_lanes(X, W, n, m, nmax, rmin, rdelta, nstep, scale_out, min_out):
    """ggml's make_qkx2_quants (use_mad false) on m sub-blocks of n weights: fit x ~ scale * L - min,
    L in [0, nmax], weights W, over a grid of nstep+1 trial scales.

    X, W: (n * m,) transposed as above. Returns L (float32, same layout); writes scale_out[s] and
    min_out[s] (the_min >= 0).
    """
    fnmax = np.float32(nmax)
    lo, hi = np.int32(0), np.int32(nmax)
    mn = X[0:m].copy()
    mx = X[0:m].copy()
    for i in range(1, n):
        for s in range(m):
            mn[s] = X[i * m + s] if X[i * m + s] < mn[s] else mn[s]
        for s in range(m):
            mx[s] = X[i * m + s] if X[i * m + s] > mx[s] else mx[s]
    sum_w = np.zeros(m, np.float32)
    sum_x = np.zeros(m, np.float32)
    ones = np.ones(n * m, np.float32)
    _acc(sum_w, W, ones, n, m)  # w * 1 is exact: the same sums
    _acc(sum_x, W, X, n, m)
    iscale = np.empty(m, np.float32)
    scale = np.empty(m, np.float32)
    flat = np.empty(m, np.bool_)  # max == min: all levels 0, scale 0
    for s in range(m):
        mn[s] = F0 if mn[s] > F0 else mn[s]
        flat[s] = mx[s] == mn[s]
        min_out[s] = -mn[s]
        iscale[s] = fnmax / (mx[s] - mn[s])
        scale[s] = F1 / iscale[s]
    L = np.empty(n * m, np.float32)
    _levels(L, X, iscale, mn, lo, hi, n, m)
    best = np.zeros(m, np.float32)
    _acc_err(best, W, L, scale, mn, X, n, m)
    Laux = np.empty(n * m, np.float32)
    sum_l = np.empty(m, np.float32)
    sum_l2 = np.empty(m, np.float32)
    sum_xl = np.empty(m, np.float32)
    cur = np.empty(m, np.float32)
    this_scale = np.empty(m, np.float32)
    this_min = np.empty(m, np.float32)
    better = np.empty(m, np.bool_)
    for step in range(nstep + 1):
        for s in range(m):
            iscale[s] = (rmin + rdelta * np.float32(step) + fnmax) / (mx[s] - mn[s])
        _levels(Laux, X, iscale, mn, lo, hi, n, m)
        sum_l[:] = F0
        sum_l2[:] = F0
        sum_xl[:] = F0
        cur[:] = F0
        _acc(sum_l, W, Laux, n, m)
        _acc3(sum_l2, W, Laux, Laux, n, m)
        _acc3(sum_xl, W, Laux, X, n, m)
        for s in range(m):
            D = sum_w[s] * sum_l2[s] - sum_l[s] * sum_l[s]
            ts = (sum_w[s] * sum_xl[s] - sum_x[s] * sum_l[s]) / D
            tm = (sum_l2[s] * sum_x[s] - sum_l[s] * sum_xl[s]) / D
            positive = tm > F0
            this_min[s] = F0 if positive else tm
            this_scale[s] = sum_xl[s] / sum_l2[s] if positive else ts
        _acc_err(cur, W, Laux, this_scale, this_min, X, n, m)
        for s in range(m):
            D = sum_w[s] * sum_l2[s] - sum_l[s] * sum_l[s]
            b = (D > F0) & (cur[s] < best[s])
            better[s] = b
            best[s] = cur[s] if b else best[s]
            scale[s] = this_scale[s] if b else scale[s]
            mn[s] = this_min[s] if b else mn[s]
        _take(L, Laux, better, n, m)
    for s in range(m):
        scale_out[s] = F0 if flat[s] else scale[s]
        min_out[s] = min_out[s] if flat[s] else -mn[s]
    _take(L, np.zeros(n * m, np.float32), flat, n, m)
    return L


@njit(cache=True, error_model="numpy")
def qx_lanes(X, n, m, nmax, scale_out):
    """ggml's make_qx_quants with rmse_type 1 and no importance weights on m sub-blocks of n weights:
    fit x ~ scale * (L - nmax), L - nmax in [-nmax, nmax-1], weights x^2, 19 trial scales.

    X: (n * m,) transposed as above. Returns L - nmax (float32, same layout); writes scale_out[s].
    """
    fnmax = np.float32(nmax)
    lo, hi = np.int32(-nmax), np.int32(nmax - 1)
    mx = np.zeros(m, np.float32)
    amax = np.zeros(m, np.float32)
    for i in range(n):
        o = i * m
        for s in range(m):
            ax = abs(X[o + s])
            bigger = ax > amax[s]
            amax[s] = ax if bigger else amax[s]
            mx[s] = X[o + s] if bigger else mx[s]
    W2 = X * X  # the weights w = x * x
    iscale = np.empty(m, np.float32)
    for s in range(m):
        iscale[s] = -fnmax / mx[s]
    L = np.empty(n * m, np.float32)
    _levels(L, X, iscale, np.zeros(m, np.float32), lo, hi, n, m)
    sumlx = np.zeros(m, np.float32)
    suml2 = np.zeros(m, np.float32)
    _acc3(sumlx, W2, X, L, n, m)  # (w * x) * l
    _acc3(suml2, W2, L, L, n, m)  # (w * l) * l
    scale = np.empty(m, np.float32)
    best = np.empty(m, np.float32)
    better = np.empty(m, np.bool_)
    for s in range(m):
        scale[s] = sumlx[s] / suml2[s] if suml2[s] != F0 else F0
        best[s] = scale[s] * sumlx[s]
    Laux = np.empty(n * m, np.float32)
    zeros = np.zeros(m, np.float32)
    for step in range(-9, 10):
        if step == 0:
            continue
        for s in range(m):
            iscale[s] = -(fnmax + np.float32(0.1) * np.float32(step)) / mx[s]
        _levels(Laux, X, iscale, zeros, lo, hi, n, m)
        sumlx[:] = F0
        suml2[:] = F0
        _acc3(sumlx, W2, X, Laux, n, m)
        _acc3(suml2, W2, Laux, Laux, n, m)
        for s in range(m):
            b = (suml2[s] > F0) & (sumlx[s] * sumlx[s] > best[s] * suml2[s])
            better[s] = b
            new_scale = sumlx[s] / suml2[s]
            scale[s] = new_scale if b else scale[s]
            best[s] = new_scale * sumlx[s] if b else best[s]
        _take(L, Laux, better, n, m)
    zero = np.empty(m, np.bool_)
    for s in range(m):
        zero[s] = amax[s] < _GROUP_MAX_EPS
        scale_out[s] = F0 if zero[s] else scale[s]
    _take(L, np.full(n * m, -fnmax, np.float32), zero, n, m)
    return L


@njit(cache=True, error_model="numpy")
def _transpose(x, n):
    """(m * n,) row -> (n * m,) with element i of sub-block s (of n weights) at i * m + s."""
    m = x.size // n
    X = np.empty(x.size, np.float32)
    for s in range(m):
        for i in range(n):
            X[i * m + s] = x[s * n + i]
    return X


@njit(cache=True, inline="always", error_model="numpy")
def _scale_min_k4(j, q):
    """Scale and min j (6 bits each) from the 12 packed scale bytes q of a Q4_K/Q5_K block."""
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


@njit(cache=True, error_model="numpy")
def _kx_levels(x, nmax, rmin, nstep, ybytes):
    """Shared part of Q4_K and Q5_K for a row x: per 32-weight sub-block, weights av_x + |x| and a
    scale/min fit; per 256-weight super-block, write d, dmin (bytes 0-3) and the 12 packed 6-bit
    scale/min bytes (4-15) of each ybytes-long block of y. Returns y and the levels L (uint8, in
    weight order)."""
    m = x.size // 32
    X = _transpose(x, 32)
    W = np.empty(x.size, np.float32)
    for s in range(m):
        sum_x2 = F0
        for i in range(32):
            sum_x2 += X[i * m + s] * X[i * m + s]
        av_x = np.sqrt(sum_x2 / np.float32(32.0))
        for i in range(32):
            W[i * m + s] = av_x + abs(X[i * m + s])
    scales = np.empty(m, np.float32)
    mins = np.empty(m, np.float32)
    n = x.size // m  # 32, computed so that LLVM does not unroll the lanes' loops over it (2x slower)
    LT = qkx2_lanes(X, W, n, m, nmax, rmin, np.float32(0.1), nstep, scales, mins)
    L = np.empty(x.size, np.uint8)
    for s in range(m):
        for i in range(32):
            L[32 * s + i] = np.uint8(LT[i * m + s])
    y = np.zeros(x.size // 256 * ybytes, np.uint8)
    for b in range(x.size // 256):
        yb = y[ybytes * b:ybytes * b + ybytes]
        max_scale = F0
        max_min = F0
        for j in range(8):
            if scales[8 * b + j] > max_scale:
                max_scale = scales[8 * b + j]
            if mins[8 * b + j] > max_min:
                max_min = mins[8 * b + j]
        inv_scale = np.float32(63.0) / max_scale if max_scale > F0 else F0
        inv_min = np.float32(63.0) / max_min if max_min > F0 else F0
        q = yb[4:16]
        for j in range(8):
            ls = min(63, nearest_int(inv_scale * scales[8 * b + j]) & 0xFF)  # stored through a uint8, as in C
            lm = min(63, nearest_int(inv_min * mins[8 * b + j]) & 0xFF)
            if j < 4:
                q[j] = ls
                q[j + 4] = lm
            else:
                q[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
                q[j - 4] |= (ls >> 4) << 6
                q[j] |= (lm >> 4) << 6
        d = put_f16(yb, 0, max_scale / np.float32(63.0))
        dmin = put_f16(yb, 2, max_min / np.float32(63.0))
        xb = x[256 * b:256 * b + 256]
        Lb = L[256 * b:256 * b + 256]
        for j in range(8):
            sc, mq = _scale_min_k4(j, q)
            dj = d * np.float32(sc)
            if dj == F0:
                continue
            dm = dmin * np.float32(mq)
            for i in range(32):
                Lb[32 * j + i] = max(0, min(nmax, nearest_int((xb[32 * j + i] + dm) / dj)))
    return y, L


# Q4_K: 256 weights in 144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes qs where
# byte 32c+l holds weight 64c+l (low nibble) and weight 64c+32+l (high nibble)
@njit(cache=True, error_model="numpy")
def q4_k_row(x, out):
    y, L = _kx_levels(x, 15, np.float32(-1.0), 20, 144)
    for b in range(x.size // 256):
        for c in range(4):
            for l in range(32):
                y[144 * b + 16 + 32 * c + l] = L[256 * b + 64 * c + l] | (L[256 * b + 64 * c + 32 + l] << 4)
    out[:] = y


# Q5_K: 256 weights in 176 bytes: f16 d, f16 dmin, 12 bytes scales/mins, 32 bytes qh (bit 2c of
# qh[l]: 5th bit of weight 64c+l, bit 2c+1: of weight 64c+32+l), 128 bytes qs as in Q4_K
@njit(cache=True, error_model="numpy")
def q5_k_row(x, out):
    y, L = _kx_levels(x, 31, np.float32(-0.5), 15, 176)
    for b in range(x.size // 256):
        qh, qs = y[176 * b + 16:176 * b + 48], y[176 * b + 48:176 * b + 176]
        for c in range(4):
            for l in range(32):
                l1 = L[256 * b + 64 * c + l]
                l2 = L[256 * b + 64 * c + 32 + l]
                if l1 > 15:
                    l1 -= 16
                    qh[l] |= 1 << (2 * c)
                if l2 > 15:
                    l2 -= 16
                    qh[l] |= 2 << (2 * c)
                qs[32 * c + l] = l1 | (l2 << 4)
    out[:] = y


# Q6_K: 256 weights in 210 bytes: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 int8
# scales (one per 16 weights), f16 d; in each half h of 128 weights, for l < 32: ql[64h+l] holds
# weights l (low nibble) and l+64 (high), ql[64h+32+l] weights l+32 and l+96, and qh[32h+l] the
# high bits of weights l, l+32, l+64, l+96 at bits 0, 2, 4, 6
@njit(cache=True, error_model="numpy")
def q6_k_row(x, out):
    m = x.size // 16
    n = x.size // m  # 16, computed so that LLVM does not unroll the lanes' loops over it (2x slower)
    scales = np.empty(m, np.float32)
    LT = qx_lanes(_transpose(x, n), n, m, 32, scales)
    L = np.empty(x.size, np.uint8)  # levels 0..63 in weight order
    for s in range(m):
        for i in range(16):
            L[16 * s + i] = np.uint8(LT[i * m + s] + np.float32(32.0))
    dsub = np.zeros(m, np.float32)  # d * scale of each sub-block; 0: keep the levels of the fit
    zero = np.zeros(x.size // 256, np.bool_)
    for b in range(x.size // 256):
        y = out[210 * b:210 * b + 210]
        max_scale = F0
        max_abs_scale = F0
        for ib in range(16):
            scale = scales[16 * b + ib]
            if abs(scale) > max_abs_scale:
                max_abs_scale = abs(scale)
                max_scale = scale
        if max_abs_scale < _GROUP_MAX_EPS:
            zero[b] = True
            y[:] = 0
            continue
        iscale = np.float32(-128.0) / max_scale
        d = put_f16(y, 208, F1 / iscale)
        for ib in range(16):
            sv = min(127, nearest_int(iscale * scales[16 * b + ib]))
            sv = (sv + 128) % 256 - 128  # stored through an int8, as in C
            y[192 + ib] = np.uint8(sv & 0xFF)
            dsub[16 * b + ib] = d * np.float32(sv)
    for s in range(m):
        dj = dsub[s]
        for i in range(16):
            k = 16 * s + i
            l = max(-32, min(31, nearest_int(x[k] / dj))) + 32
            L[k] = l if dj != F0 else L[k]
    for b in range(x.size // 256):
        if zero[b]:
            continue
        y = out[210 * b:210 * b + 210]
        for h in range(2):
            for l in range(32):
                o = 256 * b + 128 * h + l
                q1, q2, q3, q4 = L[o], L[o + 32], L[o + 64], L[o + 96]
                y[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                y[64 * h + 32 + l] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                y[128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)


@njit(cache=True, inline="always")
def _rows_per_chunk(n_cols):
    """K-quant rows per work item: K-blocks never straddle rows, so a run of whole rows (about
    _K_CHUNK_WEIGHTS weights) is quantized as one long row, giving the sub-block lanes loops
    long enough to vectorize well while their arrays stay in the L1/L2 cache."""
    return max(1, _K_CHUNK_WEIGHTS // n_cols)


# Drivers: (n_rows, n_cols) float32 -> (n_rows, row_bytes) uint8, work items spread over threads.
# They live in this file so that Numba's on-disk cache, keyed on the file, sees changes to the kernels.
@njit(cache=True, parallel=True, error_model="numpy")
def rows_q4_k(x, y):
    step = _rows_per_chunk(x.shape[1])
    for c in prange((x.shape[0] + step - 1) // step):
        r = c * step
        q4_k_row(x[r:r + step].reshape(-1), y[r:r + step].reshape(-1))


@njit(cache=True, parallel=True, error_model="numpy")
def rows_q5_k(x, y):
    step = _rows_per_chunk(x.shape[1])
    for c in prange((x.shape[0] + step - 1) // step):
        r = c * step
        q5_k_row(x[r:r + step].reshape(-1), y[r:r + step].reshape(-1))


@njit(cache=True, parallel=True, error_model="numpy")
def rows_q6_k(x, y):
    step = _rows_per_chunk(x.shape[1])
    for c in prange((x.shape[0] + step - 1) // step):
        r = c * step
        q6_k_row(x[r:r + step].reshape(-1), y[r:r + step].reshape(-1))
