"""Weight matrices that stay in their quantized bytes, and the matrix product on them.

A `QTensor` wraps the memory-mapped raw bytes of one (n_out, n_in) weight matrix. `matmul` runs the
kernel registered for its type: the built-in ones (camelid.quant.kernels, loaded on first use)
reproduce llama.cpp's products bit for bit, from weights unpacked once per tensor (`prepare`).
A type without a kernel falls back to rounding the activations the way llama.cpp does
(`activations.fake_quantize`) and multiplying them by the weights dequantized a tile of rows at a
time (about 16 MB of float32) with BLAS, which agrees with llama.cpp up to the order of the float
additions; for those types `cache_dequantized` keeps the float32 matrix between calls.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType

from camelid.errors import CamelidError
from camelid.formats.gguf import TensorInfo, release_mapped_pages
from camelid.quant.activations import fake_quantize, q8_1_sum_correction
from camelid.quant.types import BlockType, check_supported, dequantize

T = GGMLQuantizationType
TILE_BYTES = 16 << 20  # float32 bytes of weights dequantized per BLAS call

# Weight types whose llama.cpp dot product multiplies the block min by the Q8_1 sum s.
_MIN_SUM_TYPES = (T.Q4_1, T.Q5_1)

MatmulKernel = Callable[["QTensor", np.ndarray], np.ndarray]
_KERNELS: dict[GGMLQuantizationType, MatmulKernel] = {}
_builtin_loaded = False


def _load_builtin_kernels() -> None:
    """Register camelid.quant.kernels' exact kernels once (importing Numba only when first needed)."""
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True
    from camelid.quant.kernels import BUILTIN_KERNELS

    for ggml_type, kernel in BUILTIN_KERNELS.items():
        _KERNELS.setdefault(ggml_type, kernel)


def register_kernel(ggml_type: GGMLQuantizationType, kernel: MatmulKernel | None) -> None:
    """Make `QTensor.matmul` use `kernel(qtensor, x) -> (n_tokens, n_out) float32` for a weight type.

    The kernel receives the float32 activations (n_tokens, n_in) as they are and applies llama.cpp's
    activation rounding itself; if it has a `prepare(qtensor)` attribute, `QTensor.prepare` calls it
    to build per-tensor data up front. This replaces the built-in kernel of the type; pass None to go
    back to the dequantize-and-BLAS path.
    """
    _load_builtin_kernels()
    if kernel is None:
        _KERNELS.pop(ggml_type, None)
    else:
        _KERNELS[ggml_type] = kernel


def registered_kernel(ggml_type: GGMLQuantizationType) -> MatmulKernel | None:
    """The kernel registered for a weight type, or None."""
    _load_builtin_kernels()
    return _KERNELS.get(ggml_type)


def load_vector(info: TensorInfo) -> np.ndarray:
    """Load a small tensor (a norm weight or bias, 1-D) as a float32 array of its shape."""
    check_supported(info.ggml_type, info.name)
    n_cols = info.shape[-1] if info.shape else 1
    return dequantize(info.raw, info.ggml_type, n_cols).reshape(info.shape)


class QTensor:
    """A (n_out, n_in) weight matrix kept as the raw bytes of its GGML type.

    `raw` is (n_out, row_bytes) uint8, usually a read-only view into a memory-mapped file.
    Products go through `matmul`, embedding lookups through `get_rows`.
    """

    def __init__(self, name: str, ggml_type: GGMLQuantizationType, shape: tuple[int, int], raw: np.ndarray,
                 cache_dequantized: bool = False):
        self.block: BlockType = check_supported(ggml_type, name)
        if len(shape) != 2:
            raise CamelidError(f"tensor {name} has shape {tuple(shape)}; a weight matrix must be 2-D (n_out, n_in).")
        n_out, n_in = (int(n) for n in shape)
        row_bytes = n_in // self.block.block_size * self.block.type_size
        if n_in % self.block.block_size or raw.dtype != np.uint8 or raw.shape != (n_out, row_bytes):
            raise CamelidError(
                f"tensor {name}: {ggml_type.name} data of shape {raw.shape} {raw.dtype} does not match "
                f"{n_out} rows of {n_in} weights; the file is malformed."
            )
        self.name = name
        self.ggml_type = ggml_type
        self.shape = (n_out, n_in)
        self.raw = raw
        self._dense: np.ndarray | None = None  # (n_out, n_in) float32 when cached
        self._mins: np.ndarray | None = None  # (n_out, n_in / 32) float32, Q4_1/Q5_1 when cached
        self._cache = False
        self.cache_dequantized = cache_dequantized
        self.kernel_data = None  # what the type's kernel built from `raw` (see `prepare`)

    @classmethod
    def from_info(cls, info: TensorInfo, cache_dequantized: bool = False) -> "QTensor":
        """Wrap a tensor of an opened GGUF file; raises CamelidError for an unsupported type."""
        check_supported(info.ggml_type, info.name)
        return cls(info.name, info.ggml_type, info.shape, info.raw, cache_dequantized=cache_dequantized)

    def __repr__(self) -> str:
        cached = ", cached" if self._dense is not None else ""
        return f"QTensor({self.name!r}, {self.ggml_type.name}, shape={self.shape}{cached})"

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized data."""
        return int(self.raw.nbytes)

    @property
    def cache_dequantized(self) -> bool:
        """Whether the float32 matrix is built once and kept; setting False frees it.

        Types with a kernel never keep it (the kernel works from its own unpacked data), so setting
        True has no effect for them.
        """
        return self._cache

    @cache_dequantized.setter
    def cache_dequantized(self, value: bool) -> None:
        self._cache = bool(value) and registered_kernel(self.ggml_type) is None
        if not self._cache:
            self._dense = self._mins = None

    def prepare(self) -> None:
        """Build once what `matmul` needs: the kernel's unpacked weights, or the float32 cache.

        When the kernel keeps its own copy of the weights, the file's pages under `raw` are released
        from this process, so a model costs its kernels' layout, not that plus the mapping.
        """
        kernel = registered_kernel(self.ggml_type)
        if kernel is not None:
            prepare = getattr(kernel, "prepare", None)
            if prepare is not None:
                prepare(self)
                if getattr(self.kernel_data, "copies_weights", False):
                    release_mapped_pages(self.raw)
        elif self._cache:
            self.dequantized()

    def dequantize(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start..stop of the matrix as a new float32 array (stop - start, n_in)."""
        start, stop, _ = slice(start, stop).indices(self.shape[0])
        if self._dense is not None:
            return self._dense[start:stop].copy()
        return dequantize(self.raw[start:stop], self.ggml_type, self.shape[1])

    def dequantized(self) -> np.ndarray:
        """The whole matrix in float32 (n_out, n_in); kept and reused when `cache_dequantized` is set.

        Treat the result as read-only: with the cache on it is the cached array itself.
        """
        if self._dense is not None:
            return self._dense
        dense = dequantize(self.raw, self.ggml_type, self.shape[1])
        if self._cache:
            self._dense = dense
            if self.ggml_type in _MIN_SUM_TYPES:
                self._mins = self._block_mins(0, self.shape[0])
        return dense

    def get_rows(self, ids) -> np.ndarray:
        """Embedding lookup: rows `ids` (a 1-D sequence of ints) dequantized, (len(ids), n_in) float32."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n_out = self.shape[0]
        bad = ids[(ids < 0) | (ids >= n_out)]
        if bad.size:
            raise CamelidError(f"row {int(bad[0])} is out of range for tensor {self.name} with {n_out} rows (token id out of vocabulary?).")
        if self._dense is not None:
            return self._dense[ids]
        return dequantize(self.raw[ids], self.ggml_type, self.shape[1])

    def _block_mins(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, n_in / 32) float32 block mins of a Q4_1/Q5_1 matrix."""
        recs = np.ascontiguousarray(self.raw[start:stop]).reshape(-1).view(self.block.dtype)
        return recs["m"].astype(np.float32).reshape(stop - start, -1)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x @ W.T with llama.cpp's activation rounding: (n_tokens, n_in) -> (n_tokens, n_out) float32.

        Uses the kernel registered for the type, else the cached float32 matrix if `cache_dequantized`
        is set, else dequantizes row tiles and calls BLAS. A 1-D x gives a 1-D result.
        """
        x = np.asarray(x, dtype=np.float32)
        vector = x.ndim == 1
        x2 = x.reshape(1, -1) if vector else x
        if x2.ndim != 2 or x2.shape[1] != self.shape[1]:
            raise ValueError(f"{self.name}: activations of shape {x.shape} do not match weights {self.shape}")
        if (kernel := registered_kernel(self.ggml_type)) is not None:
            y = kernel(self, x2)
        elif self._cache:
            y = self._matmul_cached(x2)
        else:
            y = self._matmul_tiled(x2)
        return y.reshape(-1) if vector else y

    def _activations(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        xq = fake_quantize(x, self.ggml_type)  # (n_tokens, n_in)
        corr = q8_1_sum_correction(x) if self.ggml_type in _MIN_SUM_TYPES else None  # (n_tokens, n_in / 32)
        return xq, corr

    def _matmul_cached(self, x: np.ndarray) -> np.ndarray:
        w = self.dequantized()
        xq, corr = self._activations(x)
        y = xq @ w.T  # (n_tokens, n_out)
        if corr is not None:
            y += corr @ self._mins.T
        return y

    def _matmul_tiled(self, x: np.ndarray) -> np.ndarray:
        n_out, n_in = self.shape
        xq, corr = self._activations(x)
        y = np.empty((x.shape[0], n_out), dtype=np.float32)
        tile = max(1, min(n_out, TILE_BYTES // (4 * n_in)))
        buf = np.empty((tile, n_in), dtype=np.float32)  # one dequantized tile of weight rows
        for r0 in range(0, n_out, tile):
            r1 = min(n_out, r0 + tile)
            w = dequantize(self.raw[r0:r1], self.ggml_type, n_in, out=buf[:r1 - r0])
            yt = xq @ w.T  # (n_tokens, r1 - r0)
            if corr is not None:
                yt += corr @ self._block_mins(r0, r1).T
            y[:, r0:r1] = yt
        return y


class StackedMatrices:
    """Matrices that multiply the same activations (q, k, v; gate, up), run as one kernel call.

    When the parts share a type with a built-in kernel and the same arithmetic (see the kernel's
    `layout`), their rows are packed together once, so the activations are quantized once and the
    kernel is entered once; each output element is computed exactly as it would be alone. Otherwise
    the parts are multiplied one by one. `matmul` returns one (n_tokens, n_out_i) array per part.
    """

    def __init__(self, parts: list[QTensor]):
        self.parts = parts
        self.packed = None  # the kernel's data for all parts' rows, when they stack

    def _kernel_for_stack(self):
        first = self.parts[0]
        kernel = registered_kernel(first.ggml_type)
        layout = getattr(kernel, "layout", None)
        if len(self.parts) < 2 or layout is None:
            return None
        same = all(p.ggml_type == first.ggml_type and p.shape[1] == first.shape[1] for p in self.parts)
        if not same or len({layout(p) for p in self.parts}) != 1:
            return None
        return kernel

    def prepare(self) -> None:
        """Pack the parts' rows together for their kernel, or prepare each part on its own."""
        kernel = self._kernel_for_stack()
        if kernel is None:
            for p in self.parts:
                p.prepare()
            return
        first = self.parts[0]
        n_out = sum(p.shape[0] for p in self.parts)
        stacked = QTensor("+".join(p.name for p in self.parts), first.ggml_type, (n_out, first.shape[1]),
                          np.concatenate([p.raw for p in self.parts]))
        if kernel.layout(stacked) != kernel.layout(first):
            for p in self.parts:
                p.prepare()
            return
        self.packed = kernel.build(stacked)
        if getattr(self.packed, "copies_weights", False):
            for p in self.parts:
                release_mapped_pages(p.raw)

    def matmul(self, x: np.ndarray) -> list[np.ndarray]:
        """[x @ W_i.T for each part]: (n_tokens, n_in) -> (n_tokens, n_out_i) float32 arrays."""
        if self.packed is None:
            return [p.matmul(x) for p in self.parts]
        y = self.matmul_joined(x)
        bounds = np.cumsum([0] + [p.shape[0] for p in self.parts])
        return [np.ascontiguousarray(y[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def matmul_joined(self, x: np.ndarray) -> np.ndarray:
        """The parts' products side by side: (n_tokens, n_in) -> (n_tokens, sum of n_out_i) float32."""
        if self.packed is None:
            return np.concatenate([p.matmul(x) for p in self.parts], axis=1)
        return self.packed.matmul(np.ascontiguousarray(x, dtype=np.float32))
