"""camelid's forward pass against an independent float64 NumPy reference.

The reference below is written from the architectures' definitions and from how llama.cpp applies
them to GGUF tensors, not from camelid's code. Tiny random models are written by tests/tiny_gguf.py,
which returns the exact stored weights so both sides compute with the same numbers.

Conventions the reference encodes (checked against ggml-org/llama.cpp):
- `llama_model_rope_type` (src/llama-model.cpp): LLM_ARCH_LLAMA -> LLAMA_ROPE_TYPE_NORM,
  LLM_ARCH_QWEN2 -> LLAMA_ROPE_TYPE_NEOX.
- ggml's CPU rope (ggml/src/ggml-cpu/ops.cpp, `rotate_pairs`, `ggml_rope_cache_init`):
  theta_scale = base^(-2/n_dims); pair k (0 <= k < n_dims/2) turns by pos * theta_scale^k * freq_scale;
  NORMAL rotates (x[2k], x[2k+1]), NEOX rotates (x[k], x[k + n_dims/2]);
  (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
- Linear scaling: llama.cpp sets freq_scale = 1 / `{arch}.rope.scaling.factor`, i.e. the position is
  divided by the factor.
- GQA: ggml_mul_mat broadcasts K/V heads, query head h reads KV head h // (n_head / n_head_kv).
- Attention scale 1/sqrt(head_dim); RMSNorm x / sqrt(mean(x^2) + eps) * w; SwiGLU FFN
  down(silu(gate x) * up x); a missing output.weight means the output matrix is token_embd.

Tolerances (see `ref_tolerance`, `consistency_tolerance`) rest on the float16 noise floor: the
largest logit error the reference itself shows when it rounds to float16 wherever an engine with an
f16 KV cache and f16 activations may (10-14 u * RMS(logits) on these models, u = 2^-11). Engine vs
reference: twice the floor. Engine vs engine (batched vs incremental, one chunk vs two): the floor.
Reference-only tests validate them in both directions: the floor lies between its a priori limits,
llama.cpp itself (when installed) lands inside, and each plausible bug (wrong RoPE layout,
positions restarting in a second chunk, ignored rope base or scaling, missing biases, wrong GQA
head mapping, no causal mask) lands over 50x outside.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import oracle
from tiny_gguf import tiny_hparams, write_tiny_model

# ----------------------------------------------------------------------------------------------
# Reference forward (float64)
# ----------------------------------------------------------------------------------------------

U16 = 2.0**-11  # float16 unit roundoff: |fl16(x) - x| <= U16 * |x| for normal-range x

# Points where llama.cpp rounds to float16 (used only to emulate it, for tolerance validation):
#   "kv":   K (after RoPE) and V written to the f16 KV cache
#   "attn": Q converted to f16 for the f16-K matmul; softmax probabilities converted to f16 for the
#           f16-V matmul (ggml converts src1 to the weight's vec_dot_type)
#   "act":  every matmul input when the weights are F16 (vec_dot_type of F16 is F16)
ALL_F16_SITES = frozenset({"kv", "attn", "act"})


def _f16(x: np.ndarray, on: bool) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64) if on else x


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, pos: np.ndarray, base: float, layout: str, pos_scale: float = 1.0) -> np.ndarray:
    """Rotary embedding of x (n, n_heads, head_dim) at positions pos (n,).

    Pair k turns by angle (pos / pos_scale) * base^(-2k/head_dim). layout "norm" pairs (x[2k], x[2k+1]);
    layout "neox" pairs (x[k], x[k + head_dim/2]).
    """
    hd = x.shape[-1]
    k = np.arange(hd // 2, dtype=np.float64)
    theta = (np.asarray(pos, dtype=np.float64) / pos_scale)[:, None] * base ** (-2.0 * k / hd)  # (n, hd/2)
    c = np.cos(theta)[:, None, :]  # (n, 1, hd/2)
    s = np.sin(theta)[:, None, :]
    out = np.empty_like(x)
    if layout == "norm":
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
    elif layout == "neox":
        h = hd // 2
        x0, x1 = x[..., :h], x[..., h:]
        out[..., :h] = x0 * c - x1 * s
        out[..., h:] = x0 * s + x1 * c
    else:
        raise ValueError(layout)
    return out


def reference_forward(
    w: dict[str, np.ndarray],
    hp: dict[str, Any],
    tokens,
    *,
    positions=None,
    f16_sites: frozenset[str] = frozenset(),
    rope_layout: str | None = None,
    rope_base: float | None = None,
    rope_pos_scale: float | None = None,
    use_bias: bool = True,
    kv_head_of=lambda h, group, n_head_kv: h // group,
    causal: bool = True,
) -> np.ndarray:
    """Logits (n, n_vocab) for tokens at positions 0..n-1 with an empty context, in float64.

    The keyword overrides exist for the negative controls (deliberate bugs) and for the emulation of
    llama.cpp's float16 rounding points; the defaults are the model as defined.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    nh, nkv, hd = hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    group = nh // nkv
    eps = hp["rms_eps"]
    layout = rope_layout or hp["rope_type"]
    base = hp["rope_base"] if rope_base is None else rope_base
    if rope_pos_scale is None:
        rope_pos_scale = hp["rope_scale_linear"] or 1.0
    act, kvr, attn = ("act" in f16_sites), ("kv" in f16_sites), ("attn" in f16_sites)
    pos = np.arange(n) if positions is None else np.asarray(positions)  # RoPE positions of the tokens

    x = w["token_embd.weight"][tokens]  # (n, n_embd)
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        h = _f16(rms_norm(x, w[p + "attn_norm.weight"], eps), act)
        q = h @ w[p + "attn_q.weight"].T  # (n, nh*hd)
        k = h @ w[p + "attn_k.weight"].T  # (n, nkv*hd)
        v = h @ w[p + "attn_v.weight"].T  # (n, nkv*hd)
        if use_bias and (p + "attn_q.bias") in w:
            q = q + w[p + "attn_q.bias"]
            k = k + w[p + "attn_k.bias"]
            v = v + w[p + "attn_v.bias"]
        q = rope(q.reshape(n, nh, hd), pos, base, layout, rope_pos_scale)  # (n, nh, hd)
        k = rope(k.reshape(n, nkv, hd), pos, base, layout, rope_pos_scale)  # (n, nkv, hd)
        v = v.reshape(n, nkv, hd)
        k, v, q = _f16(k, kvr), _f16(v, kvr), _f16(q, attn)

        out = np.empty((n, nh, hd))
        mask = np.triu(np.full((n, n), -np.inf), 1) if causal else np.zeros((n, n))  # (n_q, n_k)
        for hq in range(nh):
            hk = kv_head_of(hq, group, nkv)
            s = q[:, hq, :] @ k[:, hk, :].T / np.sqrt(hd) + mask  # (n_q, n_k)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            pr = _f16(s / s.sum(axis=1, keepdims=True), attn)
            out[:, hq, :] = pr @ v[:, hk, :]
        x = x + _f16(out.reshape(n, nh * hd), act) @ w[p + "attn_output.weight"].T

        h = _f16(rms_norm(x, w[p + "ffn_norm.weight"], eps), act)
        g = h @ w[p + "ffn_gate.weight"].T  # (n, n_ff)
        u = h @ w[p + "ffn_up.weight"].T  # (n, n_ff)
        x = x + _f16(g / (1.0 + np.exp(-g)) * u, act) @ w[p + "ffn_down.weight"].T

    h = _f16(rms_norm(x, w["output_norm.weight"], eps), act)
    out_w = w.get("output.weight", w["token_embd.weight"])
    return h @ out_w.T  # (n, n_vocab)


def llama_cpp_f16_sites(hp: dict[str, Any]) -> frozenset[str]:
    """The float16 rounding points llama.cpp (f16 KV cache, no flash attention) has for this model."""
    return ALL_F16_SITES if hp["weight_type"] == "F16" else frozenset({"kv", "attn"})


def n_f16_roundings(hp: dict[str, Any]) -> int:
    """How many float16 roundings a token's signal passes through on its way to the logits when
    every site in ALL_F16_SITES rounds: per layer K, V, Q and the softmax probabilities, plus the
    four matmul inputs (attention input, o-proj input, FFN input, down-proj input); plus the
    output matmul's input."""
    return hp["n_layer"] * 8 + 1


def logit_scale(ref: np.ndarray) -> float:
    """RMS of the reference logits: the magnitude relative to which rounding errors arrive.

    logits = W_out h; a perturbation of h by a relative amount r moves the logits by about r times
    their own RMS (random W_out), so errors are measured in units of this, not of max|logit|.
    """
    return float(np.sqrt(np.mean(ref * ref)))


def f16_noise_floor(w: dict[str, np.ndarray], hp: dict[str, Any], tokens, ref: np.ndarray) -> float:
    """max |logit error| of the reference itself when it rounds to float16 at every site where an
    engine with an f16 KV cache and f16 activations may round (ALL_F16_SITES), with exact float64
    arithmetic elsewhere: the size of the error that float16 storage alone causes on these tokens."""
    return float(np.abs(reference_forward(w, hp, tokens, f16_sites=ALL_F16_SITES) - ref).max())


def ref_tolerance(floor: float) -> float:
    """Max |engine - reference| allowed on any logit: twice the float16 noise floor.

    Why not an a priori bound: each rounding perturbs its value by at most u = 2^-11 relative, but
    the gain from a rounding site to the worst of the 24*n_vocab logits is not 1 (softmax over O(1)
    scores amplifies, and the max over ~6000 logits sits ~4 RMS out), so "n_sites * u * RMS" is
    not a bound (the 17-site emulation reaches 14u*RMS with F32 weights), while the worst case
    "n_sites * u * max|logit|" is 2-3x looser than needed. The floor is measured instead, on the
    same weights and tokens. An engine that rounds at the same sites reproduces it (llama.cpp's
    rounding points, emulated, match llama.cpp to 0.004-1.6u); one that rounds at fewer sites has
    less error; the factor 2 covers rounding at other points of the same computation (llama.cpp
    lands at 0.5-1.1x the floor). Every bug in `_bugs` lands >50x outside
    (test_tolerance_rejects_bugs). Here: 19-29 u*RMS(logits), 0.2-0.4% of max|logit|.
    """
    return 2.0 * floor


def consistency_tolerance(floor: float) -> float:
    """Max |a - b| allowed between two engine runs of the same tokens (batched vs incremental,
    one chunk vs two): the float16 noise floor, half of `ref_tolerance`.

    Both runs do the same arithmetic up to float32 reassociation (BLAS blocking for 1 row vs 24),
    ~1e-7 relative. That would be the tolerance if nothing were stored in float16, but with ~10^4
    values rounded to f16 (KV cache; activations for F16 weights) some f32 difference straddles a
    rounding boundary and becomes one f16 ulp; from there on downstream values differ at the f16
    level and their roundings decorrelate, so two correct runs can differ by up to one f16
    realization, i.e. the noise floor, but not by more. llama.cpp itself differs between its own
    batched and incremental runs by 0.002-1.2 u*RMS(logits) with F32 weights and 4.2u with F16
    weights (floors 10-14u). A position, mask or cache bug moves logits by >100x this.
    """
    return floor


def argmax_check(ref: np.ndarray, got: np.ndarray, tol: float) -> tuple[int, list[int]]:
    """Check greedy choices agree; return (#positions compared strictly, positions that were ties).

    Where the reference's top-2 gap exceeds 2*tol, |got - ref| <= tol everywhere implies the same
    argmax, so it must be equal. Where the gap is smaller the two are a tie within tolerance, and
    the engine's choice must be one of the reference's near-best tokens.
    """
    ties = []
    for i in range(ref.shape[0]):
        r = ref[i]
        top2 = np.sort(r)[-2:]
        a = int(np.argmax(got[i]))
        if top2[1] - top2[0] > 2 * tol:
            assert a == int(np.argmax(r)), (
                f"position {i}: engine argmax {a}, reference {int(np.argmax(r))} "
                f"(reference gap {top2[1] - top2[0]:.4g} > 2*tol {2 * tol:.4g})"
            )
        else:
            ties.append(i)
            assert r[a] >= r.max() - 2 * tol, f"position {i}: engine argmax {a} not a near-tie"
    return ref.shape[0] - len(ties), ties


# ----------------------------------------------------------------------------------------------
# Test models
# ----------------------------------------------------------------------------------------------

CASES: dict[str, dict[str, Any]] = {
    # Qwen2: q/k/v biases, GQA 4:2, NeoX RoPE, Qwen's large rope base.
    "qwen2_gqa_neox": dict(arch="qwen2", n_head=4, n_head_kv=2, rope_base=1e6, seed=1),
    # LLaMA, plain multi-head attention, separate output matrix, normal (adjacent-pair) RoPE.
    "llama_output": dict(arch="llama", n_head=4, n_head_kv=4, seed=2),
    # LLaMA with the output tied to token_embd and GQA 8:2 (head_dim 8).
    "llama_tied_gqa": dict(arch="llama", n_head=8, n_head_kv=2, tied_output=True, seed=3),
    # LLaMA with linear RoPE scaling (positions divided by 4).
    "llama_rope_linear": dict(arch="llama", n_head=4, n_head_kv=2, rope_scale_linear=4.0, seed=4),
    # LLaMA with F16 weight matrices (norms stay F32, as llama.cpp's converter writes them).
    "llama_f16": dict(arch="llama", n_head=4, n_head_kv=2, weight_type="F16", seed=5),
}

N_TOKENS = 24
N_CTX = 64
MIN_STRICT_ARGMAX = 16  # positions (of 24) whose greedy choice must match exactly


def _tokens(hp: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(1000 + hp["seed"])
    return rng.integers(0, hp["n_vocab"], size=N_TOKENS).astype(np.int32)


class Case:
    def __init__(self, name: str, path, weights, hp, tokens, ref):
        self.name, self.path, self.w, self.hp, self.tokens, self.ref = name, path, weights, hp, tokens, ref
        self.floor = f16_noise_floor(weights, hp, tokens, ref)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> Case:
    name = request.param
    kw = dict(CASES[name])
    arch = kw.pop("arch")
    path = tmp_path_factory.mktemp("tiny") / f"{name}.gguf"
    weights = write_tiny_model(path, arch, **kw)
    hp = tiny_hparams(arch, **kw)
    tokens = _tokens(hp)
    return Case(name, path, weights, hp, tokens, reference_forward(weights, hp, tokens))


# ----------------------------------------------------------------------------------------------
# The reference itself: self-consistency, RoPE definition, tolerance validation
# ----------------------------------------------------------------------------------------------


def test_reference_is_causal_and_position_consistent(case: Case):
    """Row j of a full run equals the last row of a run on tokens[:j+1] (a real check of the mask:
    row j sees exactly tokens 0..j at positions 0..j), and changing token m leaves rows before m
    bit-identical and visibly moves every row from m on."""
    for j in (0, 1, 7, N_TOKENS // 2, N_TOKENS - 2):
        prefix = reference_forward(case.w, case.hp, case.tokens[: j + 1])
        np.testing.assert_allclose(prefix[-1], case.ref[j], rtol=0, atol=1e-12 * logit_scale(case.ref))
    changed = case.tokens.copy()
    m = N_TOKENS // 2
    changed[m] = (changed[m] + 1) % case.hp["n_vocab"]
    other = reference_forward(case.w, case.hp, changed)
    np.testing.assert_array_equal(other[:m], case.ref[:m])
    moved = np.abs(other[m:] - case.ref[m:]).max(axis=1)  # per row from m on
    assert moved.min() > 0.05 * logit_scale(case.ref), moved


def test_reference_logits_are_not_degenerate(case: Case):
    """Logits have an O(1) spread per position and differ across positions."""
    spread = case.ref.std(axis=1)
    assert spread.min() > 0.5, spread
    assert np.abs(np.diff(case.ref, axis=0)).max(axis=1).min() > 0.5


def test_rope_layouts_on_basis_vectors():
    """The two layouts, written out on unit vectors: pair k of "norm" is (2k, 2k+1), of "neox"
    (k, k + hd/2); each turns by pos * base^(-2k/hd) counterclockwise."""
    hd, base, p = 8, 10000.0, 5.0
    for k in range(hd // 2):
        ang = p * base ** (-2.0 * k / hd)
        e = np.zeros((1, 1, hd))
        e[0, 0, 2 * k] = 1.0
        r = rope(e, np.array([p]), base, "norm")[0, 0]
        want = np.zeros(hd)
        want[2 * k], want[2 * k + 1] = np.cos(ang), np.sin(ang)
        np.testing.assert_allclose(r, want, atol=1e-15)
        e = np.zeros((1, 1, hd))
        e[0, 0, k] = 1.0
        r = rope(e, np.array([p]), base, "neox")[0, 0]
        want = np.zeros(hd)
        want[k], want[k + hd // 2] = np.cos(ang), np.sin(ang)
        np.testing.assert_allclose(r, want, atol=1e-15)
    # Linear scaling: position p with factor f is position p/f unscaled.
    x = np.random.default_rng(0).standard_normal((3, 2, hd))
    np.testing.assert_allclose(
        rope(x, np.array([4.0, 8.0, 12.0]), base, "norm", pos_scale=4.0),
        rope(x, np.array([1.0, 2.0, 3.0]), base, "norm"),
        atol=1e-14,
    )


def test_rope_layouts_relation_and_relative_position():
    """NeoX on x equals "norm" on x with its halves interleaved (the permutation llama.cpp's
    converter applies to HF LLaMA q/k rows so that the normal layout reproduces HF's rotate_half);
    and q.k after RoPE depends only on the position difference."""
    rng = np.random.default_rng(1)
    hd, base = 16, 10000.0
    x = rng.standard_normal((5, 3, hd))
    pos = np.array([0, 1, 2, 7, 23])
    perm = np.empty(hd, dtype=int)
    perm[0::2], perm[1::2] = np.arange(hd // 2), np.arange(hd // 2, hd)  # interleave halves
    np.testing.assert_allclose(rope(x[..., perm], pos, base, "norm"), rope(x, pos, base, "neox")[..., perm],
                               atol=1e-13)
    for layout in ("norm", "neox"):
        q, k = rng.standard_normal((1, 1, hd)), rng.standard_normal((1, 1, hd))
        d1 = (rope(q, np.array([9]), base, layout) * rope(k, np.array([4]), base, layout)).sum()
        d2 = (rope(q, np.array([30]), base, layout) * rope(k, np.array([25]), base, layout)).sum()
        assert d1 == pytest.approx(d2, abs=1e-12)


def test_f16_noise_floor_is_sane(case: Case):
    """The measured float16 noise floor is what float16 rounding should give: more than one u of the
    logit RMS, less than the a priori worst case n_sites * u * max|logit|; and llama.cpp's own
    rounding points (a subset of the sites) give no more than it."""
    scale = logit_scale(case.ref)
    assert 1 * U16 * scale < case.floor < n_f16_roundings(case.hp) * U16 * np.abs(case.ref).max()
    emu = reference_forward(case.w, case.hp, case.tokens, f16_sites=llama_cpp_f16_sites(case.hp))
    assert np.abs(emu - case.ref).max() <= case.floor * 1.25


def test_argmax_check_is_not_vacuous(case: Case):
    """Most positions have a reference top-2 gap above 2*ref_tolerance, so the engine's greedy
    choice is checked strictly there (near-ties are allowed to go either way)."""
    tol = ref_tolerance(case.floor)
    gaps = np.array([np.diff(np.sort(r)[-2:])[0] for r in case.ref])
    assert (gaps > 2 * tol).sum() >= MIN_STRICT_ARGMAX, gaps


def _bugs(hp: dict[str, Any]) -> dict[str, dict[str, Any]]:
    other = "neox" if hp["rope_type"] == "norm" else "norm"
    bugs: dict[str, dict[str, Any]] = {
        "rope layout swapped": dict(rope_layout=other),
        # (a uniform shift of all positions is invisible: RoPE scores depend on differences only)
        "second chunk restarts at position 0": dict(positions=np.arange(N_TOKENS) % (N_TOKENS // 2)),
        "rope base 10000 assumed" if hp["rope_base"] != 10000.0 else "rope base 1e6 assumed":
            dict(rope_base=1e6 if hp["rope_base"] == 10000.0 else 10000.0),
        "no causal mask": dict(causal=False),
    }
    if hp["n_head"] != hp["n_head_kv"]:
        bugs["GQA heads mapped h % n_head_kv"] = dict(kv_head_of=lambda h, g, nkv: h % nkv)
    if hp["qkv_bias"]:
        bugs["q/k/v biases ignored"] = dict(use_bias=False)
    if hp["rope_scale_linear"]:
        bugs["linear rope scaling ignored"] = dict(rope_pos_scale=1.0)
        bugs["rope scaling multiplies positions"] = dict(rope_pos_scale=1.0 / hp["rope_scale_linear"])
    return bugs


def test_tolerance_rejects_bugs(case: Case):
    """Each deliberate bug moves some logit by more than 50x ref_tolerance (the tolerance is not
    so loose that these would pass)."""
    tol = ref_tolerance(case.floor)
    for name, kw in _bugs(case.hp).items():
        bad = reference_forward(case.w, case.hp, case.tokens, **kw)
        err = np.abs(bad - case.ref).max()
        assert err > 50 * tol, f"{case.name}: bug {name!r} only moves logits by {err:.3g} (tol {tol:.3g})"


def test_reference_matches_llama_cpp(case: Case):
    """When llama.cpp's Python binding is installed (the `test` extra), its logits on the same tiny
    GGUF file agree with the reference within ref_tolerance: validates the reference's conventions
    and the tiny file's layout against the real thing."""
    got = oracle.Llama(case.path, n_ctx=N_CTX).logits(case.tokens.tolist())[:N_TOKENS].astype(np.float64)
    tol = ref_tolerance(case.floor)
    err = np.abs(got - case.ref).max()
    assert err <= tol, f"llama.cpp vs reference: max |diff| {err:.3g} > tol {tol:.3g}"


# ----------------------------------------------------------------------------------------------
# The engine against the reference
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(case: Case):
    import camelid

    return camelid.load(str(case.path))


def _assert_close(got: np.ndarray, want: np.ndarray, tol: float, what: str):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite logits"
    err = np.abs(got.astype(np.float64) - want)
    i, j = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= tol, (
        f"{what}: max |diff| {err.max():.4g} > tol {tol:.4g} at position {i}, token {j} "
        f"(got {got[i, j]:.6g}, want {want[i, j]:.6g})"
    )


def test_engine_matches_reference(case: Case, model):
    """Teacher-forced logits over 24 tokens in one call equal the reference within ref_tolerance,
    the greedy choice agrees at every position, and the cache advances by the number of tokens."""
    cache = model.new_cache(N_CTX)
    assert cache.n_past == 0
    got = np.asarray(model.forward(case.tokens, cache))
    assert got.dtype == np.float32
    assert cache.n_past == N_TOKENS
    tol = ref_tolerance(case.floor)
    _assert_close(got, case.ref, tol, f"{case.name} engine vs reference")
    argmax_check(case.ref, got, tol)


def test_engine_incremental_equals_batched(case: Case, model):
    """Feeding tokens one at a time through the cache gives the logits of one batched call."""
    batched = np.asarray(model.forward(case.tokens, model.new_cache(N_CTX)), dtype=np.float64)
    cache = model.new_cache(N_CTX)
    rows = []
    for i, t in enumerate(case.tokens):
        out = np.asarray(model.forward(np.array([t], dtype=case.tokens.dtype), cache))
        assert out.shape == (1, case.hp["n_vocab"])
        assert cache.n_past == i + 1
        rows.append(out[0])
    inc = np.stack(rows).astype(np.float64)
    _assert_close(inc, batched, consistency_tolerance(case.floor), f"{case.name} incremental vs batched")
    _assert_close(inc, case.ref, ref_tolerance(case.floor), f"{case.name} incremental vs reference")


@pytest.mark.parametrize("split", [1, 9, N_TOKENS - 1])
def test_engine_two_chunk_prefill_equals_one(case: Case, model, split: int):
    """A prefill split in two chunks (the second continuing from cache.n_past) equals one chunk."""
    one = np.asarray(model.forward(case.tokens, model.new_cache(N_CTX)), dtype=np.float64)
    cache = model.new_cache(N_CTX)
    a = np.asarray(model.forward(case.tokens[:split], cache))
    assert cache.n_past == split
    b = np.asarray(model.forward(case.tokens[split:], cache))
    assert cache.n_past == N_TOKENS
    two = np.concatenate([a, b]).astype(np.float64)
    _assert_close(two, one, consistency_tolerance(case.floor), f"{case.name} split at {split} vs one chunk")
