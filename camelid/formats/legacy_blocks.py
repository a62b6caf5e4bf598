"""The block layouts of 2023's legacy model files, and their conversion to today's (GGUF) layouts.

Three generations of the 32-weight block types existed before GGUF (ggml.c of the time, checked
against llama.cpp's history):

- layout 1 (files `ggml`, `ggmf` v1, `ggjt` v1, before PR #1405 of 2023-05-12): the 4-bit codes of
  weights 2j and 2j+1 share byte j (low nibble first). Q4_0 is {f32 d, 16 code bytes} (20 bytes),
  Q4_1 {f32 d, f32 m, 16 code bytes} (24 bytes), Q8_0 {f32 d, int8 q[32]} (36 bytes); Q5_0 {f16 d,
  u32 qh, 16 code bytes} and Q5_1 {f16 d, f16 m, u32 qh, 16 code bytes} with bit i of qh the fifth
  bit of weight i.
- layout 2 (`ggjt` v2, #1405 "remove bit shuffling"): byte j holds weights j (low) and j + 16 (high),
  as today; Q4_0, Q4_1 and Q8_0 still have f32 scales. Q4_2 was removed (Q4_3 in April, #1218).
- layout 3 (`ggjt` v3, #1508 of 2023-05-19): Q4_0, Q4_1 and Q8_0 scales became f16. This is today's
  layout, and the K-quants added in June 2023 (v3 files only) are unchanged since.

Converting layout 1 or 2 to today's keeps every 4-, 5- or 8-bit code and rounds the f32 scales
(d, and m of Q4_1) to f16, which is what llama.cpp's own files did from v3 on: every weight moves by
at most 2^-11 of its value (m: of the block minimum). Dequantizing to F16 instead would round each
weight by as much and double or quadruple the size; on test models the f16 scales move the logits by
a twentieth of what llama.cpp's int8 activations do (tests/test_legacy.py).
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit

from camelid.errors import CamelidError
from camelid.quant.types import BLOCK_TYPES

T = GGMLQuantizationType

# Blocks with f32 scales (layouts 1 and 2); today's have the same fields with f16 scales.
_F32_SCALE_BLOCKS = {
    T.Q4_0: np.dtype([("d", "<f4"), ("qs", "u1", 16)]),  # 32 weights in 20 bytes
    T.Q4_1: np.dtype([("d", "<f4"), ("m", "<f4"), ("qs", "u1", 16)]),  # 32 weights in 24 bytes
    T.Q8_0: np.dtype([("d", "<f4"), ("qs", "i1", 32)]),  # 32 weights in 36 bytes
}
# Types whose nibbles were paired (2j, 2j+1) in layout 1.
_PAIRED_NIBBLES = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1)
# Blocks converted per step, to bound the temporaries (a few MB).
_CHUNK_BLOCKS = 1 << 18


def file_block_bytes(ggml_type: GGMLQuantizationType, layout: int) -> tuple[int, int]:
    """(weights per block, bytes per block) of `ggml_type` as stored in a file of `layout`."""
    if layout < 3 and ggml_type in _F32_SCALE_BLOCKS:
        return 32, _F32_SCALE_BLOCKS[ggml_type].itemsize
    return GGML_QUANT_SIZES[ggml_type]


def needs_conversion(ggml_type: GGMLQuantizationType, layout: int) -> bool:
    """Whether blocks of `ggml_type` in a file of `layout` differ from today's layout."""
    return (layout < 3 and ggml_type in _F32_SCALE_BLOCKS) or (layout == 1 and ggml_type in _PAIRED_NIBBLES)


@njit(cache=True)
def _unpair_kernel(qs: np.ndarray, out: np.ndarray) -> None:
    for i in range(qs.shape[0]):
        for j in range(8):
            a, b = qs[i, j], qs[i, j + 8]  # weights 2j, 2j+1 and 2j+16, 2j+17
            out[i, 2 * j] = (a & 0x0F) | ((b & 0x0F) << 4)  # weights 2j, 2j+16
            out[i, 2 * j + 1] = (a >> 4) | (b & 0xF0)  # weights 2j+1, 2j+17


def _unpair_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) code bytes of layout 1 (byte j = weights 2j, 2j+1) -> today's (byte j = weights j, j+16)."""
    qs = np.ascontiguousarray(qs)
    out = np.empty_like(qs)
    _unpair_kernel(qs, out)
    return out


def _f16_scales(values: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = values.astype(np.float16)
    if not np.isfinite(out[np.isfinite(values)]).all():
        raise CamelidError(f"{what}: a block scale is too large for float16 (|scale| > 65504); the file is corrupted.")
    return out


def convert_blocks(raw: np.ndarray, ggml_type: GGMLQuantizationType, layout: int, what: str = "tensor",
                   out: np.ndarray | None = None) -> np.ndarray:
    """Rows of 2023 blocks (n_rows, file_row_bytes) uint8 -> today's blocks (n_rows, row_bytes) uint8.

    Returns raw itself when nothing changed; writes into `out` (C-contiguous uint8) if given.
    """
    if not needs_conversion(ggml_type, layout):
        return raw
    new_dtype = BLOCK_TYPES[ggml_type].dtype
    old_dtype = _F32_SCALE_BLOCKS[ggml_type] if layout < 3 and ggml_type in _F32_SCALE_BLOCKS else new_dtype
    old = np.ascontiguousarray(raw).reshape(-1).view(old_dtype)
    if out is None:
        out = np.empty((raw.shape[0], old.shape[0] // raw.shape[0] * new_dtype.itemsize), np.uint8)
    new = out.reshape(-1).view(new_dtype)
    for field in new_dtype.names:
        if old_dtype[field] != new_dtype[field]:  # an f32 scale (d or m) that is f16 today
            new[field] = _f16_scales(old[field], what)
        elif field == "qs" and layout == 1 and ggml_type in _PAIRED_NIBBLES:
            new[field] = _unpair_nibbles(old[field])
        else:
            new[field] = old[field]
    return out


def convert_rows_into(raw: np.ndarray, ggml_type: GGMLQuantizationType, layout: int, out: np.ndarray, what: str) -> None:
    """convert_blocks over `raw` a chunk of rows at a time, into `out` (n_rows, row_bytes) uint8."""
    n_rows, file_row_bytes = raw.shape
    block_size, file_type_size = file_block_bytes(ggml_type, layout)
    step = max(1, _CHUNK_BLOCKS // max(1, file_row_bytes // file_type_size))
    for r0 in range(0, n_rows, step):
        if needs_conversion(ggml_type, layout):
            convert_blocks(raw[r0:r0 + step], ggml_type, layout, what, out=out[r0:r0 + step])
        else:
            out[r0:r0 + step] = raw[r0:r0 + step]


class SpillFile:
    """Today's blocks of converted tensors, written once to an unlinked temporary file and mapped.

    The pages are file-backed, so the kernel can drop them under memory pressure: holding a
    converted 7B model costs disk space in the temporary directory (TMPDIR), not resident memory.
    """

    def __init__(self, sizes: Iterable[int]):
        self.total = sum(sizes)
        self._file = tempfile.TemporaryFile(prefix="camelid-legacy-")
        try:
            if hasattr(os, "posix_fallocate") and self.total:
                os.posix_fallocate(self._file.fileno(), 0, self.total)  # ENOSPC now, not SIGBUS later
            else:
                self._file.truncate(self.total)
            self.data = np.memmap(self._file, dtype=np.uint8, mode="r+", shape=(self.total,)) if self.total else np.empty(0, np.uint8)
        except OSError as exc:
            self._file.close()
            raise CamelidError(
                f"cannot create a {self.total / 2**20:.0f} MiB temporary file for the converted blocks ({exc.strerror}); "
                "free space in the temporary directory (or set TMPDIR), or convert the file once with "
                "`camelid convert --from-legacy FILE -o OUT.gguf`."
            ) from None
        self._file.close()  # the mapping keeps the data
        self._offset = 0

    def take(self, n_rows: int, row_bytes: int) -> np.ndarray:
        """The next (n_rows, row_bytes) region of the file, writable."""
        n = n_rows * row_bytes
        view = self.data[self._offset:self._offset + n].reshape(n_rows, row_bytes)
        self._offset += n
        return view

