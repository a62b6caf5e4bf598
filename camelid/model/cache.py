"""The key/value cache: float16 like llama.cpp's, one slab per layer, allocated once."""

from __future__ import annotations

import numpy as np


class KVCache:
    """Keys and values of every position processed so far, per layer.

    k, v: (n_layer, n_ctx, n_head_kv, head_dim) float16. `tokens` lists the token ids whose keys and
    values are held, so a new prompt can reuse the longest common prefix instead of recomputing it.
    """

    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int):
        self.n_ctx = n_ctx
        self.k = np.zeros((n_layer, n_ctx, n_head_kv, head_dim), dtype=np.float16)
        self.v = np.zeros((n_layer, n_ctx, n_head_kv, head_dim), dtype=np.float16)
        self.tokens: list[int] = []

    @property
    def n_past(self) -> int:
        """Number of positions held (the position of the next token)."""
        return len(self.tokens)

    @property
    def n_free(self) -> int:
        return self.n_ctx - len(self.tokens)

    def truncate(self, n: int) -> None:
        """Forget every position from n on (their slots are overwritten by later tokens)."""
        del self.tokens[n:]

    def clear(self) -> None:
        self.tokens.clear()

    def common_prefix(self, tokens) -> int:
        """Length of the longest prefix of `tokens` whose keys and values are already held."""
        n = 0
        for held, new in zip(self.tokens, tokens):
            if held != new:
                break
            n += 1
        return n

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v (n_tokens, n_head_kv, head_dim) for positions start.. of one layer."""
        self.k[layer, start:start + len(k)] = k
        self.v[layer, start:start + len(v)] = v
