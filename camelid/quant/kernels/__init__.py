"""The matrix-product kernels: llama.cpp's products, bit for bit, as Numba kernels.

llama.cpp's CPU backend computes every output of a quantized matmul as a dot product of one weight
row with the activation row rounded to int8 (activations.py), and the float rounding of that dot
product depends on how its SIMD code splits the sum. The kernels reproduce the split, so camelid's
products are bit-identical to the x86 AVX-512 build that `pip install llama-cpp-python` compiles
(tests/test_kernels.py checks every type and batch size against the compiled ggml). Which kernel
runs for which matrix is one table, camelid/quant/qtensor.py's `KERNEL_TABLE`.

Files, one per family; a family imports only layout.py, activations.py and camelid.cpu:

- layout.py: row groups, interleaving, nibble packing, K-quant unpacking (shared by all families).
- activations.py: the activation rounding (Q8_0, Q8_1, Q8_K) in Numba.
- q32_float.py / q32_int8.py: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-weight blocks).
- kq_float.py / kq_int8.py: Q4_K, Q5_K, Q6_K (256-weight super-blocks).
- dense.py: F32, F16, BF16 (tinyBLAS and ggml_vec_dot_f32/_f16/_bf16).

A `_float` family computes the integer sums with float32 arithmetic on exactly representable
integers, which any CPU can run; an `_int8` family computes them with int8 dot-product instructions
(camelid.cpu.simd: VNNI, else AVX-512BW or AVX2), 3-5x faster, with the same results bit for bit.
On CPUs with AMX (camelid.cpu.amx) the repacked Q4_0 and Q4_K products of prompt-sized batches take
their integer sums from AMX tile products instead, again bit for bit. The VEC orders (Q4_1, Q5_0,
Q5_1, Q8_0, and the K-quants below 8 tokens) cannot gain from them: they keep sums of 4 products
per float lane, and a tile product costs the same whatever its depth, so AMX 4 products deep is no
faster than VNNI. TILED (Q5_K, Q6_K, unrepacked Q4_K) could, as the gemm does; not built yet.

The code paths (llama.cpp's, and so the float order of a product):

- 32-weight blocks, VEC: `ggml_vec_dot_q*_q8_*` (AVX2), and llamafile's tinyBLAS_Q0_AVX for
  batches, which does the same arithmetic per output: per block, 8 integer lane sums of 4
  consecutive products, each added to its own float lane as acc[j] = fma(f32(d_w * d_a), lane_j,
  acc[j]) over the blocks in order; the result is the 8 lanes summed as ((a0+a4)+(a2+a6)) +
  ((a1+a5)+(a3+a7)) (`hsum_float_8`); Q4_1/Q5_1 then add summs = sum over blocks of m_w * s_a
  (float32, in block order).
- 32-weight blocks, REPACKED: Q4_0 matrices llama.cpp repacks into `block_q4_0x8`
  (`ggml_gemv/gemm_q4_0_8x8_q8_0`): one float accumulator per output, acc = fma(f32(block integer
  sum), f32(d_w * d_a), acc).
- K-quants: the activations are Q8_K (256 values, a float32 scale d_a, per-16 sums). Inside a
  super-block everything is exact integer arithmetic; the paths differ in where the integers become
  floats and in which order those are added:
  - VEC (`ggml_vec_dot_q*_K_q8_K`, AVX2; below 8 tokens): 8 float lanes, lane k holding the integer
    sum over g of scale x (the 4 products of values 32g+4k..32g+4k+3) (Q6_K: less 32 x the (scale,
    activation sum) products of sub-blocks 2k and 2k+1), acc[k] = fma(d_a * d_w, lane, acc[k]) per
    super-block, then `hsum8`. Q4_K adds 4 more lanes of min terms, fma((-d_a) * dmin_w, ...)
    reduced as (m0+m2)+(m1+m3); Q5_K one float summs += ((-d_a) * dmin_w) * (integer min total).
  - TILED (ggml's tiled K-quant matmul, AVX-512 VNNI; 8 tokens or more on weights that are not
    repacked): per super-block r = f32(sum of scale x (sub-block dot - 32 x sub-block sum for
    Q6_K)) * d_w, then r = fma(-dmin_w, f32(sum of min x sub-block sum), r), and out += r * d_a.
  - GEMV / GEMM (the repacked Q4_K 8x8 kernels, for Q4_K matrices llama.cpp repacks): one
    accumulator per output and one for the mins, acc = fma(f32(integer), d_w * d_a, acc), once per
    super-block (gemv, single rows) or once per 64 values (gemm, the rows in groups of 4); the
    result is acc - acc_min.
- F32 / F16 / BF16: tinyBLAS from 2 tokens where the shapes allow, else ggml_vec_dot_* (dense.py).

llama.cpp repacks (loads into its CPU_REPACK buffer) the Q4_0 and Q4_K matrices whose row count is a
multiple of 8, except the token embedding (read by GET_ROWS, which that buffer does not support); a
tied output matrix therefore keeps the plain order.
"""

from __future__ import annotations

import glob
import os


def kernels_compiled() -> bool:
    """Whether Numba's cache already holds compiled kernels of this package (else the first use compiles them).

    The cache is the directory camelid.compile_cache points Numba at (numba.config.CACHE_DIR), where
    Numba keeps each source directory's kernels in a subdirectory of its own; without it, __pycache__.
    """
    import numba
    from numba.core.caching import UserProvidedCacheLocator

    if numba.config.CACHE_DIR:
        directory = os.path.join(numba.config.CACHE_DIR, UserProvidedCacheLocator.get_suitable_cache_subpath(__file__))
    else:
        directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    return bool(glob.glob(os.path.join(directory, "*.nbi")))
