"""The activation rounding llama.cpp applies before each matrix product, reproduced in NumPy.

llama.cpp's CPU backend never multiplies float activations by quantized weights: it first converts
the activation rows to the weight type's `vec_dot_type` (`type_traits_cpu[...]` in ggml-cpu.c) and
then runs an integer (or half-precision) dot product. `fake_quantize` returns those converted
activations as float32 (int8 value times block scale), so that `fake_quantize(x, t) @ W.T`, with `W`
the dequantized weights, is llama.cpp's result up to the order of the float additions.

What is reproduced is the x86 AVX2/AVX-512 build (the one `pip install llama-cpp-python` compiles on
this machine), checked against its `quantize_row_q8_0/q8_1/q8_K` bit for bit in tests/test_quant.py:

- Q8_0 (for Q4_0, Q5_0, Q8_0 weights), 32 values per block: amax = max|x|, d = amax / 127 stored as
  f16, q = round(x * (127 / amax)) to nearest-even (`_mm256_round_ps(_MM_ROUND_NEAREST)`), so
  x ~ f16(d) * q. The scalar reference `quantize_row_q8_0_ref` differs: it multiplies by 1 / d and
  rounds halves away from zero (`roundf`); that build is not what runs here. The repacked Q4_0/Q8_0
  path (`ggml_quantize_mat_q8_0_4x8`) uses the same arithmetic as the AVX2 row function.
- Q8_1 (for Q4_1, Q5_1 weights): the same q and d, plus s = f16(d * sum(q)) with d in float32. The
  weight min is multiplied by that s, not by f16(d) * sum(q), so a float product with the min column
  is off by m * (s - f16(d) * sum(q)) per block; `q8_1_sum_correction` returns that residual and
  `QTensor.matmul` adds it back (a (n, k/32) @ (k/32, n_out) product).
- Q8_K (for Q4_K, Q5_K, Q6_K weights), 256 values per block: max = the value of largest magnitude
  (sign kept), iscale = -127 / max, q = min(127, round-half-even(iscale * x)), d = 1 / iscale in
  float32 (`quantize_row_q8_K_ref`, which the x86 build calls; `ggml_quantize_mat_q8_K_4x8` and the
  tiled VNNI kernels read the same numbers). The per-16 sums `bsums` are exact integer sums of q, so
  the K-quant min terms need no correction. x ~ d * q rounds once in float32.
- F16 weights: activations rounded to float16 (nearest-even, F16C); BF16 weights: to bfloat16
  (nearest-even, NaN kept quiet); F32 weights: unchanged.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

T = GGMLQuantizationType
QK8 = 32  # values per Q8_0 / Q8_1 block
QK_K = 256  # values per Q8_K block

VEC_DOT_TYPE: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    T.F32: T.F32,
    T.F16: T.F16,
    T.BF16: T.BF16,
    T.Q4_0: T.Q8_0,
    T.Q4_1: T.Q8_1,
    T.Q5_0: T.Q8_0,
    T.Q5_1: T.Q8_1,
    T.Q8_0: T.Q8_0,
    T.Q4_K: T.Q8_K,
    T.Q5_K: T.Q8_K,
    T.Q6_K: T.Q8_K,
}


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """(n, k) float32 -> (n, k // size, size) view; k must be a multiple of size."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % size:
        raise ValueError(f"activations must be (n, k) with k a multiple of {size}, got {x.shape}")
    return x.reshape(x.shape[0], -1, size)


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize (n, k) float32 rows to Q8_0 as ggml's AVX2 `quantize_row_q8_0` does.

    Returns d: (n, k/32) float16 block scales and q: (n, k/32, 32) int8 in [-127, 127].
    """
    # Q8_0: 32 values in 34 bytes: f16 d, 32 int8 q
    xb = _blocks(x, QK8)
    amax = np.abs(xb).max(axis=2)  # (n, nb)
    with np.errstate(over="ignore"):  # a scale beyond the f16 range becomes inf, as in ggml
        d = (amax / np.float32(127)).astype(np.float16)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0)
    q = np.rint(xb * inv[:, :, None]).astype(np.int8)
    return d, q


def quantize_q8_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize (n, k) float32 rows to Q8_1 as ggml's AVX2 `quantize_row_q8_1` does.

    Returns d: (n, k/32) float16, s: (n, k/32) float16 = f16(d_f32 * sum(q)), q: (n, k/32, 32) int8.
    """
    # Q8_1: 32 values in 36 bytes: f16 d, f16 s, 32 int8 q
    xb = _blocks(x, QK8)
    amax = np.abs(xb).max(axis=2)
    d32 = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0)
    q = np.rint(xb * inv[:, :, None]).astype(np.int8)
    with np.errstate(over="ignore"):
        s = (d32 * q.sum(axis=2, dtype=np.int32).astype(np.float32)).astype(np.float16)
        return d32.astype(np.float16), s, q


def quantize_q8_K(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize (n, k) float32 rows to Q8_K as ggml's `quantize_row_q8_K_ref` does.

    Returns d: (n, k/256) float32 and q: (n, k/256, 256) int8 in [-127, 127] (bsums are q's sums
    over groups of 16). An all-zero block gets d = 0 and q = 0.
    """
    # Q8_K: 256 values in 292 bytes: f32 d, 256 int8 q, 16 int16 bsums
    xb = _blocks(x, QK_K)
    idx = np.abs(xb).argmax(axis=2)[:, :, None]  # first value of largest magnitude
    vmax = np.take_along_axis(xb, idx, axis=2)[:, :, 0]  # (n, nb), sign kept
    nonzero = vmax != 0
    iscale = np.divide(np.float32(-127), vmax, out=np.zeros_like(vmax), where=nonzero)
    q = np.minimum(np.rint(xb * iscale[:, :, None]), np.float32(127)).astype(np.int8)
    d = np.divide(np.float32(1), iscale, out=np.zeros_like(iscale), where=nonzero)
    return d, q


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (nearest-even, NaN forced quiet), returned widened to float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u.astype(np.uint64) + (0x7FFF + ((u >> 16) & 1))) >> 16
    bits = np.where(nan, (u >> 16) | np.uint32(64), rounded).astype(np.uint32)
    return (bits << 16).view(np.float32)


def fake_quantize(x: np.ndarray, weight_type: GGMLQuantizationType) -> np.ndarray:
    """Activations (n, k) float32 as llama.cpp's dot product with `weight_type` weights sees them.

    The result is float32 (n, k): each value is its int8 code times its block scale (Q8_0, Q8_1,
    Q8_K), or the value rounded to float16 / bfloat16, or x itself for F32 weights. See the module
    docstring for the exact rules and `q8_1_sum_correction` for Q4_1/Q5_1.
    """
    vt = VEC_DOT_TYPE.get(weight_type)
    if vt is None:
        raise ValueError(f"no activation rule for weight type {getattr(weight_type, 'name', weight_type)}")
    x = np.asarray(x, dtype=np.float32)
    if vt == T.F32:
        return x
    if vt == T.F16:
        with np.errstate(over="ignore"):  # beyond +-65504 becomes inf, as with F16C
            return x.astype(np.float16).astype(np.float32)
    if vt == T.BF16:
        return _round_bf16(x)
    if vt == T.Q8_K:
        d, q = quantize_q8_K(x)
    elif vt == T.Q8_1:
        d, _s, q = quantize_q8_1(x)
    else:
        d, q = quantize_q8_0(x)
    return (q.astype(np.float32) * d.astype(np.float32)[:, :, None]).reshape(x.shape)


def q8_1_sum_correction(x: np.ndarray) -> np.ndarray:
    """Per-block (n, k/32) float32 residual s - f16(d) * sum(q) of the Q8_1 quantization of x.

    llama.cpp's Q4_1/Q5_1 dot product adds m * s per block, where `fake_quantize(x) @ W.T` adds
    m * f16(d) * sum(q); adding `q8_1_sum_correction(x) @ mins.T` (mins: (n_out, k/32), the f16 block
    mins of the weights) closes the gap.
    """
    d, s, q = quantize_q8_1(x)
    return s.astype(np.float32) - d.astype(np.float32) * q.sum(axis=2, dtype=np.int32).astype(np.float32)
