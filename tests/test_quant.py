"""camelid.quant against independent oracles.

- dequantize: gguf-py's reference `gguf.quants.dequantize`, bit for bit, on random blocks and on the
  tensors of two real model files.
- fake_quantize: an explicit integer dot product written here from llama.cpp's scalar kernels, and,
  when llama-cpp-python is installed, the compiled ggml CPU library itself (its quantize_row_q8_* and
  vec_dot functions, called through ctypes).
- QTensor: a float64 product of the same operands.
"""

from __future__ import annotations


import numpy as np
import pytest
import oracle
from model_files import gemma_path, smollm2_path
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
import gguf.quants as gq

from camelid.errors import CamelidError
from camelid.formats.gguf import TensorInfo, open_gguf
from camelid.quant import activations, qtensor
from camelid.quant.activations import VEC_DOT_TYPE, fake_quantize, q8_1_sum_correction, quantize_q8_0, quantize_q8_1, quantize_q8_K
from camelid.quant.types import BLOCK_TYPES, SUPPORTED_TYPES, block_layout, check_supported, dequantize
from camelid.quant.qtensor import QTensor, load_vector, register_kernel

QUANT_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
F16_SPECIAL = np.array([0.0, -0.0, 6e-8, -6e-8, 3e-5, 6.1e-5, 1.0, -2.5, 60000.0, -65504.0], dtype=np.float16)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def random_raw(t, n_rows: int, n_cols: int, rng, scale: float = 0.05, special: bool = False) -> np.ndarray:
    """Random (n_rows, row_bytes) blocks of type t whose f16 fields are finite floats."""
    block_size, type_size = GGML_QUANT_SIZES[t]
    raw = rng.integers(0, 256, size=(n_rows, n_cols // block_size * type_size), dtype=np.uint8)
    recs = raw.reshape(-1).view(BLOCK_TYPES[t].dtype)
    for name in recs.dtype.names:
        if recs.dtype.fields[name][0] == np.dtype("<f2"):
            values = (rng.standard_normal(len(recs)) * scale).astype(np.float16)
            if special:
                pick = rng.random(len(recs)) < 0.2
                values[pick] = rng.choice(F16_SPECIAL, pick.sum())
            recs[name] = values
    return raw


# ---------------------------------------------------------------------------- dequantize vs gguf-py

def test_registry_matches_ggml_sizes():
    assert set(SUPPORTED_TYPES) == {T.F32, T.F16, T.BF16, *QUANT_TYPES}
    for t in SUPPORTED_TYPES:
        assert block_layout(t) == GGML_QUANT_SIZES[t]
        assert BLOCK_TYPES[t].dtype.itemsize == GGML_QUANT_SIZES[t][1]


@pytest.mark.parametrize("t", QUANT_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks_bit_exact(t):
    rng = np.random.default_rng(int(t))
    block_size = GGML_QUANT_SIZES[t][0]
    raw = random_raw(t, 67, 4 * max(block_size, 64), rng, special=True)
    mine = dequantize(raw, t, 4 * max(block_size, 64))
    assert mine.dtype == np.float32 and mine.shape == (67, 4 * max(block_size, 64))
    assert np.array_equal(bits(mine), bits(gq.dequantize(raw, t)))


@pytest.mark.parametrize("t", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_dequantize_float_types_bit_exact_with_nan_and_inf(t):
    rng = np.random.default_rng(int(t))
    itemsize = GGML_QUANT_SIZES[t][1]
    raw = rng.integers(0, 256, size=(9, 40 * itemsize), dtype=np.uint8)  # includes NaN, inf, subnormals
    mine = dequantize(raw, t, 40)
    assert np.array_equal(bits(mine), bits(gq.dequantize(raw, t).reshape(9, 40)))


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16, T.F16], ids=lambda t: t.name)
def test_dequantize_gguf_quantized_data(t):
    rng = np.random.default_rng(7)
    data = (rng.standard_normal((33, 256)) * rng.exponential(1.0, (33, 1))).astype(np.float32)
    data[3] = 0.0
    raw = np.ascontiguousarray(gq.quantize(data, t)).view(np.uint8)
    assert np.array_equal(bits(dequantize(raw, t, 256)), bits(gq.dequantize(raw, t).reshape(33, 256)))


def test_unsupported_type_message():
    with pytest.raises(CamelidError, match=r"tensor blk\.0\.attn_q\.weight has type Q2_K.*supported: .*Q4_K.*camelid quantize"):
        check_supported(T.Q2_K, "blk.0.attn_q.weight")
    raw = np.zeros((4, 84), dtype=np.uint8)
    with pytest.raises(CamelidError, match="Q2_K"):
        QTensor.from_info(TensorInfo("w", T.Q2_K, (4, 256), raw))
    with pytest.raises(CamelidError):
        load_vector(TensorInfo("v", T.IQ4_NL, (32,), np.zeros((1, 18), dtype=np.uint8)))


# ---------------------------------------------------------------------------- real model files

def _sample_rows(n_rows: int, rng, k: int = 48) -> np.ndarray:
    if n_rows <= k:
        return np.arange(n_rows)
    return np.unique(np.concatenate([[0, n_rows - 1], rng.choice(n_rows, k - 2, replace=False)]))


def _check_tensor(info: TensorInfo, rng) -> None:
    rows = _sample_rows(info.raw.shape[0], rng)
    raw = np.ascontiguousarray(info.raw[rows])
    mine = dequantize(raw, info.ggml_type, info.shape[-1])
    ref = gq.dequantize(raw, info.ggml_type).reshape(mine.shape)
    assert np.array_equal(bits(mine), bits(ref)), info.name


def test_smollm2_every_tensor_bit_exact():
    f = open_gguf(smollm2_path())
    rng = np.random.default_rng(0)
    assert {t.ggml_type for t in f.tensors.values()} == {T.Q4_1, T.Q8_0, T.F32}
    for info in f.tensors.values():
        _check_tensor(info, rng)


def test_gemma3_sample_of_each_type_bit_exact():
    f = open_gguf(gemma_path())
    rng = np.random.default_rng(0)
    by_type: dict = {}
    for info in f.tensors.values():
        by_type.setdefault(info.ggml_type, []).append(info)
    assert {T.Q4_K, T.Q6_K, T.Q5_0, T.Q8_0, T.F32} <= set(by_type)
    for infos in by_type.values():
        for i in rng.choice(len(infos), min(4, len(infos)), replace=False):
            _check_tensor(infos[i], rng)
    _check_tensor(f.tensors["token_embd.weight"], rng)


# ---------------------------------------------------------------------------- fake_quantize vs integer dot products

F32 = np.float32


def _q8_blocks_x86(xrow: np.ndarray, with_sum: bool):
    """Scalar re-statement of ggml's AVX2 quantize_row_q8_0 / q8_1: [(d16, s16, ints)] per 32."""
    out = []
    for b in range(0, len(xrow), 32):
        v = xrow[b:b + 32]
        amax = F32(max(abs(F32(e)) for e in v))
        d = F32(amax / F32(127))
        inv = F32(F32(127) / amax) if amax != 0 else F32(0)
        ints = [int(np.rint(F32(F32(e) * inv))) for e in v]
        s = float(np.float16(F32(d * F32(sum(ints))))) if with_sum else None
        out.append((float(np.float16(d)), s, ints))
    return out


def _nearest_int(f: np.float32) -> int:
    val = np.array([F32(f) + F32(12582912.0)], dtype=np.float32).view(np.int32)[0]
    return int((val & 0x007FFFFF) - 0x00400000)


def _q8_K_blocks_ref(xrow: np.ndarray):
    """Scalar re-statement of quantize_row_q8_K_ref: [(d, ints, bsums)] per 256."""
    out = []
    for b in range(0, len(xrow), 256):
        v = [F32(e) for e in xrow[b:b + 256]]
        amax, vmax = F32(0), F32(0)
        for e in v:
            if abs(e) > amax:
                amax, vmax = abs(e), e
        if amax == 0:
            out.append((0.0, [0] * 256, [0] * 16))
            continue
        iscale = F32(F32(-127) / vmax)
        ints = [min(127, _nearest_int(F32(iscale * e))) for e in v]
        out.append((float(F32(F32(1) / iscale)), ints, [sum(ints[16 * j:16 * j + 16]) for j in range(16)]))
    return out


def _f16(raw_bytes) -> float:
    return float(np.frombuffer(bytes(raw_bytes), dtype="<f2")[0])


def _k_scales_kmask(sc12: bytes):
    """Q4_K/Q5_K scales and mins, decoded with the uint32 mask trick of ggml's dot products."""
    u = list(np.frombuffer(sc12, dtype="<u4").astype(np.uint64)) + [0]
    k1, k2, k3 = 0x3F3F3F3F, 0x0F0F0F0F, 0x03030303
    u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4)
    aux = u[1] & k1
    u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4)
    u[2] = aux
    u[0] &= k1
    b = np.array(u, dtype="<u4").view(np.uint8)
    return list(b[:8]), list(b[8:16])


def _dot_row(t, wrow: np.ndarray, xrow: np.ndarray) -> float:
    """One weight row . one activation row the way ggml's generic vec_dot kernels compute it."""
    w = bytes(wrow)
    total = 0.0
    if t in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        ts = GGML_QUANT_SIZES[t][1]
        for bi, (dx, sx, qx) in enumerate(_q8_blocks_x86(xrow, t in (T.Q4_1, T.Q5_1))):
            blk = w[bi * ts:(bi + 1) * ts]
            dw = _f16(blk[0:2])
            if t == T.Q8_0:
                qw = [int(v) for v in np.frombuffer(blk[2:], dtype=np.int8)]
            else:
                has_min = t in (T.Q4_1, T.Q5_1)
                qs = blk[-16:]
                qh = int.from_bytes(blk[2 + 2 * has_min:6 + 2 * has_min], "little") if t in (T.Q5_0, T.Q5_1) else 0
                off = 0 if has_min else (16 if t == T.Q5_0 else 8)
                qw = [0] * 32
                for j in range(16):
                    qw[j] = ((qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - off
                    qw[j + 16] = ((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - off
            total += dw * dx * sum(a * b for a, b in zip(qw, qx))
            if t in (T.Q4_1, T.Q5_1):
                total += _f16(blk[2:4]) * sx
        return total
    ts = GGML_QUANT_SIZES[t][1]
    for bi, (dx, qx, bsums) in enumerate(_q8_K_blocks_ref(xrow)):
        blk = w[bi * ts:(bi + 1) * ts]
        if t == T.Q6_K:
            ql, qh, sc, dw = blk[0:128], blk[128:192], np.frombuffer(blk[192:208], np.int8), _f16(blk[208:210])
            a = [0] * 256
            for half in range(2):
                for l in range(32):
                    h = qh[32 * half + l]
                    lo0, lo1 = ql[64 * half + l], ql[64 * half + l + 32]
                    a[128 * half + l] = ((lo0 & 0xF) | ((h >> 0) & 3) << 4) - 32
                    a[128 * half + l + 32] = ((lo1 & 0xF) | ((h >> 2) & 3) << 4) - 32
                    a[128 * half + l + 64] = ((lo0 >> 4) | ((h >> 4) & 3) << 4) - 32
                    a[128 * half + l + 96] = ((lo1 >> 4) | ((h >> 6) & 3) << 4) - 32
            isum = sum(int(sc[g]) * sum(a[i] * qx[i] for i in range(16 * g, 16 * g + 16)) for g in range(16))
            total += dw * dx * isum
            continue
        dw, dmin = _f16(blk[0:2]), _f16(blk[2:4])
        scales, mins = _k_scales_kmask(blk[4:16])
        qh = blk[16:48] if t == T.Q5_K else None
        qs = blk[48:176] if t == T.Q5_K else blk[16:144]
        a = [0] * 256
        for c in range(4):
            for l in range(32):
                byte = qs[32 * c + l]
                a[64 * c + l] = (byte & 0xF) + (16 if qh and qh[l] & (1 << (2 * c)) else 0)
                a[64 * c + 32 + l] = (byte >> 4) + (16 if qh and qh[l] & (2 << (2 * c)) else 0)
        isum = sum(int(scales[j]) * sum(a[i] * qx[i] for i in range(32 * j, 32 * j + 32)) for j in range(8))
        msum = sum(int(mins[j]) * (bsums[2 * j] + bsums[2 * j + 1]) for j in range(8))
        total += dx * dw * isum - dx * dmin * msum
    return total


def _activations(n: int, k: int, rng) -> np.ndarray:
    x = (rng.standard_normal((n, k)) * rng.exponential(1.0, (n, 1))).astype(np.float32)
    x[0, :32] = np.arange(32, dtype=np.float32) - 16.5  # -16.5 .. 14.5: exact halves once scaled,
    x[0, 0] = 127.0  # since the block's scale is 1; round-half-even and roundf disagree on them
    x[0, 32:64] = 0.0  # an all-zero block
    x[1, 256:512] = -np.abs(x[1, 256:512])  # largest magnitude negative
    return x


def _fake_matmul64(t, x: np.ndarray, raw: np.ndarray, n_in: int) -> np.ndarray:
    y = fake_quantize(x, t).astype(np.float64) @ dequantize(raw, t, n_in).astype(np.float64).T
    if t in (T.Q4_1, T.Q5_1):
        mins = raw.reshape(-1).view(BLOCK_TYPES[t].dtype)["m"].astype(np.float64).reshape(raw.shape[0], -1)
        y += q8_1_sum_correction(x).astype(np.float64) @ mins.T
    return y


@pytest.mark.parametrize("t", QUANT_TYPES, ids=lambda t: t.name)
def test_fake_quantize_matches_integer_dot_products(t):
    rng = np.random.default_rng(100 + int(t))
    n_in = 512
    x = _activations(2, n_in, rng)
    raw = random_raw(t, 3, n_in, rng)
    y = _fake_matmul64(t, x, raw, n_in)
    y_int = np.array([[_dot_row(t, raw[o], x[i]) for o in range(3)] for i in range(2)])
    scale = np.abs(fake_quantize(x, t)).astype(np.float64) @ np.abs(dequantize(raw, t, n_in)).astype(np.float64).T
    assert np.all(np.abs(y - y_int) <= 1e-6 * scale + 1e-30), (y, y_int)


def test_activation_codes_stay_in_int8_range():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 1024)) * 10.0 ** rng.uniform(-30, 30, (4, 1024))).astype(np.float32)
    x[2] = -np.abs(x[2])
    x[3, :256] = 0.0
    for d, q in [quantize_q8_0(x), quantize_q8_1(x)[::2], quantize_q8_K(x)]:
        assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
        assert np.all(np.abs(q).max(axis=-1)[np.asarray(d) != 0] == 127)
    assert np.all(fake_quantize(x[3:, :256], T.Q4_K) == 0) and np.all(fake_quantize(x[3:, :256], T.Q8_0) == 0)


def test_float_weight_types_round_activations():
    x = np.array([[1.0, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 1e-40, 70000.0, -3.14159]], np.float32)
    assert np.array_equal(fake_quantize(x, T.F32), x)
    with np.errstate(over="ignore"):
        assert np.array_equal(fake_quantize(x, T.F16), x.astype(np.float16).astype(np.float32))
    bf = fake_quantize(x, T.BF16)
    assert np.all(bits(bf) & 0xFFFF == 0)
    assert list(bf[0, :5]) == [1.0, 1.0, 1.0, 1.0, 1.0 + 2.0**-6]  # ulp 2^-7, halves to even


# ---------------------------------------------------------------------------- the compiled llama.cpp as oracle

@pytest.fixture(scope="module")
def ggml_cpu():
    return oracle.ggml()


def test_vec_dot_types_match_ggml(ggml_cpu):
    for t, vt in VEC_DOT_TYPE.items():
        assert ggml_cpu.vec_dot_type(t) == int(vt), t.name


def test_activation_quantization_bytes_match_ggml(ggml_cpu):
    if not ggml_cpu.build().get("avx2"):
        pytest.skip("this ggml build has no AVX2; camelid reproduces the AVX2/AVX-512 activation rounding")
    x = _activations(3, 4096, np.random.default_rng(5))
    for row in x:
        y = ggml_cpu.from_float(T.Q8_0, row).reshape(-1, 34)
        d, q = quantize_q8_0(row[None])
        assert np.array_equal(y[:, :2].copy().view("<u2").ravel(), d.view("<u2").ravel())
        assert np.array_equal(y[:, 2:].view(np.int8), q[0])
        y = ggml_cpu.from_float(T.Q8_1, row).reshape(-1, 36)
        d, s, q = quantize_q8_1(row[None])
        assert np.array_equal(y[:, :4].copy().view("<u2"), np.stack([d[0], s[0]], 1).view("<u2"))
        assert np.array_equal(y[:, 4:].view(np.int8), q[0])
        y = ggml_cpu.from_float(T.Q8_K, row).reshape(-1, 292)
        d, q = quantize_q8_K(row[None])
        assert np.array_equal(y[:, :4].copy().view("<u4").ravel(), d.view("<u4").ravel())
        assert np.array_equal(y[:, 4:260].view(np.int8), q[0])
        assert np.array_equal(y[:, 260:].copy().view("<i2"), q[0].reshape(-1, 16, 16).sum(-1))
        assert np.array_equal(ggml_cpu.from_float(T.F16, row).view(np.float16).astype(np.float32), fake_quantize(row[None], T.F16)[0])
        bf = ggml_cpu.from_float(T.BF16, row).view("<u2").astype(np.uint32) << 16
        assert np.array_equal(bf, bits(fake_quantize(row[None], T.BF16)[0]))


@pytest.mark.parametrize("t", [T.F32, T.F16, T.BF16, *QUANT_TYPES], ids=lambda t: t.name)
def test_matmul_matches_ggml_vec_dot(ggml_cpu, t):
    rng = np.random.default_rng(200 + int(t))
    n_in, n_out = 1024, 5
    x = _activations(2, n_in, rng)
    if t in QUANT_TYPES:
        raw = random_raw(t, n_out, n_in, rng)
    else:
        raw = np.ascontiguousarray(gq.quantize(rng.standard_normal((n_out, n_in)).astype(np.float32), t)).view(np.uint8)
    ref = ggml_cpu.vec_dot(t, raw, x)
    w = QTensor("w", t, (n_out, n_in), raw)
    y = w.matmul(x)
    scale = np.abs(fake_quantize(x, t)).astype(np.float64) @ np.abs(w.dequantize()).astype(np.float64).T
    assert np.all(np.abs(y - ref) <= 2e-6 * scale + 1e-30), (y, ref)


# ---------------------------------------------------------------------------- QTensor

@pytest.mark.parametrize("t", [T.Q4_1, T.Q8_0, T.Q4_K, T.Q6_K, T.F16], ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 13])
def test_qtensor_matmul_tiles(monkeypatch, t, n_tokens):
    """The dequantize-and-BLAS fallback (used for a type without a kernel) and its float32 cache."""
    kernel = qtensor.registered_kernel(t)
    register_kernel(t, None)
    try:
        _check_matmul_tiles(monkeypatch, t, n_tokens)
    finally:
        register_kernel(t, kernel)


def _check_matmul_tiles(monkeypatch, t, n_tokens):
    rng = np.random.default_rng(int(t) * 10 + n_tokens)
    n_out, n_in = 45, 512
    raw = random_raw(t, n_out, n_in, rng) if t in QUANT_TYPES else gq.quantize(
        rng.standard_normal((n_out, n_in)).astype(np.float32), t).view(np.uint8)
    monkeypatch.setattr(qtensor, "TILE_BYTES", 4 * n_in * 7)  # 7-row tiles: 45 is not a multiple
    w = QTensor("w", t, (n_out, n_in), raw)
    x = _activations(max(n_tokens, 2), n_in, rng)[:n_tokens]
    expected = _fake_matmul64(t, x, raw, n_in)
    y = w.matmul(x)
    assert y.dtype == np.float32 and y.shape == (n_tokens, n_out)
    scale = np.abs(fake_quantize(x, t)).astype(np.float64) @ np.abs(w.dequantize()).astype(np.float64).T
    assert np.all(np.abs(y - expected) <= 1e-6 * scale + 1e-30)
    y1 = w.matmul(x[0])
    assert y1.shape == (n_out,) and np.all(np.abs(y1 - expected[0]) <= 1e-6 * scale[0] + 1e-30)
    w.cache_dequantized = True
    assert np.all(np.abs(w.matmul(x) - expected) <= 1e-6 * scale + 1e-30)
    assert w.dequantized() is w.dequantized()
    w.cache_dequantized = False
    assert w._dense is None


def test_qtensor_get_rows_and_ranges():
    rng = np.random.default_rng(11)
    raw = random_raw(T.Q5_K, 20, 512, rng)
    w = QTensor.from_info(TensorInfo("token_embd.weight", T.Q5_K, (20, 512), raw))
    full = dequantize(raw, T.Q5_K, 512)
    assert np.array_equal(bits(w.dequantize()), bits(full))
    assert np.array_equal(bits(w.dequantize(3, 9)), bits(full[3:9]))
    ids = [7, 0, 19, 7]
    assert np.array_equal(bits(w.get_rows(ids)), bits(full[ids]))
    assert np.array_equal(bits(w.get_rows(np.array(ids, dtype=np.int32))), bits(full[ids]))
    with pytest.raises(CamelidError, match="out of range"):
        w.get_rows([20])
    w.cache_dequantized = True
    w.dequantized()
    assert np.array_equal(bits(w.get_rows(ids)), bits(full[ids]))
    with pytest.raises(CamelidError, match="2-D"):
        QTensor.from_info(TensorInfo("w3", T.Q5_K, (2, 10, 512), raw))


def test_load_vector():
    rng = np.random.default_rng(12)
    v = rng.standard_normal(576).astype(np.float32)
    assert np.array_equal(load_vector(TensorInfo("norm", T.F32, (576,), v.view(np.uint8).reshape(1, -1))), v)
    h = v.astype(np.float16)
    out = load_vector(TensorInfo("bias", T.F16, (576,), h.view(np.uint8).reshape(1, -1)))
    assert out.dtype == np.float32 and out.shape == (576,) and np.array_equal(out, h.astype(np.float32))


def test_registered_kernel_replaces_the_blas_path():
    calls = []

    def kernel(w: QTensor, x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return np.full((x.shape[0], w.shape[0]), 42.0, dtype=np.float32)

    raw = random_raw(T.Q4_0, 8, 64, np.random.default_rng(13))
    w = QTensor("w", T.Q4_0, (8, 64), raw)
    builtin = qtensor.registered_kernel(T.Q4_0)
    register_kernel(T.Q4_0, kernel)
    try:
        assert np.all(w.matmul(np.ones((3, 64), np.float32)) == 42.0) and calls == [(3, 64)]
        register_kernel(T.Q4_0, None)
        assert qtensor.registered_kernel(T.Q4_0) is None
        assert not np.all(w.matmul(np.ones((3, 64), np.float32)) == 42.0)
    finally:
        register_kernel(T.Q4_0, builtin)
    assert activations.VEC_DOT_TYPE[T.Q4_0] == T.Q8_0
