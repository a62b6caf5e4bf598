"""llama.cpp's compiled ggml CPU library (from llama-cpp-python), called through ctypes, as a test oracle.
It runs in the oracle's worker process (oracle/worker.py); tests reach it as `oracle.ggml()`.

`Ggml.mul_mat(t, raw, x)` runs a real GGML_OP_MUL_MAT graph on the CPU backend, so it takes the path
llama.cpp takes for those shapes: llamafile's tinyBLAS, the tiled K-quant kernels, or the vec_dot
loop; with `repack=True` the weights live in the CPU_REPACK buffer (as llama.cpp loads Q4_0 and Q4_K
weights on x86) and the repacked gemv/gemm kernels run. `Ggml.vec_dot` calls the type's vec_dot
function directly. `Ggml.from_float` is the activation quantizer. `swiglu`, `rope`, `soft_max` and
`attention` build the graphs llama.cpp builds for those steps (llama-graph.cpp, non-flash attention).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

import numpy as np
from gguf import GGMLQuantizationType as T


class _Traits(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


_FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                            ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_P = ctypes.c_void_p


class Ggml:
    """Handles on libggml-base and libggml-cpu; raises OSError / ImportError when unavailable."""

    def __init__(self):
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("llama-cpp-python is not installed")
        libdir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
        self.base = base = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = cpu = ctypes.CDLL(os.path.join(libdir, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        cpu.ggml_cpu_init()
        base.ggml_type_size.restype = ctypes.c_size_t
        base.ggml_blck_size.restype = ctypes.c_int64
        cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_Traits)
        base.ggml_init.restype = _P
        base.ggml_init.argtypes = [_InitParams]
        base.ggml_free.argtypes = [_P]
        base.ggml_new_tensor_2d.restype = _P
        base.ggml_new_tensor_2d.argtypes = [_P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        base.ggml_mul_mat.restype = _P
        base.ggml_mul_mat.argtypes = [_P, _P, _P]
        base.ggml_new_graph.restype = _P
        base.ggml_new_graph.argtypes = [_P]
        base.ggml_build_forward_expand.argtypes = [_P, _P]
        base.ggml_backend_alloc_ctx_tensors_from_buft.restype = _P
        base.ggml_backend_alloc_ctx_tensors_from_buft.argtypes = [_P, _P]
        base.ggml_backend_buffer_free.argtypes = [_P]
        base.ggml_backend_cpu_buffer_type.restype = _P
        base.ggml_backend_tensor_set.argtypes = [_P, _P, ctypes.c_size_t, ctypes.c_size_t]
        base.ggml_backend_tensor_get.argtypes = [_P, _P, ctypes.c_size_t, ctypes.c_size_t]
        base.ggml_backend_graph_compute.argtypes = [_P, _P]
        base.ggml_backend_free.argtypes = [_P]
        base.ggml_nelements.restype = ctypes.c_int64
        base.ggml_nelements.argtypes = [_P]
        base.ggml_new_tensor_1d.restype = _P
        base.ggml_new_tensor_1d.argtypes = [_P, ctypes.c_int, ctypes.c_int64]
        base.ggml_new_tensor_3d.restype = _P
        base.ggml_new_tensor_3d.argtypes = [_P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
        base.ggml_swiglu_split.restype = _P
        base.ggml_swiglu_split.argtypes = [_P, _P, _P]
        base.ggml_geglu_split.restype = _P
        base.ggml_geglu_split.argtypes = [_P, _P, _P]
        base.ggml_soft_max_ext.restype = _P
        base.ggml_soft_max_ext.argtypes = [_P, _P, _P, ctypes.c_float, ctypes.c_float]
        base.ggml_rope_ext.restype = _P
        base.ggml_rope_ext.argtypes = [_P, _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int] + [ctypes.c_float] * 6
        base.ggml_permute.restype = _P
        base.ggml_permute.argtypes = [_P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        base.ggml_cont.restype = _P
        base.ggml_cont.argtypes = [_P, _P]
        cpu.ggml_backend_cpu_init.restype = _P
        cpu.ggml_backend_cpu_set_n_threads.argtypes = [_P, ctypes.c_int]
        self._repack_buft = getattr(cpu, "_Z35ggml_backend_cpu_repack_buffer_typev")
        self._repack_buft.restype = _P
        base.ggml_quantize_chunk.restype = ctypes.c_size_t
        base.ggml_quantize_chunk.argtypes = [ctypes.c_int, _P, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _P]

    def build(self) -> dict[str, bool]:
        """The instruction sets this ggml was compiled for (ggml_cpu_has_*)."""
        names = ["sse3", "avx", "avx2", "fma", "f16c", "avx512", "avx512_vbmi", "avx512_vnni", "avx512_bf16",
                 "avx_vnni", "amx_int8"]
        return {n: bool(getattr(self.cpu, f"ggml_cpu_has_{n}")()) for n in names if hasattr(self.cpu, f"ggml_cpu_has_{n}")}

    def sizes(self, t) -> tuple[int, int]:
        return self.base.ggml_blck_size(int(t)), self.base.ggml_type_size(int(t))

    def traits(self, t) -> _Traits:
        return self.cpu.ggml_get_type_traits_cpu(int(t)).contents

    def vec_dot_type(self, t) -> int:
        """The activation type ggml quantizes to before the type's vec_dot."""
        return int(self.traits(t).vec_dot_type)

    def quantize_chunk(self, t, x: np.ndarray) -> np.ndarray:
        """(rows, row_bytes) uint8: ggml_quantize_chunk of float32 rows x, no importance matrix."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        block, size = self.sizes(t)
        out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
        written = self.base.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
        if written != out.nbytes:
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
        return out

    def from_float(self, t, x: np.ndarray) -> np.ndarray:
        """One float32 row quantized by ggml's from_float of type t, as bytes."""
        block, size = self.sizes(t)
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.zeros(x.size // block * size, dtype=np.uint8)
        _FROM_FLOAT(self.traits(t).from_float)(x.ctypes.data, y.ctypes.data, x.size)
        return y

    def vec_dot(self, t, raw: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(n_tok, n_out) float32: the type's vec_dot of every weight row with every activation row."""
        traits = self.traits(t)
        fn = _VEC_DOT(traits.vec_dot)
        out = np.zeros((x.shape[0], raw.shape[0]), np.float32)
        s = ctypes.c_float()
        for i in range(x.shape[0]):
            xq = self.from_float(T(traits.vec_dot_type), x[i])
            for o in range(raw.shape[0]):
                row = np.ascontiguousarray(raw[o])
                fn(x.shape[1], ctypes.byref(s), 0, row.ctypes.data, 0, xq.ctypes.data, 0, 1)
                out[i, o] = s.value
        return out

    def mul_mat(self, t, raw: np.ndarray, x: np.ndarray, repack: bool = False, n_threads: int = 2) -> np.ndarray:
        """(n_tok, n_out) float32 = ggml_mul_mat(W, x) computed by the CPU backend."""
        b = self.base
        n_out = raw.shape[0]
        n_tok, n_in = x.shape
        raw = np.ascontiguousarray(raw)
        x = np.ascontiguousarray(x, dtype=np.float32)
        params = _InitParams(1 << 20, None, True)
        ctx_w, ctx_x, ctx_op = b.ggml_init(params), b.ggml_init(params), b.ggml_init(params)
        backend = self.cpu.ggml_backend_cpu_init()
        buffers = []
        try:
            self.cpu.ggml_backend_cpu_set_n_threads(backend, n_threads)
            w = b.ggml_new_tensor_2d(ctx_w, int(t), n_in, n_out)
            xt = b.ggml_new_tensor_2d(ctx_x, int(T.F32), n_in, n_tok)
            y = b.ggml_mul_mat(ctx_op, w, xt)
            graph = b.ggml_new_graph(ctx_op)
            b.ggml_build_forward_expand(graph, y)
            buft_w = self._repack_buft() if repack else b.ggml_backend_cpu_buffer_type()
            for ctx, buft in ((ctx_w, buft_w), (ctx_x, b.ggml_backend_cpu_buffer_type()), (ctx_op, b.ggml_backend_cpu_buffer_type())):
                buf = b.ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft)
                if not buf:
                    raise RuntimeError("ggml could not allocate the test tensors")
                buffers.append(buf)
            b.ggml_backend_tensor_set(w, raw.ctypes.data, 0, raw.nbytes)
            b.ggml_backend_tensor_set(xt, x.ctypes.data, 0, x.nbytes)
            if b.ggml_backend_graph_compute(backend, graph) != 0:
                raise RuntimeError("ggml graph compute failed")
            out = np.empty((n_tok, n_out), np.float32)
            b.ggml_backend_tensor_get(y, out.ctypes.data, 0, out.nbytes)
            return out
        finally:
            for buf in buffers:
                b.ggml_backend_buffer_free(buf)
            b.ggml_backend_free(backend)
            for ctx in (ctx_w, ctx_x, ctx_op):
                b.ggml_free(ctx)

    def run(self, build, inputs: list[tuple[int, tuple[int, ...], np.ndarray]], n_threads: int = 2) -> np.ndarray:
        """Build a graph and compute it on the CPU backend.

        inputs: (ggml type, ne (ggml order: fastest first), data); build(ctx, tensors) returns the
        output tensor, whose float32 data comes back as a flat array.
        """
        b = self.base
        params = _InitParams(1 << 20, None, True)
        ctx = b.ggml_init(params)
        backend = self.cpu.ggml_backend_cpu_init()
        buf = None
        try:
            self.cpu.ggml_backend_cpu_set_n_threads(backend, n_threads)
            tensors = []
            for t, ne, _ in inputs:
                make = {1: b.ggml_new_tensor_1d, 2: b.ggml_new_tensor_2d, 3: b.ggml_new_tensor_3d}[len(ne)]
                tensors.append(make(ctx, int(t), *ne))
            out = build(ctx, tensors)
            graph = b.ggml_new_graph(ctx)
            b.ggml_build_forward_expand(graph, out)
            buf = b.ggml_backend_alloc_ctx_tensors_from_buft(ctx, b.ggml_backend_cpu_buffer_type())
            if not buf:
                raise RuntimeError("ggml could not allocate the test tensors")
            for tensor, (_, _, data) in zip(tensors, inputs):
                data = np.ascontiguousarray(data)
                b.ggml_backend_tensor_set(tensor, data.ctypes.data, 0, data.nbytes)
            if b.ggml_backend_graph_compute(backend, graph) != 0:
                raise RuntimeError("ggml graph compute failed")
            n = b.ggml_nelements(out)
            result = np.empty(n, np.float32)
            b.ggml_backend_tensor_get(out, result.ctypes.data, 0, result.nbytes)
            return result
        finally:
            if buf:
                b.ggml_backend_buffer_free(buf)
            b.ggml_backend_free(backend)
            b.ggml_free(ctx)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """ggml_swiglu_split(gate, up) of (n, n_ff) float32 rows."""
        n, m = gate.shape
        ins = [(T.F32, (m, n), gate.astype(np.float32)), (T.F32, (m, n), up.astype(np.float32))]
        return self.run(lambda ctx, t: self.base.ggml_swiglu_split(ctx, t[0], t[1]), ins).reshape(n, m)

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """ggml_geglu_split(gate, up) of (n, n_ff) float32 rows (tanh GELU from ggml's float16 table)."""
        n, m = gate.shape
        ins = [(T.F32, (m, n), gate.astype(np.float32)), (T.F32, (m, n), up.astype(np.float32))]
        return self.run(lambda ctx, t: self.base.ggml_geglu_split(ctx, t[0], t[1]), ins).reshape(n, m)

    def rope(self, x: np.ndarray, positions: np.ndarray, n_dims: int, neox: bool, base: float,
             freq_scale: float = 1.0) -> np.ndarray:
        """ggml_rope_ext of x (n, n_heads, head_dim) float32 at positions (n,), no YaRN."""
        n, h, d = x.shape
        ins = [(T.F32, (d, h, n), x.astype(np.float32)), (T.I32, (n,), positions.astype(np.int32))]
        mode = 2 if neox else 0
        return self.run(lambda ctx, t: self.base.ggml_rope_ext(ctx, t[0], t[1], None, n_dims, mode, 0, base,
                                                               freq_scale, 0.0, 1.0, 0.0, 0.0), ins).reshape(n, h, d)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int, n_kv: int) -> np.ndarray:
        """llama.cpp's non-flash attention of q (n, n_head, d) float32 over the cache k, v
        (T, n_head_kv, d) float16 (T = start + n), padded with zero cells to n_kv (a multiple of 256)
        and masked causally. Returns (n, n_head * d) float32, as kqv_out."""
        b = self.base
        n, n_head, d = q.shape
        t_len, n_hkv, _ = k.shape
        kp = np.zeros((n_hkv, n_kv, d), np.float16)
        kp[:, :t_len] = k.transpose(1, 0, 2)
        vp = np.zeros((n_hkv, d, n_kv), np.float16)
        vp[:, :, :t_len] = v.transpose(1, 2, 0)
        mask = np.full((n, n_kv), -np.inf, np.float32)
        for i in range(n):
            mask[i, :start + i + 1] = 0.0
        ins = [(T.F32, (d, n, n_head), q.transpose(1, 0, 2).astype(np.float32)),
               (T.F16, (d, n_kv, n_hkv), kp), (T.F16, (n_kv, d, n_hkv), vp), (T.F32, (n_kv, n), mask)]
        scale = float(np.float32(1.0) / np.sqrt(np.float32(d)))

        def build(ctx, t):
            kq = b.ggml_mul_mat(ctx, t[1], t[0])  # (n_head, n, n_kv)
            kq = b.ggml_soft_max_ext(ctx, kq, t[3], scale, 0.0)
            kqv = b.ggml_mul_mat(ctx, t[2], kq)  # (n_head, n, d)
            return b.ggml_cont(ctx, b.ggml_permute(ctx, kqv, 0, 2, 1, 3))  # (n, n_head, d)

        return self.run(build, ins).reshape(n, n_head * d)
