"""camelid's matmul kernels and ggml primitives against llama.cpp's compiled ggml.

The oracle is the ggml CPU library that llama-cpp-python built on this machine (tests/oracle/ggml_library.py,
called in the oracle's worker process): a real GGML_OP_MUL_MAT graph on its CPU backend, so each
product takes the code path llama.cpp takes for that weight type and batch size (llamafile's tinyBLAS,
the tiled K-quant kernels, vec_dot, or the repacked Q4_0 / Q4_K kernels when the weights sit in the
CPU_REPACK buffer). In exact mode (tests/oracle/mode.py) every output must have the same float32
bits; in tolerance mode it must be within twice the rounding bound below. A float64 product of the
same operands checks on every CPU, with or without ggml, that the kernels compute the product at
all, within the rounding error their summation order allows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import importlib.util

import numpy as np
import pytest
import gguf.quants as gq
from gguf import GGMLQuantizationType as T

from camelid.quant import QTensor, registered_kernel
from camelid.quant.activations import fake_quantize, q8_1_sum_correction, quantize_q8_0, quantize_q8_1
from camelid.quant.types import BLOCK_TYPES, SUPPORTED_TYPES

import oracle
from oracle.mode import assert_kernel_matches

QUANT = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
FLOAT = [T.F32, T.F16, T.BF16]
TOKENS = [1, 2, 3, 5, 8, 13]  # vec_dot / tinyBLAS / gemv / gemm / tiled thresholds are 2, 4 and 8


@pytest.fixture(scope="module")
def ggml():
    """The ggml oracle, or None where llama-cpp-python is not installed outside CI (the float64
    bounds still run); under CI=true a missing oracle fails."""
    if importlib.util.find_spec("llama_cpp") is None and not oracle.in_ci():
        return None
    return oracle.ggml()


@pytest.fixture(scope="module")
def ggml_required(ggml):
    if ggml is None:
        oracle.missing("llama-cpp-python, the test oracle, is not installed: python tests/oracle/install.py")
    return ggml


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def random_weights(t, n_out: int, n_in: int, rng) -> np.ndarray:
    """(n_out, row_bytes) uint8: random blocks with finite float16 scales, or quantized normals."""
    if t in FLOAT:
        w = rng.standard_normal((n_out, n_in)).astype(np.float32)
        return np.ascontiguousarray(gq.quantize(w, t)).view(np.uint8).reshape(n_out, -1)
    bt = BLOCK_TYPES[t]
    raw = rng.integers(0, 256, size=(n_out, n_in // bt.block_size * bt.type_size), dtype=np.uint8)
    recs = raw.reshape(-1).view(bt.dtype)
    for name in recs.dtype.names:
        if recs.dtype.fields[name][0] == np.dtype("<f2"):
            recs[name] = (rng.standard_normal(len(recs)) * 0.05).astype(np.float16)
    return raw


def activations(n: int, k: int, rng) -> np.ndarray:
    """Rows like a transformer's: mostly small, a few large values (ggml's int8 steps then matter)."""
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[:, rng.integers(0, k, 3)] *= 40.0
    return x


def float64_product(t, raw: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The product of the activations as llama.cpp rounds them and the weights, in float64; and
    sum |x||w|, the scale of its rounding error."""
    w = QTensor("w", t, (raw.shape[0], x.shape[1]), raw).dequantize().astype(np.float64)
    xq = fake_quantize(x, t).astype(np.float64)
    ref = xq @ w.T
    if t in (T.Q4_1, T.Q5_1):
        mins = raw.reshape(-1).view(BLOCK_TYPES[t].dtype)["m"].astype(np.float64).reshape(raw.shape[0], -1)
        ref += q8_1_sum_correction(x).astype(np.float64) @ mins.T
    return ref, np.abs(xq) @ np.abs(w).T


def check(ggml, t, n_out: int, n_in: int, n_tok: int, name: str, repack: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = random_weights(t, n_out, n_in, rng)
    x = activations(n_tok, n_in, rng)
    y = QTensor(name, t, (n_out, n_in), raw).matmul(x)
    assert y.dtype == np.float32 and y.shape == (n_tok, n_out)
    ref, scale = float64_product(t, raw, x)
    # at most n_in/16 + 10 successive float32 roundings touch any partial sum on any of the paths;
    # the float32 dequantization of K-quant weights adds one more relative rounding per weight
    bound = (n_in / 16 + 11) * 2.0**-24 * scale + 1e-30
    excess = np.abs(y - ref) - bound
    assert np.all(excess <= 0), f"{t.name} {n_tok} tokens: off the float64 product at {np.unravel_index(np.argmax(excess), y.shape)}"
    if ggml is not None:
        expected = ggml.mul_mat(t, raw, x, repack=repack)
        assert_kernel_matches(y, expected, bound, f"{t.name} {n_tok} tokens, {name}, repack={repack}")


_CROSS_CASES = [(T.Q4_0, "blk.0.ffn_up.weight"), (T.Q4_0, "token_embd.weight"), (T.Q4_1, "x"), (T.Q5_0, "x"),
                (T.Q5_1, "x"), (T.Q8_0, "x"), (T.Q4_K, "blk.0.ffn_up.weight"), (T.Q4_K, "token_embd.weight"), (T.Q5_K, "x"), (T.Q6_K, "x")]


def cross_products() -> list[np.ndarray]:
    """Products of every integer-kernel type, repacked or not, at 1, 5 and 9 tokens (40 rows: a
    partial group)."""
    outs = []
    for i, (t, name) in enumerate(_CROSS_CASES):
        rng = np.random.default_rng(i)
        raw = random_weights(t, 40, 512, rng)
        outs += [QTensor(name, t, (40, 512), raw).matmul(activations(n, 512, rng)) for n in (1, 5, 9)]
    return outs


@pytest.mark.parametrize("simd_path", ["avx2", "avx512bw", "none"])
def test_other_simd_paths_equal_the_checked_kernels(simd_path, tmp_path):
    # Every path builds the same integer sums: vpdpbusd (VNNI), vpmaddubsw/vpmaddwd (AVX-512BW, AVX2;
    # Q8_0 with the sign trick), or float32 arithmetic on exact integers ("none"). Each other path
    # this CPU can run, in a process made to choose it, must give this process's outputs bit for bit.
    from llvmlite import binding

    from camelid.cpu import simd

    if simd_path == (simd.INT8_DOT or "none"):
        pytest.skip("this process's own path")
    features = binding.get_host_cpu_features()
    if not all(features.get(f, False) for f in simd._NEEDS.get(simd_path, ())):
        pytest.skip(f"this CPU cannot run the {simd_path} instructions")
    script = "import sys, numpy as np; sys.path.insert(0, %r); from test_kernels import cross_products; " \
             "from camelid.cpu import simd; assert (simd.INT8_DOT or 'none') == %r; np.savez(%r, *cross_products())" % (
                 os.path.dirname(__file__), simd_path, str(tmp_path / "out.npz"))
    env = dict(os.environ, CAMELID_SIMD=simd_path)  # camelid.compile_cache gives the path its own Numba cache
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    theirs = np.load(tmp_path / "out.npz")
    ours = cross_products()
    assert len(theirs.files) == len(ours)
    for i, y in enumerate(ours):
        assert np.array_equal(bits(theirs[f"arr_{i}"]), bits(y)), _CROSS_CASES[i // 3]


def test_every_supported_type_has_an_exact_kernel():
    assert set(SUPPORTED_TYPES) == set(QUANT + FLOAT)
    for t in SUPPORTED_TYPES:
        assert registered_kernel(t) is not None, t.name


@pytest.fixture(params=["int8", "portable"])
def kernel_path(request, monkeypatch):
    """Both kernels of the quantized types: integer dot products (VNNI here, see simd.INT8_DOT) and
    the portable float32 ones."""
    from camelid.cpu import simd

    if request.param == "int8" and simd.INT8_DOT is None:
        pytest.skip("this CPU has no usable integer dot product instructions")
    if request.param == "portable":
        monkeypatch.setattr(simd, "INT8_DOT", None)
    return request.param


@pytest.mark.parametrize("n_tok", TOKENS)
@pytest.mark.parametrize("t", [T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_block32_types_match_ggml(ggml, kernel_path, t, n_tok):
    # vec_dot for one token, llamafile's tinyBLAS_Q0 (Q5_0, Q8_0) or vec_dot (Q4_1, Q5_1) for more
    check(ggml, t, 72, 512, n_tok, "blk.0.ffn_up.weight", False, 10 * int(t) + n_tok)


@pytest.mark.parametrize("n_tok", TOKENS)
def test_q4_0_matches_ggml_repacked_and_plain(ggml, kernel_path, n_tok):
    # llama.cpp repacks Q4_0 matrices with a multiple of 8 rows (q4_0_8x8 gemv/gemm), except the
    # token embedding, which a tied output matrix then reads with the plain vec_dot / tinyBLAS order
    check(ggml, T.Q4_0, 72, 512, n_tok, "blk.0.ffn_up.weight", True, 100 + n_tok)
    check(ggml, T.Q4_0, 72, 512, n_tok, "token_embd.weight", False, 200 + n_tok)
    check(ggml, T.Q4_0, 44, 512, n_tok, "blk.0.ffn_up.weight", False, 300 + n_tok)


@pytest.mark.parametrize("n_tok", [16, 37])
def test_repacked_prompt_batches_match_ggml(ggml, kernel_path, n_tok):
    # from 16 tokens repacked Q4_0 and Q4_K products run on AMX tiles where the CPU has them
    check(ggml, T.Q4_0, 72, 512, n_tok, "blk.0.ffn_up.weight", True, 500 + n_tok)
    check(ggml, T.Q4_0, 40, 96, n_tok, "blk.0.ffn_up.weight", True, 600 + n_tok)
    check(ggml, T.Q4_K, 72, 768, n_tok, "blk.0.ffn_up.weight", True, 700 + n_tok)


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_K], ids=lambda t: t.name)
@pytest.mark.parametrize("seed", range(6))
def test_amx_products_equal_the_vnni_kernels(t, seed):
    # random shapes: partial token tiles (16 tokens each), partial 16-row groups, odd block counts,
    # and for Q4_K the 1-3 tokens past the gemm's groups of 4
    from camelid.cpu import amx
    from camelid.quant.kernels import kq_int8, q32_int8

    if amx.kernel_path() != "amx":
        pytest.skip(f"not run: camelid runs the {amx.kernel_path()} kernels here, without AMX tiles")
    family, tiles, vnni, block = {T.Q4_0: (q32_int8, q32_int8.Q32AmxRepacked, q32_int8.Q32Int8Repacked, 32),
                                  T.Q4_K: (kq_int8, kq_int8.KQuantAmxRepacked, kq_int8.KQuantInt8Repacked, 256)}[t]
    rng = np.random.default_rng(700 + 10 * int(t) + seed)
    n_out, n_in = 8 * int(rng.integers(1, 13)), block * int(rng.integers(1, 1280 // block))
    n_tok = int(rng.integers(family.MIN_TOKENS, family.MIN_TOKENS + 60))
    raw = random_weights(t, n_out, n_in, rng)
    x = activations(n_tok, n_in, rng)
    y = tiles(raw, t, n_out, n_in).matmul(x)
    assert np.array_equal(bits(y), bits(vnni(raw, t, n_out, n_in).matmul(x))), f"{n_out} x {n_in}, {n_tok} tokens"


@pytest.mark.parametrize("n_tok", [1, 6])
@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0], ids=lambda t: t.name)
def test_block32_small_and_ragged_shapes_match_ggml(ggml, kernel_path, t, n_tok):
    # fewer rows than one 16-row group, a partial last group, and an odd number of blocks
    for i, (n_out, n_in) in enumerate([(8, 96), (40, 32), (5, 160)]):
        repack = t == T.Q4_0 and n_out % 8 == 0
        check(ggml, t, n_out, n_in, n_tok, "blk.0.attn_q.weight", repack, 400 + 10 * i + n_tok)


@pytest.mark.parametrize("n_tok", TOKENS)
@pytest.mark.parametrize("t", [T.Q4_K, T.Q5_K, T.Q6_K], ids=lambda t: t.name)
def test_k_quants_match_ggml(ggml, kernel_path, t, n_tok):
    # vec_dot below 8 tokens, the tiled VNNI kernels from 8; Q4_K as the token embedding (not repacked)
    name = "token_embd.weight" if t == T.Q4_K else "blk.0.ffn_down.weight"
    check(ggml, t, 72, 768, n_tok, name, False, 10 * int(t) + n_tok)
    check(ggml, t, 5, 256, n_tok, "token_embd.weight", False, 20 * int(t) + n_tok)  # less than one 16-row group


@pytest.mark.parametrize("n_tok", TOKENS)
def test_q4_k_repacked_matches_ggml(ggml, kernel_path, n_tok):
    # q4_K_8x8: gemm for the rows in groups of 4 (an fma per 64 values), gemv for the rest (per 256)
    check(ggml, T.Q4_K, 72, 768, n_tok, "blk.0.ffn_down.weight", True, 400 + n_tok)
    check(ggml, T.Q4_K, 8, 256, n_tok, "blk.0.attn_k.weight", True, 500 + n_tok)


@pytest.mark.parametrize("n_tok", TOKENS)
@pytest.mark.parametrize("t", FLOAT, ids=lambda t: t.name)
def test_float_types_match_ggml(ggml, t, n_tok):
    # tinyBLAS from 2 tokens when n_out % 4 == 0 and n_in % 16 (BF16: 32) == 0, else vec_dot
    check(ggml, t, 72, 512, n_tok, "blk.0.ffn_up.weight", False, 10 * int(t) + n_tok)
    check(ggml, t, 42, 512, n_tok, "blk.0.ffn_up.weight", False, 20 * int(t) + n_tok)
    # vec_dot's tails: F32 in groups of 8 products then fmas, F16 / BF16 in float64
    check(ggml, t, 36, 600 if t == T.F32 else 592, n_tok, "blk.0.ffn_up.weight", False, 30 * int(t) + n_tok)


@pytest.mark.parametrize("n_rows", [5, 21])  # row by row, and on every thread from PARALLEL_ROWS
def test_activation_quantizer_matches_numpy_reference(n_rows):
    from camelid.quant.kernels.activations import quantize_q8_0_or_1 as _quantize_q8

    rng = np.random.default_rng(7)
    x = activations(n_rows, 2048, rng)
    x[1, :32] = 0.0
    x[2, 32:64] = 1e-30
    x[3] *= 1e4
    x[4, :32] = np.arange(32, dtype=np.float32) - 16.5  # exact halves once scaled (the block's scale is 1):
    x[4, 0] = 127.0  # ggml rounds them half to even
    aq = np.empty(x.size, np.int8)
    ad = np.empty(x.size // 32, np.float32)
    s = np.empty_like(ad)
    _quantize_q8(x, True, aq, ad, s)
    d, ref_s, q = quantize_q8_1(x)
    assert np.array_equal(aq, q.reshape(-1))
    assert np.array_equal(bits(ad), bits(d.astype(np.float32).reshape(-1)))
    assert np.array_equal(bits(s), bits(ref_s.astype(np.float32).reshape(-1)))
    assert np.array_equal(quantize_q8_0(x)[0], d)


@pytest.mark.parametrize("n_rows", [4, 20])
def test_q8_k_quantizer_matches_numpy_reference(n_rows):
    from camelid.quant.activations import quantize_q8_K
    from camelid.quant.kernels.activations import quantize_q8_K as quantize_q8_k

    rng = np.random.default_rng(8)
    x = activations(n_rows, 1024, rng)
    x[1, :256] = 0.0  # an all-zero block
    x[2, 300] = -2 * np.abs(x[2, 256:512]).max()  # the scale from a negative maximum
    x[3, 600:602] = [50.0, -50.0]  # a tie: the first one sets the sign
    q = np.empty(x.size, np.int8)
    d = np.empty(x.size // 256, np.float32)
    sums16 = np.empty(x.size // 16, np.int32)
    quantize_q8_k(x, q, d, sums16)
    ref_d, ref_q = quantize_q8_K(x)
    assert np.array_equal(q, ref_q.reshape(-1))
    assert np.array_equal(bits(d), bits(ref_d.reshape(-1)))
    assert np.array_equal(sums16, ref_q.reshape(-1, 16).sum(axis=1))


def test_round_f16_matches_numpy():
    from numba import njit

    from camelid.cpu.ggml_math import round_f16

    @njit
    def rounded(a, out):
        for i in range(a.size):
            out[i] = round_f16(a[i])

    rng = np.random.default_rng(8)
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32) * s for s in (1e-7, 1e-5, 1e-2, 1.0, 1e3, 6e4)]
                       + [np.array([65504, 65519, 65520, -65520, np.inf, -np.inf, 0.0, -0.0, 2**-25, 3 * 2**-26], np.float32)])
    out = np.empty_like(x)
    rounded(x, out)
    with np.errstate(over="ignore"):
        assert np.array_equal(bits(out), bits(x.astype(np.float16).astype(np.float32)))


def test_f16_bits_match_numpy():
    from numba import njit

    from camelid.cpu.ggml_math import f16_bits

    @njit
    def half_bits(a, out):
        for i in range(a.size):
            out[i] = f16_bits(a[i])

    rng = np.random.default_rng(9)
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32) * s for s in (1e-8, 1e-6, 1e-4, 1.0, 1e3)]
                       + [np.array([65504, 65519, -65519, 0.0, -0.0, 2**-24, 2**-25, 3 * 2**-26, 6.1e-5, -6.1e-5], np.float32)])
    out = np.empty(x.size, np.uint32)
    half_bits(x, out)
    assert np.array_equal(out, x.astype(np.float16).view(np.uint16).astype(np.uint32))


# ---------------------------------------------------------------------------- the other ops
# Each against a float64 computation of the same function (on every CPU), and against ggml.

def compare(ours: np.ndarray, ggml, theirs, ref: np.ndarray, bound: np.ndarray, what: str) -> None:
    """ours within bound of the float64 ref; and ggml's result (theirs(), when ggml is there) as the mode asks."""
    excess = np.abs(ours.astype(np.float64) - ref) - bound
    assert np.all(excess <= 0), f"{what}: off the float64 reference by {excess.max():.3g} more than its bound"
    if ggml is not None:
        assert_kernel_matches(ours, theirs(), bound, what)


def test_swiglu_matches_ggml(ggml):
    from camelid.model.ops import silu_mul

    rng = np.random.default_rng(9)
    gate = rng.standard_normal((5, 1544)).astype(np.float32) * 4  # 1544 = 96 * 16 + 8: a scalar tail
    up = rng.standard_normal((5, 1544)).astype(np.float32)
    gate[0, :10] = [-100, -90, 90, 100, 0, -0.0, 1e-30, -1e-30, 88, -88]
    g, u = gate.astype(np.float64), up.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = g / (1.0 + np.exp(-g)) * u
    # ggml's expf is within 1.5 ulp; the division and two products round once each
    bound = 8 * 2.0**-24 * np.abs(ref) + 2.0**-120
    ours = silu_mul(np.concatenate([gate, up], axis=1))
    compare(ours, ggml, lambda: ggml.swiglu(gate, up), ref, bound, "swiglu")


def test_geglu_matches_ggml_on_every_float16_gate(ggml):
    # Gemma's FFN: gelu_tanh(gate) * up through ggml's float16 GELU table, whose entries come from
    # glibc's tanhf (NumPy's float32 tanh gave 234 of them one float16 step off)
    from camelid.model.ops import gelu_mul

    gate = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    gate = gate[np.isfinite(gate)][:63488].reshape(-1, 992)  # every finite float16, -10 and 10 included
    up = np.random.default_rng(10).standard_normal(gate.shape).astype(np.float32)
    g = gate.astype(np.float64)
    ref = 0.5 * g * (1.0 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * up
    ref = np.where(g <= -10, 0.0, np.where(g >= 10, g * up, ref))
    # the float16 table rounds GELU to 11 bits (2^-25 apart below 2^-14), the product once more; below
    # x = -5, 1 + tanhf(...) is below float32's resolution at 1, an absolute error of about |x| 2^-23
    bound = (2.0**-11 + 2.0**-23) * np.abs(ref) + (2.0**-21 * np.abs(g) + 2.0**-24) * np.abs(up)
    ours = gelu_mul(np.concatenate([gate, up], axis=1))
    compare(ours, ggml, lambda: ggml.geglu(gate, up), ref, bound, "geglu")


def rope_float64(x: np.ndarray, positions: np.ndarray, base: float, neox: bool) -> np.ndarray:
    """RoPE over the whole head in float64, with ggml's float32 angles (theta_0 = position,
    theta_{i+1} = theta_i * base^(-2/d), both in float32)."""
    n, h, d = x.shape
    theta_scale = np.float32(base) ** np.float32(-2.0 / d)
    theta = positions.astype(np.float32)
    angles = np.empty((n, d // 2), np.float64)
    for i in range(d // 2):
        angles[:, i] = theta
        theta = theta * theta_scale
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x = x.astype(np.float64)
    a, b = (x[..., : d // 2], x[..., d // 2 :]) if neox else (x[..., 0::2], x[..., 1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return np.concatenate([ra, rb], axis=-1) if neox else np.stack([ra, rb], axis=-1).reshape(n, h, d)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_matches_ggml(ggml, neox):
    from camelid.model.ops import Rope

    rng = np.random.default_rng(10)
    x = rng.standard_normal((7, 3, 64)).astype(np.float32) * 10
    positions = np.arange(300, 307)
    ours = Rope(64, 64, 10000.0, 1.0, neox).apply(x.copy(), positions)
    ref = rope_float64(x, positions, 10000.0, neox)
    # cosf and sinf are correctly rounded; two products and a sum round once each
    partner = (np.arange(64) + 32) % 64 if neox else np.arange(64) ^ 1
    pair = np.abs(x) + np.abs(x[..., partner])
    bound = 4 * 2.0**-24 * pair + 2.0**-120
    compare(ours, ggml, lambda: ggml.rope(x, positions, 64, neox, 10000.0), ref, bound, f"rope neox={neox}")


def attention_float64(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Causal attention in float64 with llama.cpp's roundings (queries and the softmax weights to
    float16, as its F16 products take them); and sum_j w_j |v_j|, the scale of the output's error."""
    n, n_head, d = q.shape
    group = n_head // k.shape[1]
    q16 = q.astype(np.float16).astype(np.float64)
    visible = np.arange(k.shape[0])[None, :] <= start + np.arange(n)[:, None]
    out = np.empty((n, n_head, d))
    mag = np.empty((n, n_head, d))
    for h in range(n_head):
        keys, values = k[:, h // group].astype(np.float64), v[:, h // group].astype(np.float64)
        scores = np.where(visible, q16[:, h] @ keys.T / np.sqrt(d), -np.inf)
        w = np.exp(scores - scores.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        out[:, h] = w.astype(np.float16).astype(np.float64) @ values
        mag[:, h] = w @ np.abs(values)
    return out.reshape(n, -1), mag.reshape(n, -1)


@pytest.mark.parametrize("d, n_head, n_head_kv", [(64, 9, 3), (80, 4, 2), (128, 8, 8), (256, 4, 1)])
@pytest.mark.parametrize("n, start", [(1, 0), (1, 40), (5, 0), (9, 300), (16, 250)])
def test_attention_matches_ggml(ggml, d, n_head, n_head_kv, n, start):
    # one token: ggml_vec_dot_f16; more: tinyBLAS (head sizes not a multiple of 16 for the scores
    # fall back to vec_dot); 256 cached positions or more: llama.cpp reads 512 (masked) cells
    from camelid.model.ops import attention

    rng = np.random.default_rng(d + 7 * n + start)
    q = rng.standard_normal((n, n_head, d)).astype(np.float32) * 3
    k = (rng.standard_normal((start + n, n_head_kv, d)) * 2).astype(np.float16)
    v = rng.standard_normal((start + n, n_head_kv, d)).astype(np.float16)
    n_kv = max(256, (start + n + 255) // 256 * 256)
    ref, mag = attention_float64(q, k, v, start)
    # a softmax weight computed in float32 can round to the neighbouring float16 (2^-11 relative)
    # where the float64 one does not; the scores' own float32 error is far below that
    bound = 2.0**-9 * mag + 2.0**-120
    compare(attention(q, k, v, start), ggml, lambda: ggml.attention(q, k, v, start, n_kv), ref, bound, "attention")


_SINGLE_ROW_CASES = [*((t, "x") for t in QUANT + FLOAT), (T.Q4_0, "blk.0.ffn_up.weight"), (T.Q4_K, "blk.0.ffn_up.weight")]


@pytest.mark.parametrize("t, name", _SINGLE_ROW_CASES, ids=lambda c: getattr(c, "name", c))
def test_single_rows_give_each_row_its_one_token_product(kernel_path, t, name):
    """matmul(x, single_rows=True): each row bit for bit as that row alone (a batched decoding step
    of several sequences relies on it), where a 9-row batch takes tinyBLAS, the tiled or gemm path."""
    rng = np.random.default_rng(int(t))
    n_in = 512 if t in QUANT[:5] or t in FLOAT else 768
    w = QTensor(name, t, (72, n_in), random_weights(t, 72, n_in, rng))
    x = activations(9, n_in, rng)
    rows = w.matmul(x, single_rows=True)
    for i in range(len(x)):
        assert np.array_equal(bits(rows[i]), bits(w.matmul(x[i:i + 1])[0])), f"{t.name} row {i}"
