"""512-bit vectors as Numba values, for the integer dot-product kernels (camelid/quant/kernels/*_int8.py).

Numba vectorizes loops by itself, but it cannot emit `vpdpbusd`, the AVX-512 VNNI instruction that
llama.cpp's quantized dot products are built on: 64 products of an unsigned byte with a signed byte,
summed by 4 into 16 int32 lanes. This module adds two Numba types whose values are LLVM vector
registers, `I32x16` (<16 x i32>, also 64 bytes) and `F32x16` (<16 x float>), and the few
operations the kernels need, each a line of LLVM IR. Loads and stores take an array and an element
offset and do no bounds checking.

The float32 and int32 operations are plain LLVM vector operations, which compile for any x86-64 CPU
(as two 256-bit halves without AVX-512). `dot_bytes` is the one that needs particular instructions;
`INT8_DOT` names how this CPU does it:
- "vnni": `vpdpbusd` (AVX-512 VNNI), exact for any bytes;
- "avx512bw", "avx2": `vpmaddubsw` (pairs of products, saturated to int16), then `vpmaddwd` by ones
  and an add, as llama.cpp does without VNNI. Exact while the unsigned bytes are at most 128 (two
  products with activation codes of -127..127 then fit int16): every K-quant and 4- and 5-bit code,
  not Q8_0's shifted codes (`BYTE_PRODUCTS_EXACT` is False), which take `dot_signed_bytes` instead;
- None: no usable instructions; the kernels of this module must not run.
The environment variable CAMELID_SIMD (vnni, avx512bw, avx2 or none) overrides the choice, for
tests (camelid.compile_cache keys Numba's cache on it); CAMELID_SIMD=amx means VNNI plus AMX tiles
for prompt-sized products where the CPU has them (camelid.cpu.amx), which is also the default there.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


def aligned_empty(shape, dtype) -> np.ndarray:
    """np.empty, starting on a 64-byte boundary, so that no vector load straddles two cache lines
    (large NumPy arrays start 16 bytes into a page). NumPy still asks Linux for transparent huge
    pages for it; aligning the weights to 2 MiB as well measured 10% slower (cache-set conflicts)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.empty(n * dtype.itemsize + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip:skip + n * dtype.itemsize].view(dtype).reshape(shape)


_NEEDS = {
    "vnni": ("avx512f", "avx512bw", "avx512vnni", "f16c", "fma"),
    "avx512bw": ("avx512f", "avx512bw", "f16c", "fma"),
    "avx2": ("avx2", "f16c", "fma"),
}


def _int8_dot() -> str | None:
    forced = os.environ.get("CAMELID_SIMD", "").lower()
    if forced:
        forced = "vnni" if forced == "amx" else forced
        return forced if forced in _NEEDS else None
    features = llvm_binding.get_host_cpu_features()
    for name, needs in _NEEDS.items():
        if all(features.get(f, False) for f in needs):
            return name
    return None


INT8_DOT = _int8_dot()
BYTE_PRODUCTS_EXACT = INT8_DOT == "vnni"

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_V_I32 = ir.VectorType(_I32, 16)
_V_F32 = ir.VectorType(_F32, 16)
_V_I8 = ir.VectorType(_I8, 64)
_V_F16 = ir.VectorType(ir.HalfType(), 16)


_LLVM_TYPES = {"I32x16": _V_I32, "F32x16": _V_F32}


class _Vector(types.Type):
    """A 512-bit vector value; `name` picks its LLVM type (names only, so that Numba's cache pickles it)."""

    def __init__(self, name: str):
        super().__init__(name=name)


class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LLVM_TYPES[fe_type.name])


I32x16 = _Vector("I32x16")
F32x16 = _Vector("F32x16")
register_model(_Vector)(_VectorModel)


def _binary(op: str, vector):
    """A lane-wise operation of two vectors of one type: an llvmlite IRBuilder method name."""
    @intrinsic
    def binary(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return vector(vector, vector), codegen

    return binary


def _splat(builder, scalar, vector_type):
    """The scalar in every lane."""
    lane0 = builder.insert_element(ir.Constant(vector_type, None), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(lane0, ir.Constant(vector_type, None), ir.Constant(_V_I32, [0] * 16))


def _address(context, builder, array_type, array, offset_type, offset, pointee):
    """A `pointee*` to element `offset` of a contiguous array."""
    data = context.make_array(array_type)(context, builder, array).data
    index = context.cast(builder, offset, offset_type, types.intp)
    return builder.bitcast(builder.gep(data, [index]), pointee.as_pointer())


# ---------------------------------------------------------------------------- int32 lanes

def _load(vector, align: int):
    """A load of a `vector` value from an array from element `offset` (no bounds check)."""
    @intrinsic
    def load(typingctx, array, offset):
        def codegen(context, builder, sig, args):
            ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1], _LLVM_TYPES[vector.name])
            return builder.load(ptr, align=align)

        return vector(array, offset), codegen

    return load


load_bytes = _load(I32x16, 1)
load_bytes.__doc__ = "The 64 bytes of a uint8/int8 array from element `offset`, as I32x16."
load_i32 = _load(I32x16, 4)
load_i32.__doc__ = "16 int32 values of an int32 array from element `offset`."


def _store(vector, align: int):
    """A store of a `vector` value to an array from element `offset` (no bounds check)."""
    @intrinsic
    def store(typingctx, array, offset, v):
        def codegen(context, builder, sig, args):
            ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1], _LLVM_TYPES[vector.name])
            builder.store(args[2], ptr, align=align)
            return context.get_dummy_value()

        return types.none(array, offset, vector), codegen

    return store


store_bytes = _store(I32x16, 1)
store_bytes.__doc__ = "Write the 64 bytes of an I32x16 to a uint8/int8 array from element `offset`."


@intrinsic
def broadcast_bytes4(typingctx, array, offset):
    """Bytes offset..offset+3 of a uint8/int8 array, repeated in all 16 lanes."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1], _I32)
        word = builder.load(ptr, align=1)
        return _splat(builder, word, _V_I32)

    return I32x16(array, offset), codegen


@intrinsic
def broadcast_i32(typingctx, value):
    """An int32 scalar in all 16 lanes."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int32)
        return _splat(builder, v, _V_I32)

    return I32x16(value), codegen


@intrinsic
def load_u8_as_i32(typingctx, array, offset):
    """16 bytes of a uint8 array from element `offset`, zero-extended to 16 int32 lanes."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1], ir.VectorType(_I8, 16))
        return builder.zext(builder.load(ptr, align=1), _V_I32)

    return I32x16(array, offset), codegen


@intrinsic
def load_i8_as_i32(typingctx, array, offset):
    """16 bytes of an int8 array from element `offset`, sign-extended to 16 int32 lanes."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1], ir.VectorType(_I8, 16))
        return builder.sext(builder.load(ptr, align=1), _V_I32)

    return I32x16(array, offset), codegen


add_i32 = _binary("add", I32x16)
add_i32.__doc__ = "Lane-wise int32 a + b."
mul_i32 = _binary("mul", I32x16)
mul_i32.__doc__ = "Lane-wise int32 a * b (the low 32 bits)."
sub_i32 = _binary("sub", I32x16)
sub_i32.__doc__ = "Lane-wise int32 a - b."
and_i32 = _binary("and_", I32x16)
and_i32.__doc__ = "Lane-wise a & b."
or_i32 = _binary("or_", I32x16)
or_i32.__doc__ = "Lane-wise a | b."


def _bytewise(op: str):
    """A byte-wise (wrapping) operation on the 64 bytes of two I32x16: an llvmlite IRBuilder method name."""
    @intrinsic
    def bytewise(typingctx, a, b):
        def codegen(context, builder, sig, args):
            result = getattr(builder, op)(builder.bitcast(args[0], _V_I8), builder.bitcast(args[1], _V_I8))
            return builder.bitcast(result, _V_I32)

        return I32x16(I32x16, I32x16), codegen

    return bytewise


sub_bytes = _bytewise("sub")
sub_bytes.__doc__ = "Byte-wise a - b (wrapping), of the 64 bytes of two I32x16."
mul_bytes = _bytewise("mul")
mul_bytes.__doc__ = "Byte-wise a * b (the low 8 bits), of the 64 bytes of two I32x16."


def _shift(op: str):
    """A lane-wise int32 shift by a scalar number of bits: an llvmlite IRBuilder method name."""
    @intrinsic
    def shift(typingctx, a, bits):
        def codegen(context, builder, sig, args):
            n = context.cast(builder, args[1], sig.args[1], types.int32)
            return getattr(builder, op)(args[0], _splat(builder, n, _V_I32))

        return I32x16(I32x16, bits), codegen

    return shift


shift_left_i32 = _shift("shl")
shift_left_i32.__doc__ = "Lane-wise int32 a << bits."
shift_right_i32 = _shift("lshr")
shift_right_i32.__doc__ = "Lane-wise uint32 a >> bits (zeros shifted in)."


@intrinsic
def dot_i16_pairs(typingctx, a, b):
    """vpmaddwd (AVX-512BW): lane i = a.lo16 * b.lo16 + a.hi16 * b.hi16 of lane i, int16 halves, exact in int32."""
    def codegen(context, builder, sig, args):
        v_i16 = ir.VectorType(_I16, 32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_I32, [v_i16, v_i16]), "llvm.x86.avx512.pmaddw.d.512")
        return builder.call(fn, [builder.bitcast(args[0], v_i16), builder.bitcast(args[1], v_i16)])

    return I32x16(I32x16, I32x16), codegen


@intrinsic
def zeros_i32(typingctx):
    """16 int32 zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_V_I32, [0] * 16)

    return I32x16(), codegen


def _maddubs_parts(builder):
    """The instruction width this CPU's int8 path uses: (bytes per instruction, vpmaddubsw, vpmaddwd)."""
    width = 64 if INT8_DOT == "avx512bw" else 32
    prefix = "llvm.x86.avx512." if width == 64 else "llvm.x86.avx2."
    v_i8 = ir.VectorType(_I8, width)
    v_i16 = ir.VectorType(_I16, width // 2)
    v_i32 = ir.VectorType(_I32, width // 4)
    maddubs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v_i16, [v_i8, v_i8]),
                                             prefix + ("pmaddubs.w.512" if width == 64 else "pmadd.ub.sw"))
    maddwd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v_i32, [v_i16, v_i16]),
                                            prefix + ("pmaddw.d.512" if width == 64 else "pmadd.wd"))
    return width, maddubs, maddwd


def _halves(builder, x, width):
    """A 512-bit vector as the pieces of `width` elements one instruction takes (itself when it fits)."""
    n = x.type.count
    if width == n:
        return [x]
    undef = ir.Constant(x.type, None)
    return [builder.shuffle_vector(x, undef, ir.Constant(ir.VectorType(_I32, width), list(range(h * width, (h + 1) * width))))
            for h in range(n // width)]


def _join(builder, parts):
    """The pieces of `_halves` back as one vector."""
    if len(parts) == 1:
        return parts[0]
    n = parts[0].type.count
    return builder.shuffle_vector(parts[0], parts[1], ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n))))


def _maddubs_ir(builder, u, s):
    """IR of vpmaddubsw on 64 bytes: <32 x i16> saturated sums of the products u * s of bytes 2i, 2i+1."""
    width, maddubs, _ = _maddubs_parts(builder)
    return _join(builder, [builder.call(maddubs, [uh, sh]) for uh, sh in zip(_halves(builder, u, width), _halves(builder, s, width))])


def _pairs_to_i32_ir(builder, pairs):
    """IR of vpmaddwd by ones on <32 x i16>: the sums of halves 2i and 2i+1 as <16 x i32>."""
    width, _, maddwd = _maddubs_parts(builder)
    ones = ir.Constant(ir.VectorType(_I16, width // 2), [1] * (width // 2))
    return _join(builder, [builder.call(maddwd, [p, ones]) for p in _halves(builder, pairs, width // 2)])


def _dot_bytes_ir(builder, acc, u, s):
    """IR of acc + the sums of 4 products u * s (64 bytes each: u unsigned, s signed) per int32 lane."""
    if INT8_DOT == "vnni":
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_I32, [_V_I32, _V_I8, _V_I8]),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [acc, u, s])
    return builder.add(acc, _pairs_to_i32_ir(builder, _maddubs_ir(builder, u, s)))


@intrinsic
def dot_bytes(typingctx, acc, unsigned_bytes, signed_bytes):
    """Lane i of acc plus the 4 products of bytes 4i..4i+3, unsigned times signed (see INT8_DOT)."""
    def codegen(context, builder, sig, args):
        return _dot_bytes_ir(builder, args[0], builder.bitcast(args[1], _V_I8), builder.bitcast(args[2], _V_I8))

    return I32x16(I32x16, I32x16, I32x16), codegen


@intrinsic
def dot_bytes_i16(typingctx, acc, unsigned_bytes, signed_bytes):
    """`dot_bytes` for an accumulator whose pair sums stay 16-bit until `add_i16_pairs`: without VNNI,
    acc's int16 halves plus vpmaddubsw's pair sums (products of bytes 4i, 4i+1 into the low half of
    lane i, of 4i+2, 4i+3 into the high half), so that a run of products costs one vpmaddwd instead of
    one each; with VNNI, `dot_bytes`. Exact while no half ever passes 32767 in magnitude: the caller
    keeps each run to 16 products of 4-bit codes (15 x 127 x 16 = 30480). Start acc at zeros_i32."""
    def codegen(context, builder, sig, args):
        acc, u, s = args[0], builder.bitcast(args[1], _V_I8), builder.bitcast(args[2], _V_I8)
        if INT8_DOT == "vnni":
            return _dot_bytes_ir(builder, acc, u, s)
        v_i16 = ir.VectorType(_I16, 32)
        return builder.bitcast(builder.add(builder.bitcast(acc, v_i16), _maddubs_ir(builder, u, s)), _V_I32)

    return I32x16(I32x16, I32x16, I32x16), codegen


@intrinsic
def add_i16_pairs(typingctx, acc, pairs):
    """Lane i of the int32 acc plus lane i of a `dot_bytes_i16` accumulator (its two halves, without VNNI)."""
    def codegen(context, builder, sig, args):
        if INT8_DOT == "vnni":
            return builder.add(args[0], args[1])
        return builder.add(args[0], _pairs_to_i32_ir(builder, builder.bitcast(args[1], ir.VectorType(_I16, 32))))

    return I32x16(I32x16, I32x16), codegen


@intrinsic
def dot_signed_bytes(typingctx, acc, a, b):
    """Lane i of acc plus the 4 products of bytes 4i..4i+3, signed times signed: |a| times b with a's
    sign, as llama.cpp's AVX2 Q8_0 product does (`_mm256_sign_epi8`). Exact on every INT8_DOT while no
    byte of b is -128 (int8 activation codes are -127..127): |a| <= 128 and |b| <= 127 keep each pair
    of products within int16."""
    def codegen(context, builder, sig, args):
        a, b = builder.bitcast(args[1], _V_I8), builder.bitcast(args[2], _V_I8)
        if INT8_DOT == "avx2":  # vpsignb: b negated where a < 0, zeroed where a == 0
            v32 = ir.VectorType(_I8, 32)
            psign = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v32, [v32, v32]), "llvm.x86.avx2.psign.b")
            halves = []
            for half in range(2):
                pick = ir.Constant(ir.VectorType(_I32, 32), list(range(32 * half, 32 * half + 32)))
                ah = builder.shuffle_vector(a, ir.Constant(_V_I8, None), pick)
                bh = builder.shuffle_vector(b, ir.Constant(_V_I8, None), pick)
                halves.append((builder.call(psign, [ah, ah]), builder.call(psign, [bh, ah])))
            join = ir.Constant(ir.VectorType(_I32, 64), list(range(64)))
            magnitude = builder.shuffle_vector(halves[0][0], halves[1][0], join)
            signed = builder.shuffle_vector(halves[0][1], halves[1][1], join)
        else:
            zero = ir.Constant(_V_I8, [0] * 64)
            negative = builder.icmp_signed("<", a, zero)
            magnitude = builder.select(negative, builder.sub(zero, a), a)
            signed = builder.select(negative, builder.sub(zero, b), b)
        return _dot_bytes_ir(builder, args[0], magnitude, signed)

    return I32x16(I32x16, I32x16, I32x16), codegen


def _nibbles(shift: int):
    @intrinsic
    def nibbles(typingctx, v):
        def codegen(context, builder, sig, args):
            x = args[0]
            if shift:
                x = builder.lshr(x, ir.Constant(_V_I32, [shift] * 16))
            return builder.and_(x, ir.Constant(_V_I32, [0x0F0F0F0F] * 16))

        return I32x16(I32x16), codegen

    return nibbles


low_nibbles = _nibbles(0)
low_nibbles.__doc__ = "The low 4 bits of every byte."
high_nibbles = _nibbles(4)
high_nibbles.__doc__ = "The high 4 bits of every byte, moved down."


@intrinsic
def to_f32(typingctx, v):
    """The 16 int32 lanes converted to float32 (exact below 2^24)."""
    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _V_F32)

    return F32x16(I32x16), codegen


# ---------------------------------------------------------------------------- float32 lanes

@intrinsic
def zeros_f32(typingctx):
    """16 float32 zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_V_F32, [0.0] * 16)

    return F32x16(), codegen


@intrinsic
def broadcast_f32(typingctx, value):
    """A float32 scalar in all 16 lanes."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        return _splat(builder, v, _V_F32)

    return F32x16(value), codegen


load_f32 = _load(F32x16, 4)
load_f32.__doc__ = "16 float32 values of a float32 array from element `offset`."


@intrinsic
def load_f16(typingctx, array, offset):
    """16 float16 values (a uint16 array's bits, from element `offset`) widened to float32 exactly."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], sig.args[1], args[1], _V_F16)
        return builder.fpext(builder.load(ptr, align=2), _V_F32)

    return F32x16(array, offset), codegen


store_f32 = _store(F32x16, 4)
store_f32.__doc__ = "Write 16 float32 lanes to a float32 array from element `offset`."


add = _binary("fadd", F32x16)
add.__doc__ = "Lane-wise a + b, rounded once."
mul = _binary("fmul", F32x16)
mul.__doc__ = "Lane-wise a * b, rounded once."
sub = _binary("fsub", F32x16)
sub.__doc__ = "Lane-wise a - b, rounded once."


@intrinsic
def reduce_add(typingctx, v):
    """The sum of the 16 lanes in _mm512_reduce_add_ps's order (as ggml_math.hsum16): halves added
    (a[i] + a[i+8]), then quarters (+4), then (b0 + b2) + (b1 + b3)."""
    def codegen(context, builder, sig, args):
        x = args[0]
        undef = ir.Constant(_V_F32, None)
        for width in (8, 4, 2):
            lo = builder.shuffle_vector(x, undef, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
            hi = builder.shuffle_vector(x, undef, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
            x = builder.fadd(lo, hi)
            undef = ir.Constant(ir.VectorType(_F32, width), None)
        return builder.fadd(builder.extract_element(x, ir.Constant(_I32, 0)), builder.extract_element(x, ir.Constant(_I32, 1)))

    return types.float32(F32x16), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """Lane-wise a * b + c with one rounding."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_F32, [_V_F32] * 3), "llvm.fma.v16f32")
        return builder.call(fn, args)

    return F32x16(F32x16, F32x16, F32x16), codegen
