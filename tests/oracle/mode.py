"""Exact or tolerance: how closely camelid must follow the llama.cpp oracle on this machine.

One capability check, `mode()`, decides for the whole run:

- **Exact** where camelid runs its AVX-512 VNNI kernels (with or without AMX tiles for prompts:
  `amx.kernel_path()` "vnni" or "amx", the same sums bit for bit) and the oracle
  was built with the AVX-512 VNNI flag set (tests/oracle/install.py). camelid reproduces that build's
  arithmetic operation by operation (int8 activation blocks, each dot product's SIMD lane order,
  glibc's cosf/sinf in RoPE, ggml's exp in softmax and SiLU, the float16 KV cache), so every kernel
  output and every logit must have the same float32 bits, and greedy decoding the same tokens.
- **Tolerance** everywhere else: an AVX2-only CPU, an oracle built for AVX2 or the x86-64 baseline,
  or camelid forced to another path with CAMELID_SIMD. ggml then sums in 8-lane (or scalar) order
  while camelid keeps its 16-lane order, so float32 sums round differently. What is relaxed, and why:

  KERNELS: each product must equal ggml's within `kernel_bound`, the float64 rounding bound that
  both engines' sums obey (`bound` in tests/test_kernels.py) taken twice. The float64 bound of every
  kernel against an exact float64 product runs in both modes, with or without ggml.

  LOGITS of a real model (SmolLM2): within LOGIT_TOLERANCE and the same top-1 token at MIN_TOP1 of
  positions. Its residual stream carries activations of ~25000 and each matmul input is rounded to
  int8, so one ulp of difference flips an int8 code and grows to about one logit: llama.cpp's own
  flash-attention path differs from its default path by 1.1-1.4 logits, with top-1 agreement of
  96.9-100%. The tolerance is that noise floor with margin.

  LOGITS of the tiny random test models (tests/test_exact_forward.py): within TINY_LOGIT_TOLERANCE
  times the logits' spread (their standard deviation, about 5.7). Against the AVX2 build most weight
  types still agree to the bit; the largest difference measured was 0.048 of the spread (Q6_K, whose
  vec_dot sums in another order), so the tolerance is three times that.

  GREEDY tokens: identical up to the first position where the two differ; there, camelid's token
  must be a near-tie in llama.cpp's own logits (within LOGIT_TOLERANCE of its best), and the
  comparison ends (after that the two continue different texts).

A planted bug is far outside every tolerance: a swapped RoPE sign or a changed rounding moves
logits by tens and kernel outputs by whole int8 steps, many times kernel_bound.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

LOGIT_TOLERANCE = 2.0
MIN_TOP1 = 0.95
TINY_LOGIT_TOLERANCE = 0.15


@dataclass(frozen=True)
class Mode:
    exact: bool
    camelid_simd: str  # amx.kernel_path() of this process: "amx", "vnni", ..., "none" for the float32 kernels
    oracle_build: str  # the oracle's flag set, as tests/oracle/install.py names it, or "not installed"

    def describe(self) -> str:
        if self.exact:
            return (f"exact mode: camelid {self.camelid_simd} kernels, llama.cpp oracle {self.oracle_build} build: "
                    "bit-identical kernels and logits, identical greedy tokens")
        return (f"tolerance mode: camelid {self.camelid_simd} kernels, llama.cpp oracle {self.oracle_build} build: "
                f"kernels within 2x their float64 rounding bound, model logits within {LOGIT_TOLERANCE} "
                f"(top-1 >= {MIN_TOP1:.0%}), tiny-model logits within {TINY_LOGIT_TOLERANCE} of their spread, "
                "greedy tokens identical up to a near-tie (see tests/oracle/mode.py)")


def build_name(build: dict[str, bool]) -> str:
    """The install.py flag-set name of a ggml build from its ggml_cpu_has_* answers."""
    if build.get("avx512") and build.get("avx512_vnni"):
        return "avx512-vnni" + "".join(f"-{n}" for n in ("vbmi", "bf16") if build.get(f"avx512_{n}")) + (
            "-amx" if build.get("amx_int8") else "")
    if build.get("avx2") and build.get("fma") and build.get("f16c"):
        return "avx2"
    return "x86-64" if "avx" in build else "other"


@functools.cache
def mode() -> Mode:
    """The mode of this run (asks the oracle's worker what its ggml was built for)."""
    import importlib.util

    from camelid.cpu import amx

    camelid_simd = amx.kernel_path()
    if importlib.util.find_spec("llama_cpp") is None:
        return Mode(False, camelid_simd, "not installed")
    import oracle

    build = oracle.call("ggml.build")
    name = build_name(build)
    exact = camelid_simd in ("vnni", "amx") and name.startswith("avx512-vnni") and not build.get("amx_int8")
    return Mode(exact, camelid_simd, name)


def exact() -> bool:
    return mode().exact


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_kernel_matches(y: np.ndarray, expected: np.ndarray, bound: np.ndarray, what: str) -> None:
    """A kernel's output against ggml's: the same bits (exact), or within 2 * bound (tolerance)."""
    if exact():
        mismatch = np.argwhere(_bits(y) != _bits(expected))
        assert mismatch.size == 0, (
            f"{what}: {len(mismatch)} of {y.size} outputs differ from ggml, first at {tuple(mismatch[0])}: "
            f"{y[tuple(mismatch[0])]!r} vs {expected[tuple(mismatch[0])]!r}")
    else:
        excess = np.abs(y.astype(np.float64) - expected) - 2 * bound
        assert np.all(excess <= 0), f"{what}: ggml differs beyond 2x the rounding bound at {np.argmax(excess)}"


def assert_logits_match(ours: np.ndarray, ref: np.ndarray, what: str, tiny: bool = False) -> None:
    """Logits against llama.cpp's: the same bits (exact); else within the model's tolerance."""
    if exact():
        assert np.array_equal(_bits(ours), _bits(ref)), f"{what}: max diff {np.abs(ours - ref).max()}"
        return
    diff = float(np.abs(ours - ref).max())
    if tiny:
        limit = TINY_LOGIT_TOLERANCE * float(ref.std())
        assert diff <= limit, f"{what}: max diff {diff:.4g} > {limit:.4g} ({TINY_LOGIT_TOLERANCE} x spread)"
        return
    top1 = float(np.mean(ours.reshape(-1, ours.shape[-1]).argmax(-1) == ref.reshape(-1, ref.shape[-1]).argmax(-1)))
    assert top1 >= MIN_TOP1, f"{what}: top-1 agreement {top1:.3f}, max logit diff {diff:.4f}"
    assert diff <= LOGIT_TOLERANCE, f"{what}: max logit diff {diff:.4f} (top-1 agreement {top1:.3f})"


def assert_greedy_matches(ours: list[int], ref: list[int], ref_logits: np.ndarray, what: str = "greedy") -> None:
    """camelid's greedy tokens against llama.cpp's (ref, chosen from ref_logits rows)."""
    if exact():
        assert ours == ref, f"{what}: ours {ours} vs llama.cpp {ref}"
        return
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            row = ref_logits[i]
            gap = float(row[b] - row[a])
            assert gap <= LOGIT_TOLERANCE, (f"{what}: token {i} is {a} where llama.cpp chose {b} by a margin of "
                                            f"{gap:.3f} logits (more than {LOGIT_TOLERANCE}, not a near-tie)")
            return
    assert len(ours) == len(ref), f"{what}: {len(ours)} tokens, llama.cpp {len(ref)}"


def camelid_greedy(model, prompt: list[int], n: int, stop_at_eog: bool = False) -> list[int]:
    """camelid's greedy continuation (argmax of each step's logits), the counterpart of Llama.greedy."""
    cache = model.new_cache()
    logits = model.forward(prompt, cache, last_only=True)[-1]
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(logits))
        if stop_at_eog and token in model.tokenizer.eog_ids:
            break
        out.append(token)
        logits = model.forward([token], cache, last_only=True)[-1]
    return out
