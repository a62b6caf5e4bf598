"""General CPU arithmetic shared by the kernels and the model's ops.

- simd.py: 512-bit vector values in Numba (int32 and float32 lanes), the integer dot product on
  VNNI / AVX-512BW / AVX2 chosen at run time (`simd.INT8_DOT`), and 64-byte aligned arrays.
- amx.py: Intel AMX tiles (tile configuration, loads, stores, int8 tile products) and whether this
  process may use them (`amx.AMX_INT8`, `amx.kernel_path()`).
- ggml_math.py: ggml's float primitives lane by lane (fma, horizontal sums, exp, SiLU, float16
  rounding), so that camelid rounds where llama.cpp does.
- work_queue.py: parallel loops whose threads take chunks of work from an atomic counter.
"""
