"""The transformer's non-matmul operations, in NumPy, with llama.cpp's numerics.

Each op works on float32 and mirrors where llama.cpp rounds: the attention reads float16 keys and
values and (like ggml's f16 matmul) rounds the queries and the attention weights to float16 first.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (n, d) float32 -> x / sqrt(mean(x^2) + eps) * weight, rounded where ggml rounds.

    ggml squares in float32, sums in float64, and takes the mean, the square root and the scale in
    float32; matching it bit for bit matters because the next matmul quantizes this output to int8.
    """
    mean_sq = ((x * x).sum(axis=-1, dtype=np.float64) / x.shape[-1]).astype(np.float32)  # (n,)
    scale = np.float32(1.0) / np.sqrt(mean_sq + np.float32(eps))
    return (x * scale[:, None]) * weight


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """SwiGLU's elementwise part: silu(gate) * up, all (n, n_ff) float32."""
    return gate / (np.float32(1.0) + np.exp(-gate)) * up


class Rope:
    """Rotary position embedding for one model, with the angles computed as ggml computes them.

    ggml builds each position's angles in float32 by repeated multiplication, theta_{i+1} =
    theta_i * base^(-2/rope_dim) starting from theta_0 = position, then scales by 1/scale (linear
    scaling) and divides by freq_factor[i] (Llama 3.1's rope_freqs). The float32 rounding of that
    recurrence reaches about 1e-5 relative at the last pair; reproducing it keeps the rotated queries
    next to llama.cpp's, which matters because they are later rounded to float16.
    """

    def __init__(self, head_dim: int, rope_dim: int, base: float, scale: float, neox: bool, freq_factors: np.ndarray | None = None):
        self.head_dim = head_dim
        self.rope_dim = rope_dim
        self.neox = neox
        self.theta_scale = np.float32(base) ** np.float32(-2.0 / rope_dim)  # powf(base, -2/n_dims)
        self.freq_scale = np.float32(1.0 / scale)
        self.freq_factors = None if freq_factors is None else freq_factors.astype(np.float32)

    def angles(self, positions: np.ndarray) -> np.ndarray:
        """(n,) positions -> (n, rope_dim/2) float32 angles."""
        half = self.rope_dim // 2
        theta = positions.astype(np.float32)
        out = np.empty((len(positions), half), dtype=np.float32)
        for i in range(half):
            out[:, i] = theta
            theta = theta * self.theta_scale
        if self.freq_factors is not None:
            out /= self.freq_factors[None, :]
        return out * self.freq_scale

    def apply(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x (n, n_heads, head_dim) float32 rotated in place by positions (n,); returns x."""
        angles = self.angles(positions)
        cos = np.cos(angles.astype(np.float64)).astype(np.float32)[:, None, :]  # (n, 1, rope_dim/2), as cosf
        sin = np.sin(angles.astype(np.float64)).astype(np.float32)[:, None, :]
        half = self.rope_dim // 2
        if self.neox:
            a = x[..., :half].copy()
            b = x[..., half:self.rope_dim].copy()
            x[..., :half] = a * cos - b * sin
            x[..., half:self.rope_dim] = a * sin + b * cos
        else:
            a = x[..., 0:self.rope_dim:2].copy()
            b = x[..., 1:self.rope_dim:2].copy()
            x[..., 0:self.rope_dim:2] = a * cos - b * sin
            x[..., 1:self.rope_dim:2] = a * sin + b * cos
        return x


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """Causal grouped-query attention.

    q (n, n_head, d) float32 for positions start..start+n-1; k, v (T, n_head_kv, d) float16 for
    positions 0..T-1 with T = start + n. Query head h reads key/value head h // (n_head / n_head_kv).
    Returns (n, n_head * d) float32.
    """
    n, n_head, d = q.shape
    t, n_kv, _ = k.shape
    group = n_head // n_kv
    q16 = q.astype(np.float16).astype(np.float32).reshape(n, n_kv, group, d).transpose(1, 2, 0, 3)  # (n_kv, g, n, d)
    kt = k.astype(np.float32).transpose(1, 2, 0)[:, None]  # (n_kv, 1, d, T)
    scores = (q16 @ kt) * np.float32(1.0 / np.sqrt(d))  # (n_kv, g, n, T)
    if n > 1:
        future = np.arange(t)[None, :] > (start + np.arange(n))[:, None]  # (n, T)
        scores[..., future] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= (1.0 / scores.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
    probs16 = scores.astype(np.float16).astype(np.float32)
    out = probs16 @ v.astype(np.float32).transpose(1, 0, 2)[:, None]  # (n_kv, g, n, d)
    return out.transpose(2, 0, 1, 3).reshape(n, n_head * d)
