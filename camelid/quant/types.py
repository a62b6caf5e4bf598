"""Block layouts of the GGML weight types camelid reads, and their dequantization to float32.

Each supported type is a `BlockType` in `BLOCK_TYPES`, keyed by `gguf.GGMLQuantizationType`: the
number of weights per block, the bytes per block, a NumPy structured dtype that spells out the byte
layout, and a vectorized function from blocks to float32. A row of a tensor is a whole number of
blocks, so `dequantize` works on `(n_rows, row_bytes)` uint8 views of a memory-mapped file.

The results equal gguf-py's `gguf.quants.dequantize` bit for bit: every product of a float16 scale
and a small integer is exact in float32, and the one rounding step a type has (adding the block min,
or subtracting the scaled sub-block min) is done in the same order as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType

from camelid.errors import CamelidError

T = GGMLQuantizationType
QK_K = 256  # weights per K-quant super-block

# Blocks dequantized per step, to bound the temporaries (about 8 MB of float32 for 32-weight blocks).
_CHUNK_WEIGHTS = 1 << 21


@dataclass(frozen=True)
class BlockType:
    """One GGML tensor type: its block geometry, byte layout and vectorized dequantizer.

    `dequantize_blocks` maps `(n_blocks,)` records of `dtype` to `(n_blocks, block_size)` float32.
    A later Numba kernel for the type can be attached next to it without changing the registry.
    """

    ggml_type: GGMLQuantizationType
    block_size: int  # weights per block
    type_size: int  # bytes per block
    dtype: np.dtype  # structured dtype of one block, itemsize == type_size
    dequantize_blocks: Callable[[np.ndarray], np.ndarray]


def _f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, m) bytes -> (n, 2m) uint8: the m low nibbles, then the m high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _bits32(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) uint8: bit i of the word at column i."""
    return np.unpackbits(qh, axis=1, bitorder="little")


# F32: 1 weight in 4 bytes; F16: 1 weight in 2 bytes (IEEE half); BF16: 1 weight in 2 bytes, the
# upper half of a float32.
_F32 = np.dtype([("v", "<f4")])
_F16 = np.dtype([("v", "<f2")])
_BF16 = np.dtype([("v", "<u2")])


def _deq_f32(b: np.ndarray) -> np.ndarray:
    return b["v"].reshape(-1, 1)


def _deq_f16(b: np.ndarray) -> np.ndarray:
    return _f32(b["v"]).reshape(-1, 1)


def _deq_bf16(b: np.ndarray) -> np.ndarray:
    return (b["v"].astype(np.uint32) << 16).view(np.float32).reshape(-1, 1)


# Q8_0: 32 weights in 34 bytes: f16 d, 32 int8 q; w = d * q
_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", 32)])


def _deq_q8_0(b: np.ndarray) -> np.ndarray:
    return _f32(b["qs"]) * _f32(b["d"])[:, None]


# Q4_0: 32 weights in 18 bytes: f16 d, 16 bytes of nibbles (byte j: weight j low, weight j+16 high);
# w = d * (nibble - 8)
_Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])


def _deq_q4_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b["qs"]).astype(np.int8) - np.int8(8)
    return _f32(b["d"])[:, None] * _f32(q)


# Q4_1: 32 weights in 20 bytes: f16 d, f16 m, 16 bytes of nibbles; w = d * nibble + m
_Q4_1 = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])


def _deq_q4_1(b: np.ndarray) -> np.ndarray:
    q = _f32(_nibbles(b["qs"]))
    return _f32(b["d"])[:, None] * q + _f32(b["m"])[:, None]


# Q5_0: 32 weights in 22 bytes: f16 d, u32 qh (bit i = 5th bit of weight i), 16 bytes of nibbles;
# w = d * ((nibble | bit << 4) - 16)
_Q5_0 = np.dtype([("d", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)])


def _deq_q5_0(b: np.ndarray) -> np.ndarray:
    q = (_nibbles(b["qs"]) | (_bits32(b["qh"]) << 4)).astype(np.int8) - np.int8(16)
    return _f32(b["d"])[:, None] * _f32(q)


# Q5_1: 32 weights in 24 bytes: f16 d, f16 m, u32 qh, 16 bytes of nibbles; w = d * q5 + m
_Q5_1 = np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "u1", 4), ("qs", "u1", 16)])


def _deq_q5_1(b: np.ndarray) -> np.ndarray:
    q = _f32(_nibbles(b["qs"]) | (_bits32(b["qh"]) << 4))
    return _f32(b["d"])[:, None] * q + _f32(b["m"])[:, None]


# Q4_K and Q5_K pack 8 six-bit scales and 8 six-bit mins (one per 32 weights) in 12 bytes:
#   bytes 0-3:  scale j (low 6 bits) for j < 4, top 2 bits of scale j+4 in bits 6-7
#   bytes 4-7:  min j (low 6 bits) for j < 4, top 2 bits of min j+4 in bits 6-7
#   bytes 8-11: low 4 bits of scale j+4 (low nibble) and of min j+4 (high nibble)
def k_scales_mins(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed K-quant scale bytes -> (n, 8) scales and (n, 8) mins, uint8 in [0, 63]."""
    lo, mid, hi = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, mn


def _k_chunks(qs: np.ndarray) -> np.ndarray:
    """(n, 128) nibble bytes of a Q4_K/Q5_K block -> (n, 8, 32) 4-bit values in weight order.

    Weights 64c..64c+31 are the low nibbles of bytes 32c..32c+31, weights 64c+32.. the high nibbles.
    """
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(-1, 8, 32)


# Q4_K: 256 weights in 144 bytes: f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles;
# sub-block j of 32 weights: w = (d * sc_j) * q - (dmin * m_j)
_Q4_K = np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qs", "u1", 128)])


def _deq_q4_k(b: np.ndarray) -> np.ndarray:
    sc, mn = k_scales_mins(b["scales"])
    dl = (_f32(b["d"])[:, None] * _f32(sc))[:, :, None]  # (n, 8, 1)
    ml = (_f32(b["dmin"])[:, None] * _f32(mn))[:, :, None]
    return (dl * _f32(_k_chunks(b["qs"])) - ml).reshape(-1, QK_K)


# Q5_K: 256 weights in 176 bytes: f16 d, f16 dmin, 12 bytes of scales/mins, 32 bytes qh, 128 bytes
# of nibbles; the 5th bit of weight 32j+l is bit j of qh[l]; w = (d * sc_j) * q5 - (dmin * m_j)
_Q5_K = np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)])


def _deq_q5_k(b: np.ndarray) -> np.ndarray:
    sc, mn = k_scales_mins(b["scales"])
    dl = (_f32(b["d"])[:, None] * _f32(sc))[:, :, None]
    ml = (_f32(b["dmin"])[:, None] * _f32(mn))[:, :, None]
    high = np.unpackbits(b["qh"][:, None, :], axis=1, count=8, bitorder="little")  # (n, 8, 32)
    q = _k_chunks(b["qs"]) | (high << 4)
    return (dl * _f32(q) - ml).reshape(-1, QK_K)


# Q6_K: 256 weights in 210 bytes: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 int8
# scales (one per 16 weights), f16 d. In each half h of 128 weights, with l < 32:
#   weight l      = ql[64h+l] low  | qh[32h+l] bits 0-1,  weight l+32 = ql[64h+32+l] low  | bits 2-3,
#   weight l+64   = ql[64h+l] high | qh[32h+l] bits 4-5,  weight l+96 = ql[64h+32+l] high | bits 6-7;
# w = (d * scale_{i // 16}) * (q6 - 32)
_Q6_K = np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")])


def _deq_q6_k(b: np.ndarray) -> np.ndarray:
    ql = b["ql"].reshape(-1, 2, 1, 64)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2).reshape(-1, 2, 4, 32)  # (n, half, quarter, l)
    qh = b["qh"].reshape(-1, 2, 1, 32)
    high = (qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 0x03  # (n, half, quarter, l)
    q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(-1, 16, 16)
    dl = (_f32(b["d"])[:, None] * _f32(b["scales"]))[:, :, None]  # (n, 16, 1)
    return (dl * _f32(q)).reshape(-1, QK_K)


def _block_type(ggml_type: GGMLQuantizationType, block_size: int, dtype: np.dtype, fn) -> BlockType:
    return BlockType(ggml_type, block_size, dtype.itemsize, dtype, fn)


BLOCK_TYPES: dict[GGMLQuantizationType, BlockType] = {
    bt.ggml_type: bt
    for bt in [
        _block_type(T.F32, 1, _F32, _deq_f32),
        _block_type(T.F16, 1, _F16, _deq_f16),
        _block_type(T.BF16, 1, _BF16, _deq_bf16),
        _block_type(T.Q8_0, 32, _Q8_0, _deq_q8_0),
        _block_type(T.Q4_0, 32, _Q4_0, _deq_q4_0),
        _block_type(T.Q4_1, 32, _Q4_1, _deq_q4_1),
        _block_type(T.Q5_0, 32, _Q5_0, _deq_q5_0),
        _block_type(T.Q5_1, 32, _Q5_1, _deq_q5_1),
        _block_type(T.Q4_K, QK_K, _Q4_K, _deq_q4_k),
        _block_type(T.Q5_K, QK_K, _Q5_K, _deq_q5_k),
        _block_type(T.Q6_K, QK_K, _Q6_K, _deq_q6_k),
    ]
}

SUPPORTED_TYPES: tuple[GGMLQuantizationType, ...] = tuple(BLOCK_TYPES)


def _lookup(ggml_type: GGMLQuantizationType, subject: str) -> BlockType:
    bt = BLOCK_TYPES.get(ggml_type)
    if bt is None:
        name = getattr(ggml_type, "name", str(ggml_type))
        supported = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise CamelidError(
            f"{subject} has type {name}, which camelid does not support yet; supported: {supported}; "
            "requantize the model with `camelid quantize` or download a Q4_K_M/Q8_0 file"
        )
    return bt


def check_supported(ggml_type: GGMLQuantizationType, tensor_name: str) -> BlockType:
    """Return the BlockType of `ggml_type`, or raise a CamelidError naming the tensor and the fix."""
    return _lookup(ggml_type, f"tensor {tensor_name}")


def block_layout(ggml_type: GGMLQuantizationType) -> tuple[int, int]:
    """(block_size, type_size): weights per block and bytes per block of a supported type."""
    bt = _lookup(ggml_type, "the data")
    return bt.block_size, bt.type_size


def _as_blocks(raw: np.ndarray, bt: BlockType, n_cols: int) -> np.ndarray:
    """(n_rows, row_bytes) uint8 -> (n_rows * n_cols // block_size,) records of bt.dtype."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise ValueError(f"raw must be a 2-D uint8 array, got {raw.dtype} {raw.shape}")
    if n_cols % bt.block_size or raw.shape[1] != n_cols // bt.block_size * bt.type_size:
        raise ValueError(
            f"{bt.ggml_type.name}: {n_cols} columns need {n_cols // bt.block_size * bt.type_size} bytes per row, "
            f"got {raw.shape[1]}"
        )
    return np.ascontiguousarray(raw).reshape(-1).view(bt.dtype)


def dequantize(raw: np.ndarray, ggml_type: GGMLQuantizationType, n_cols: int, out: np.ndarray | None = None) -> np.ndarray:
    """Dequantize `(n_rows, row_bytes)` raw bytes of `ggml_type` to `(n_rows, n_cols)` float32.

    Works in chunks so the temporaries stay a few MB whatever the tensor size; `out`, if given,
    receives the result (a C-contiguous float32 array of the right shape).
    """
    bt = _lookup(ggml_type, "the data")
    blocks = _as_blocks(raw, bt, n_cols)
    n_rows = raw.shape[0]
    if out is None:
        out = np.empty((n_rows, n_cols), dtype=np.float32)
    elif out.shape != (n_rows, n_cols) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {(n_rows, n_cols)}")
    flat = out.reshape(-1, bt.block_size)  # (n_blocks, block_size)
    step = max(1, _CHUNK_WEIGHTS // bt.block_size)
    for i in range(0, len(blocks), step):
        flat[i:i + step] = bt.dequantize_blocks(blocks[i:i + step])
    return out
