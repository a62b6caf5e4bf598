"""General CPU arithmetic shared by the kernels and the model's ops.

- simd.py: 512-bit vector values in Numba (int32 and float32 lanes), the integer dot product on
  VNNI / AVX-512BW / AVX2 chosen at run time (`simd.INT8_DOT`), and 64-byte aligned arrays.
- ggml_math.py: ggml's float primitives lane by lane (fma, horizontal sums, exp, SiLU, float16
  rounding), so that camelid rounds where llama.cpp does.
- work_queue.py: parallel loops whose threads take chunks of work from an atomic counter.
"""
