"""Weight matrices that stay in their quantized bytes, the matrix product on them, and the kernel table.

A `QTensor` wraps the memory-mapped raw bytes of one (n_out, n_in) weight matrix. `matmul` runs the
kernel registered for its type: the built-in ones (`KERNEL_TABLE`, camelid/quant/kernels/, loaded on
first use) reproduce llama.cpp's products bit for bit, from weights laid out once per tensor
(`prepare`). A type without a kernel falls back to rounding the activations the way llama.cpp does
(`activations.fake_quantize`) and multiplying them by the weights dequantized a tile of rows at a
time (about 16 MB of float32) with BLAS, which agrees with llama.cpp up to the order of the float
additions; for those types `cache_dequantized` keeps the float32 matrix between calls.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import mmap
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from gguf import GGMLQuantizationType

from camelid.errors import CamelidError
from camelid.quant.activations import fake_quantize, q8_1_sum_correction
from camelid.quant.types import BlockType, check_supported, dequantize

T = GGMLQuantizationType
TILE_BYTES = 16 << 20  # float32 bytes of weights dequantized per BLAS call

# Weight types whose llama.cpp dot product multiplies the block min by the Q8_1 sum s.
_MIN_SUM_TYPES = (T.Q4_1, T.Q5_1)


class RawTensor(Protocol):
    """One tensor of a model file as QTensor takes it (camelid.formats.gguf.TensorInfo is one).

    shape in NumPy order, rows first; raw (n_rows, row_bytes) uint8, usually a view into a mapped file.
    """

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    raw: np.ndarray


# ---------------------------------------------------------------------------- the kernel table
# Which kernel multiplies a matrix depends on its weight type, on how llama.cpp lays the matrix out
# (which decides the float order of its products) and on what the CPU can run. The first row that
# fits a matrix is its kernel; every row computes llama.cpp's products bit for bit. The code paths
# (VEC, REPACKED, TILED, GEMV, GEMM, tinyBLAS) are described in camelid/quant/kernels/__init__.py.

PLAIN, REPACKED = "plain", "repacked"  # a matrix's layout in llama.cpp (`llama_cpp_layout`)
ANY_CPU, INT8_DOT, AMX_TILES = "any", "int8 dot", "amx tiles"  # what a row needs of the CPU (`cpu_runs`)


@dataclass(frozen=True)
class KernelRow:
    """One row of KERNEL_TABLE: for these types and layout, on CPUs that have `cpu`, this kernel."""

    types: tuple[GGMLQuantizationType, ...]
    layout: str  # PLAIN or REPACKED
    cpu: str  # ANY_CPU, INT8_DOT (simd.INT8_DOT: VNNI, AVX-512BW or AVX2) or AMX_TILES (VNNI and amx.AMX_INT8)
    kernel: str  # "module.Class" in camelid/quant/kernels/: Class(raw, type, n_out, n_in).matmul(x)


_Q32 = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)
_KQ = (T.Q4_K, T.Q5_K, T.Q6_K)

KERNEL_TABLE: tuple[KernelRow, ...] = (
    # the same gemm order with AMX tiles for the block sums of 16 tokens or more, VNNI below
    KernelRow((T.Q4_0,), REPACKED, AMX_TILES, "q32_int8.Q32AmxRepacked"),
    # ggml_gemv/gemm_q4_0_8x8_q8_0 (repacked Q4_0): one fma per block and output; int8 dot products
    KernelRow((T.Q4_0,), REPACKED, INT8_DOT, "q32_int8.Q32Int8Repacked"),
    # ggml_vec_dot_q*_q8_* and tinyBLAS_Q0 (the same arithmetic per output): 8 lanes, hsum_float_8
    # (Q8_0 without VNNI with llama.cpp's AVX2 sign trick: simd.dot_signed_bytes)
    KernelRow(_Q32, PLAIN, INT8_DOT, "q32_int8.Q32Int8"),
    # the same two paths with float32 arithmetic on exact integers, on any CPU
    KernelRow((T.Q4_0,), REPACKED, ANY_CPU, "q32_float.Q32FloatRepacked"),
    KernelRow(_Q32, PLAIN, ANY_CPU, "q32_float.Q32Float"),
    # the same gemm order with AMX tiles for the sub-blocks' sums of 16 gemm tokens or more, VNNI below
    KernelRow((T.Q4_K,), REPACKED, AMX_TILES, "kq_int8.KQuantAmxRepacked"),
    # ggml_gemm_q4_K_8x8_q8_K for the tokens in groups of 4, ggml_gemv_q4_K_8x8_q8_K for the rest
    # (repacked Q4_K); int8 dot products
    KernelRow((T.Q4_K,), REPACKED, INT8_DOT, "kq_int8.KQuantInt8Repacked"),
    # ggml_vec_dot_q*_K_q8_K below 8 tokens, the tiled VNNI K-quant matmul from 8; int8 dot products
    KernelRow(_KQ, PLAIN, INT8_DOT, "kq_int8.KQuantInt8"),
    # the same two paths with float32 arithmetic on exact integers, on any CPU
    KernelRow((T.Q4_K,), REPACKED, ANY_CPU, "kq_float.KQuantFloatRepacked"),
    KernelRow(_KQ, PLAIN, ANY_CPU, "kq_float.KQuantFloat"),
    # llamafile's tinyBLAS from 2 tokens (n_out % 4 == 0, n_in % 16 == 0, BF16: % 32), else
    # ggml_vec_dot_f32 / _f16 / _bf16, on any CPU
    KernelRow((T.F32, T.F16, T.BF16), PLAIN, ANY_CPU, "dense.Dense"),
)


def llama_cpp_layout(w: "QTensor") -> str:
    """REPACKED where llama.cpp runs the matrix through its repacked 8x8 kernels (Q4_0, Q4_K on x86), else PLAIN.

    It loads Q4_0 and Q4_K weights whose row count is a multiple of 8 into its CPU_REPACK buffer,
    except the token embedding (read by GET_ROWS, which that buffer does not support), so a tied
    output matrix keeps the plain order.
    """
    repacked = w.ggml_type in (T.Q4_0, T.Q4_K) and w.shape[0] % 8 == 0 and w.name != "token_embd.weight"
    return REPACKED if repacked else PLAIN


def cpu_runs(need: str) -> bool:
    """Whether this CPU has what a KERNEL_TABLE row needs (read from camelid.cpu.simd at each call)."""
    if need == ANY_CPU:
        return True
    from camelid.cpu import amx, simd

    if need == AMX_TILES:
        return amx.kernel_path() == "amx"
    return simd.INT8_DOT is not None


def kernel_row(w: "QTensor") -> KernelRow:
    """The first KERNEL_TABLE row for this matrix's type and layout that this CPU runs."""
    layout = llama_cpp_layout(w)
    for row in KERNEL_TABLE:
        if w.ggml_type in row.types and row.layout == layout and cpu_runs(row.cpu):
            return row
    raise CamelidError(f"no kernel for {w.ggml_type.name} weights laid out {layout}")


class TableKernel:
    """The built-in kernel of a type: `kernel(qtensor, x)` for QTensor.matmul, from KERNEL_TABLE.

    `build(qtensor)` lays the weights out for the row's kernel class; `prepare` does it once, into
    `qtensor.kernel_data`; `layout(qtensor)` is what, beside the type, decides the arithmetic of a
    matrix's products (matrices stack into one product only where it is equal).
    """

    def build(self, w: "QTensor"):
        """A new instance of the matrix's kernel class, holding its weights laid out (see KERNEL_TABLE)."""
        module, cls = kernel_row(w).kernel.split(".")
        kernel_class = getattr(importlib.import_module(f"camelid.quant.kernels.{module}"), cls)
        return kernel_class(w.raw, w.ggml_type, w.shape[0], w.shape[1])

    def layout(self, w: "QTensor") -> str:
        """PLAIN or REPACKED: see `llama_cpp_layout`."""
        return llama_cpp_layout(w)

    def prepare(self, w: "QTensor"):
        """The matrix's laid-out weights, built on the first call and kept in `w.kernel_data`."""
        if w.kernel_data is None:
            w.kernel_data = self.build(w)
        return w.kernel_data

    def __call__(self, w: "QTensor", x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x (n_tokens, n_in) -> x @ W.T (n_tokens, n_out) float32, as llama.cpp computes it (each row
        as in a one-token batch when single_rows)."""
        return self.prepare(w).matmul(np.ascontiguousarray(x, dtype=np.float32), single_rows)


_TABLE_KERNEL = TableKernel()

# ---------------------------------------------------------------------------- registration

MatmulKernel = Callable[["QTensor", np.ndarray], np.ndarray]
_KERNELS: dict[GGMLQuantizationType, MatmulKernel] = {}
_builtin_loaded = False


def _load_builtin_kernels() -> None:
    """Register the table's kernels once (Numba is imported when a kernel is first built)."""
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True
    for row in KERNEL_TABLE:
        for ggml_type in row.types:
            _KERNELS.setdefault(ggml_type, _TABLE_KERNEL)


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


def release_mapped_pages(view: np.ndarray) -> None:
    """Let the OS drop the file pages under `view` from this process (madvise MADV_DONTNEED).

    For a tensor whose kernel has copied it into its own layout: the mapped bytes are no longer
    read, so they need not count against the process's memory. They fault back in from the file if
    read again. Does nothing for arrays that are not a view of a mapped file.
    """
    if not isinstance(view, np.memmap) or not hasattr(mmap, "MADV_DONTNEED") or view.nbytes == 0:
        return
    start = view.ctypes.data
    first = start - start % mmap.PAGESIZE
    last = start + view.nbytes
    _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def load_vector(info: RawTensor) -> np.ndarray:
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
    def from_info(cls, info: RawTensor, cache_dequantized: bool = False) -> "QTensor":
        """Wrap a tensor of an opened model file; raises CamelidError for an unsupported type."""
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

    def batch_rules(self) -> set[str]:
        """How the batch a row is in decides the row's arithmetic, for the prepared kernel: "rows" (it
        does not), "single" (one token differs from 2 or more), "tiled" (below 8 tokens differs from
        8 or more), "gemm" (the last n % 4 rows of a batch of n differ from the others); "unknown" for
        a kernel that does not say or a matrix not prepared yet."""
        rule = getattr(self.kernel_data, "batch_rule", None)
        return {rule} if rule else {"unknown"}

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """x @ W.T with llama.cpp's activation rounding: (n_tokens, n_in) -> (n_tokens, n_out) float32.

        Uses the kernel registered for the type, else the cached float32 matrix if `cache_dequantized`
        is set, else dequantizes row tiles and calls BLAS. A 1-D x gives a 1-D result.

        single_rows: compute each row exactly as llama.cpp computes a batch of that one token (its
        kernels round differently for larger batches), so a row's result does not depend on the other
        rows; a batched decoding step of several sequences uses it.
        """
        x = np.asarray(x, dtype=np.float32)
        vector = x.ndim == 1
        x2 = x.reshape(1, -1) if vector else x
        if x2.ndim != 2 or x2.shape[1] != self.shape[1]:
            raise ValueError(f"{self.name}: activations of shape {x.shape} do not match weights {self.shape}")
        if single_rows and len(x2) > 1 and not isinstance(registered_kernel(self.ggml_type), TableKernel):
            y = np.concatenate([self.matmul(row[None]) for row in x2])  # a kernel or BLAS that knows only batches
        elif (kernel := registered_kernel(self.ggml_type)) is not None:
            y = kernel(self, x2, single_rows) if isinstance(kernel, TableKernel) else kernel(self, x2)
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

    def batch_rules(self) -> set[str]:
        """See QTensor.batch_rules."""
        if self.packed is not None:
            return {getattr(self.packed, "batch_rule", "unknown")}
        return set().union(*(p.batch_rules() for p in self.parts))

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> list[np.ndarray]:
        """[x @ W_i.T for each part]: (n_tokens, n_in) -> (n_tokens, n_out_i) float32 arrays
        (single_rows: see QTensor.matmul)."""
        if self.packed is None:
            return [p.matmul(x, single_rows) for p in self.parts]
        y = self.matmul_joined(x, single_rows)
        bounds = np.cumsum([0] + [p.shape[0] for p in self.parts])
        return [np.ascontiguousarray(y[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def matmul_joined(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """The parts' products side by side: (n_tokens, n_in) -> (n_tokens, sum of n_out_i) float32."""
        if self.packed is None:
            return np.concatenate([p.matmul(x, single_rows) for p in self.parts], axis=1)
        return self.packed.matmul(np.ascontiguousarray(x, dtype=np.float32), single_rows)
