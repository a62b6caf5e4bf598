"""camelid.quant.encode against two independent oracles: gguf-py's reference `gguf.quants.quantize`
(for the types it implements) and llama.cpp's own `ggml_quantize_chunk` from the compiled ggml library
(what `llama-quantize` calls), bit for bit."""

from __future__ import annotations


import gguf
import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from camelid.errors import CamelidError
from camelid.quant.types import dequantize
from camelid.quant.encode import QUANTIZE_TYPES, quantize_rows

import oracle

BLOCK_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]
GGUF_PY_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.BF16, T.F16]


def _hard_rows(n_cols: int = 512) -> np.ndarray:
    """Rows that exercise every branch: zero, constant, one-signed, ties, outliers, tiny and huge scales."""
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal(n_cols) * s for s in (1e-30, 1e-9, 1e-6, 1e-3, 1.0, 1e3, 6e4, 1e6, 1e15)]
    rows += [np.zeros(n_cols), np.full(n_cols, 3.0), np.full(n_cols, -2.5)]
    r = rng.standard_normal(n_cols)
    r[::37] = 1e5
    rows += [r, rng.integers(-16, 16, n_cols) * 0.5, np.abs(rng.standard_normal(n_cols)), -np.abs(rng.standard_normal(n_cols))]
    one_hot = np.zeros(n_cols)
    one_hot[5] = 1.0
    rows += [one_hot, rng.choice([-65504.0, 65504.0, 0.0, 1e-8], n_cols)]
    rows += list(rng.standard_normal((16, n_cols)) * rng.uniform(0.001, 2.0, (16, 1)))
    zero_block = rng.standard_normal(n_cols)
    zero_block[32:64] = 0.0
    zero_block[256:512] = 0.0
    rows.append(zero_block)
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return _hard_rows()


@pytest.fixture(scope="module")
def ggml():
    """ggml_quantize_chunk(type, rows) from llama-cpp-python's libggml-base, in the oracle's process."""
    return oracle.ggml().quantize_chunk


@pytest.mark.parametrize("t", GGUF_PY_TYPES, ids=lambda t: t.name)
def test_equals_gguf_py_reference(rows, t):
    with np.errstate(all="ignore"):
        expected = gguf.quants.quantize(rows, t).view(np.uint8).reshape(len(rows), -1)
    got = quantize_rows(rows, t)
    bad = np.where((got != expected).any(axis=1))[0]
    assert bad.size == 0, f"rows {bad.tolist()} differ from gguf-py"


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
def test_equals_llama_cpp_quantizer(rows, ggml, t):
    got = quantize_rows(rows, t)
    bad = np.where((got != ggml(t, rows)).any(axis=1))[0]
    assert bad.size == 0, f"rows {bad.tolist()} differ from ggml_quantize_chunk"


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
def test_large_random_matrix_equals_llama_cpp(ggml, t):
    x = (np.random.default_rng(7).standard_normal((96, 1024)) * 0.02).astype(np.float32)
    assert np.array_equal(quantize_rows(x, t), ggml(t, x))


def test_bf16_keeps_nan_quiet_and_rounds_to_even():
    x = np.array([[np.nan, -np.nan, np.inf, -np.inf, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.4e38, -0.0]], np.float32)
    expected = gguf.quants.quantize(x, T.BF16).view(np.uint8)
    assert np.array_equal(quantize_rows(x, T.BF16), expected)


def test_f16_bits_match_numpy_on_every_range():
    """put_f16 (the K-quant scales) rounds like IEEE nearest-even: normals, subnormals, overflow, zero."""
    from numba import njit

    from camelid.quant.encode_k import put_f16

    @njit
    def all_f16(v, out):
        for i in range(v.size):
            put_f16(out, 2 * i, v[i])

    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    v = np.concatenate([bits.view(np.float32), np.float32([65504, 65519.99, 65520, 6.1035156e-05, 6.1e-05, 2.0**-25, 2.0**-24, 0.0, -0.0])])
    v = v[~np.isnan(v)]
    out = np.zeros(2 * v.size, np.uint8)
    all_f16(v, out)
    with np.errstate(over="ignore"):
        assert np.array_equal(out.view(np.uint16), v.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
def test_result_does_not_depend_on_thread_count(t):
    x = np.random.default_rng(5).standard_normal((33, 512)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = quantize_rows(x, t)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        assert np.array_equal(quantize_rows(x, t), one)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
def test_round_trip_error_is_small(t):
    """Dequantized values stay within a fraction of each block's range (a sanity bound, not the oracle)."""
    x = np.random.default_rng(9).standard_normal((8, 512)).astype(np.float32)
    back = dequantize(quantize_rows(x, t), t, 512)
    bits = {T.Q8_0: 8, T.Q4_0: 4, T.Q4_1: 4, T.Q5_0: 5, T.Q5_1: 5, T.Q4_K: 4, T.Q5_K: 5, T.Q6_K: 6}[t]
    assert np.abs(back - x).max() < 2.0 * np.abs(x).max() / 2 ** (bits - 1)


def test_float_types_return_the_values_bytes():
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    assert np.array_equal(quantize_rows(x, T.F32).view(np.float32), x)
    assert np.array_equal(quantize_rows(x, T.F16).view(np.float16), x.astype(np.float16))
    assert quantize_rows(x, T.BF16).shape == (3, 128)
    assert np.array_equal(quantize_rows(x, "q8_0"), quantize_rows(x, T.Q8_0))
    assert np.array_equal(quantize_rows(x, int(T.Q4_1)), quantize_rows(x, T.Q4_1))


def test_bad_row_length_and_type_are_clear_errors():
    with pytest.raises(CamelidError, match="not a multiple of 256"):
        quantize_rows(np.zeros((2, 96), np.float32), T.Q4_K)
    with pytest.raises(CamelidError, match="not a multiple of 32"):
        quantize_rows(np.zeros((2, 48), np.float32), T.Q8_0)
    with pytest.raises(CamelidError, match="unknown GGML type 'q9_9'"):
        quantize_rows(np.zeros((2, 256), np.float32), "q9_9")
    with pytest.raises(CamelidError, match="cannot quantize to IQ2_XXS"):
        quantize_rows(np.zeros((2, 256), np.float32), T.IQ2_XXS)
    assert set(BLOCK_TYPES) <= set(QUANTIZE_TYPES)
