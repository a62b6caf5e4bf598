"""Intel AMX tiles as Numba calls, for the prompt-sized products (the AMX sections of
camelid/quant/kernels/q32_int8.py and kq_int8.py, and layout.py's tile helpers).

A CPU with AMX (Intel Xeon from Sapphire Rapids on) has 8 tile registers of up to 16 rows of 64 bytes
and one instruction, `tdpbssd`, that multiplies two int8 tiles into an int32 one: C (M x N int32) +=
A (M x K int8) times B (K x N int8), where B is stored 4 rows of K at a time ("VNNI layout": row k4
holds, for each column n, the bytes of K = 4k4..4k4+3 of column n). That is the int8 families'
weight step layout (camelid/quant/kernels/layout.py), so a 16-row weight group is a B tile as it is.
Its int32 sums are exact, so the kernels built on it give the VNNI kernels' results bit for bit.
One tdpbssd takes about as long whatever K is (16 cycles for 16 rows of A here); the kernels use K =
32 (a Q4_0 block) or 64 (a pair of Q4_K sub-blocks), the sums llama.cpp's float order keeps apart.

Using the tiles takes three steps:
- the process asks Linux for the tile state once (`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`);
  without that grant the first tile instruction kills it;
- each thread loads a tile configuration (`configure`, 64 bytes from `tile_config`: the rows and
  bytes per row of each tile) before its first tile instruction, and releases the tiles
  (`release`) when it is done, so that the OS stops saving 8 KB of tile state on every switch;
- tile numbers are constants: `load(0, ...)`, `dot(2, 0, 1)`.

`AMX_INT8` says whether this process may use them: the CPU has amx_tile and amx_int8, the int8 kernels
run on VNNI, and Linux granted the tile state. CAMELID_SIMD=vnni (or any other path) turns them off;
CAMELID_SIMD=amx asks for them explicitly (and still needs all of the above).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from camelid.cpu import simd

_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

MAX_ROWS = 16  # rows of a tile
MAX_BYTES = 64  # bytes per tile row


def _request_tile_state() -> bool:
    """Ask Linux to let this process use AMX tile data (once per process; True if granted)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def _amx_int8() -> bool:
    forced = os.environ.get("CAMELID_SIMD", "").lower()
    if forced not in ("", "amx") or simd.INT8_DOT != "vnni":
        return False
    features = llvm_binding.get_host_cpu_features()
    if not (features.get("amx-tile", False) and features.get("amx-int8", False)):
        return False
    return _request_tile_state()


AMX_INT8 = _amx_int8()


def kernel_path() -> str:
    """The int8 kernels this process runs, by CAMELID_SIMD's names: "amx" (VNNI, and AMX tiles for
    prompts), "vnni", "avx512bw", "avx2", or "none" (the float32 kernels)."""
    if simd.INT8_DOT == "vnni" and AMX_INT8:
        return "amx"
    return simd.INT8_DOT or "none"


def tile_config(shapes: dict[int, tuple[int, int]]) -> np.ndarray:
    """The 64-byte configuration `configure` loads: palette 1, and for each tile number the
    (rows, bytes per row) it is used with (at most 16 x 64; unlisted tiles unused)."""
    config = np.zeros(64, np.uint8)
    config[0] = 1  # palette 1
    bytes_per_row = config[16:48].view(np.uint16)  # 2 bytes per tile
    rows = config[48:64]  # 1 byte per tile
    for tile, (n_rows, n_bytes) in shapes.items():
        if not (0 <= tile < 8 and 0 < n_rows <= MAX_ROWS and 0 < n_bytes <= MAX_BYTES):
            raise ValueError(f"tile {tile}: {n_rows} x {n_bytes} bytes is not a tile shape")
        bytes_per_row[tile] = n_bytes
        rows[tile] = n_rows
    return config


@njit(cache=True, inline="always")
def aligned_empty(n, dtype):
    """np.empty(n, dtype) inside a kernel, starting on a 64-byte line: a tile row that straddles two
    lines stores at a third of the speed (a 16 x 64-byte tilestored: 4 ns aligned, 11 ns 16 bytes off)."""
    raw = np.empty(n + 64, dtype)
    skip = (-raw.ctypes.data % 64) // raw.itemsize
    return raw[skip:skip + n]


_I8 = ir.IntType(8)
_I64 = ir.IntType(64)
_P8 = _I8.as_pointer()
_VOID = ir.VoidType()


def _call(builder, name: str, arg_types, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VOID, arg_types), name)
    builder.call(fn, args)


def _tile(t) -> ir.Constant:
    return ir.Constant(_I8, t.literal_value)


def _byte_address(context, builder, array_type, array, offset_type, offset):
    """An i8* to element `offset` of a contiguous array."""
    data = context.make_array(array_type)(context, builder, array).data
    index = context.cast(builder, offset, offset_type, types.intp)
    return builder.bitcast(builder.gep(data, [index]), _P8)


def _tiles(*args) -> bool:
    return all(isinstance(a, types.IntegerLiteral) and 0 <= a.literal_value < 8 for a in args)


@intrinsic
def configure(typingctx, config):
    """ldtilecfg: this thread's tile shapes, from a 64-byte `tile_config` array."""
    def codegen(context, builder, sig, args):
        zero = context.get_constant(types.intp, 0)
        _call(builder, "llvm.x86.ldtilecfg", [_P8], [_byte_address(context, builder, sig.args[0], args[0], types.intp, zero)])
        return context.get_dummy_value()

    return types.none(config), codegen


@intrinsic
def release(typingctx):
    """tilerelease: this thread is done with its tiles."""
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic(prefer_literal=True)
def zero(typingctx, tile):
    """tilezero: every element of the tile 0."""
    if not _tiles(tile):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [_tile(sig.args[0])])
        return context.get_dummy_value()

    return types.none(tile), codegen


def _memory(instruction: str):
    """tileloadd64 or tilestored64 as a Numba call (tile, array, offset, stride)."""
    @intrinsic(prefer_literal=True)
    def memory(typingctx, tile, array, offset, stride):
        if not _tiles(tile):
            return None

        def codegen(context, builder, sig, args):
            address = _byte_address(context, builder, sig.args[1], args[1], sig.args[2], args[2])
            stride_bytes = context.cast(builder, args[3], sig.args[3], types.int64)
            _call(builder, f"llvm.x86.{instruction}", [_I8, _P8, _I64], [_tile(sig.args[0]), address, stride_bytes])
            return context.get_dummy_value()

        return types.none(tile, array, offset, stride), codegen

    return memory


load = _memory("tileloadd64")
load.__doc__ = "tileloadd: the tile's rows from element `offset` of an array, `stride` bytes apart."
store = _memory("tilestored64")
store.__doc__ = "tilestored: the tile's rows to an array from element `offset`, `stride` bytes apart."


@intrinsic(prefer_literal=True)
def dot(typingctx, c, a, b):
    """tdpbssd: tile c (int32) += tile a (int8) times tile b (int8, 4 rows of K per tile row)."""
    if not _tiles(c, a, b):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbssd", [_I8] * 3, [_tile(t) for t in sig.args])
        return context.get_dummy_value()

    return types.none(c, a, b), codegen
