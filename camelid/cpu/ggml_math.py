"""ggml's float primitives, emulated lane by lane in Numba so that camelid rounds where llama.cpp does.

Reproduced from the x86 AVX-512 build of ggml compiled by GCC (the one `pip install llama-cpp-python`
builds on this machine):

- `fma32`: a fused multiply-add (`_mm*_fmadd_ps`, and every `a * b + c` GCC contracts), through
  LLVM's llvm.fma.f32, which compiles to the hardware instruction and vectorizes.
- `hsum8`: `hsum_float_8`, the 8-lane sum ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
- `hsum16`: GCC's `_mm512_reduce_add_ps`: halves added (a[i] + a[i+8]), then quarters (+4), then
  the 4-lane sum (b0+b2) + (b1+b3).
- `v_expf`: `ggml_v_expf`, the AVX-512 polynomial exponential of vec.h (softmax and SiLU use it).
- `libm_expf`, `libm_cosf`, `libm_sinf`, `libm_tanhf`: glibc's float functions, called directly
  (ggml's scalar tails, RoPE's cache and the GELU table call them; the correctly rounded float64
  cos/sin differ from glibc's cosf / sinf in about 1 value in 100 for RoPE's angles, and NumPy's
  float32 tanh from tanhf in 234 of the GELU table's 65536 entries).
- `round_f16`, `f16_to_f32`: float16 conversions as F16C does them (nearest-even), on float32.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def fma32(typingctx, a, b, c):
    """float32 a * b + c with one rounding."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


def _bitcast(from_type, to_type, to_ir):
    """A Numba intrinsic that reinterprets the bits of a `from_type` value as `to_type`."""

    @intrinsic
    def cast(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], to_ir)

        return to_type(from_type), codegen

    return cast


u32_as_f32 = _bitcast(types.uint32, types.float32, ir.FloatType())
f32_as_u32 = _bitcast(types.float32, types.uint32, ir.IntType(32))
u64_as_f64 = _bitcast(types.uint64, types.float64, ir.DoubleType())


@njit(cache=True, inline="always")
def f16_to_f32(h):
    """IEEE half bits (a uint16) -> the float32 of the same value (normals, subnormals, inf, NaN)."""
    hu = np.uint32(h)
    mag = hu & np.uint32(0x7FFF)
    # mag << 13 puts exponent and mantissa in float32 position; * 2^112 rebiases them (exactly,
    # subnormal halves included); inf and NaN keep an all-ones exponent
    bits = f32_as_u32(u32_as_f32(mag << np.uint32(13)) * np.float32(5.192296858534828e33))
    bits = (np.uint32(0x7F800000) | ((mag & np.uint32(0x03FF)) << np.uint32(13))) if mag >= np.uint32(0x7C00) else bits
    return u32_as_f32(bits | ((hu & np.uint32(0x8000)) << np.uint32(16)))


def _libm_f32(name: str):
    @intrinsic
    def call(typingctx, x):
        sig = types.float32(types.float32)

        def codegen(context, builder, signature, args):
            f32 = ir.FloatType()
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32]), name)
            return builder.call(fn, args)

        return sig, codegen

    return call


libm_expf = _libm_f32("expf")
libm_cosf = _libm_f32("cosf")
libm_sinf = _libm_f32("sinf")
libm_tanhf = _libm_f32("tanhf")


@njit(cache=True, inline="always")
def hsum8(a0, a1, a2, a3, a4, a5, a6, a7):
    """hsum_float_8 of the lanes a0..a7 (float32)."""
    return ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))


@njit(cache=True, inline="always")
def hsum16(a, o):
    """_mm512_reduce_add_ps of the 16 float32 lanes a[o:o+16]."""
    b0 = a[o] + a[o + 8]
    b1 = a[o + 1] + a[o + 9]
    b2 = a[o + 2] + a[o + 10]
    b3 = a[o + 3] + a[o + 11]
    b4 = a[o + 4] + a[o + 12]
    b5 = a[o + 5] + a[o + 13]
    b6 = a[o + 6] + a[o + 14]
    b7 = a[o + 7] + a[o + 15]
    c0 = b0 + b4
    c1 = b1 + b5
    c2 = b2 + b6
    c3 = b3 + b7
    return (c0 + c2) + (c1 + c3)


_R = np.float32(float.fromhex("0x1.8p23"))
_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_LN2_HI = np.float32(float.fromhex("0x1.62e4p-1"))
_LN2_LO = np.float32(float.fromhex("0x1.7f7d1cp-20"))
_C5 = np.float32(float.fromhex("0x1.0e4020p-7"))
_C4 = np.float32(float.fromhex("0x1.573e2ep-5"))
_C3 = np.float32(float.fromhex("0x1.555e66p-3"))
_C2 = np.float32(float.fromhex("0x1.fffdb6p-2"))
_C1 = np.float32(float.fromhex("0x1.ffffecp-1"))
_ONE = np.float32(1.0)


@njit(cache=True, inline="always")
def v_expf(x):
    """One lane of ggml_v_expf (AVX-512): exp(x) for float32 x, as llama.cpp computes it.

    Written without branches (selects) so that loops over it vectorize.
    """
    z = fma32(x, _LOG2E, _R)
    n = z - _R
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    u = b * b
    j = fma32(fma32(fma32(_C5, b, _C4), u, fma32(_C3, b, _C2)), u, fma32(_C1, b, _ONE))
    # _mm512_scalef_ps(j, n) = j * 2^n (n is integral here): exact, or one rounding when subnormal;
    # 2^n from its float64 bits (n + 1023) << 52, n clamped where the result is replaced anyway
    nc = min(max(n, np.float32(-192.0)), np.float32(192.0))
    p2 = u64_as_f64(np.uint64(np.int64(nc) + 1023) << np.uint64(52))
    res = np.float32(np.float64(j) * p2)
    out_of_range = np.float32(0.0) if n <= 0.0 else np.float32(np.inf)
    return out_of_range if abs(n) > 192.0 else res  # ordered compare: NaN stays NaN


@njit(cache=True, inline="always")
def v_silu(x):
    """One lane of ggml_v_silu (AVX-512): x / (1 + ggml_v_expf(0 - x))."""
    return x / (_ONE + v_expf(np.float32(0.0) - x))


@njit(cache=True, inline="always")
def silu_f32(x):
    """ggml_silu_f32, the scalar tail of ggml_vec_silu: x / (1 + expf(-x)) with glibc's expf."""
    return x / (_ONE + libm_expf(-x))


@njit(cache=True, inline="always")
def round_f16(x):
    """float32 -> nearest-even float16 -> float32 (as F16C's vcvtps2ph with rounding mode 0).

    Branch-free: normal halves by rounding the float32 bits to 10 mantissa bits, subnormal halves
    (|x| < 2^-14) by the float32 addition |x| + 0.5, whose rounding is to a multiple of 2^-24.
    """
    a = abs(x)
    bits = f32_as_u32(x)
    normal = u32_as_f32((bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000))
    sub = (a + np.float32(0.5)) - np.float32(0.5)
    sub = -sub if bits >= np.uint32(0x80000000) else sub  # the sign of x, -0.0 included
    r = sub if a < np.float32(6.103515625e-05) else normal
    big = np.float32(np.inf) if x > 0 else np.float32(-np.inf)
    r = big if a >= np.float32(65520.0) else r
    return x if a != a or a == np.float32(np.inf) else r


@njit(cache=True, inline="always")
def f16_bits(x):
    """float32 -> the bits (a uint16 value in a uint32) of its nearest-even float16, as F16C's
    vcvtps2ph; for finite x below 65520 in magnitude (larger ones, inf and NaN: not handled)."""
    r = round_f16(x)
    bits = f32_as_u32(r)
    sign = (bits >> np.uint32(16)) & np.uint32(0x8000)
    a = abs(r)
    if a < np.float32(6.103515625e-05):  # a subnormal half: a multiple of 2^-24
        return sign | np.uint32(a * np.float32(16777216.0))
    exponent = ((bits >> np.uint32(23)) & np.uint32(0xFF)) - np.uint32(112)
    return sign | (exponent << np.uint32(10)) | ((bits >> np.uint32(13)) & np.uint32(0x3FF))
