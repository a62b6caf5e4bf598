"""The key/value cache: float16 like llama.cpp's, one slab per layer, allocated once."""

from __future__ import annotations

import numpy as np

from camelid.errors import CamelidError


class KVCache:
    """Keys and values of every position processed so far, per layer.

    k, v: (n_layer, n_ctx, n_head_kv, head_dim) float16. `tokens` lists the token ids whose keys and
    values are held, so a new prompt can reuse the longest common prefix instead of recomputing it.
    """

    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int):
        self.n_ctx = n_ctx
        try:
            self.k = np.zeros((n_layer, n_ctx, n_head_kv, head_dim), dtype=np.float16)
            self.v = np.zeros((n_layer, n_ctx, n_head_kv, head_dim), dtype=np.float16)
        except (MemoryError, ValueError):  # ValueError: more bytes than an array can have
            need = 4 * n_layer * n_ctx * n_head_kv * head_dim
            raise CamelidError(f"the key/value cache for {n_ctx} tokens needs {need / 2**30:.1f} GiB, more than can be "
                               "allocated; use a smaller context (-c) or a smaller model.") from None
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

    def remove(self, start: int, stop: int) -> None:
        """Forget positions start..stop-1 and move the later ones down by stop - start.

        Keys and values are moved as they are: the keys keep the RoPE rotation of their old
        positions, so a caller that moves them must rotate them by -(stop - start) as well
        (camelid.context_shift.shift_context does both).
        """
        n_past = self.n_past
        if not 0 <= start <= stop <= n_past:
            raise ValueError(f"cannot remove positions {start}..{stop} of {n_past}")
        n_moved = n_past - stop
        self.k[:, start:start + n_moved] = self.k[:, stop:n_past]  # numpy copies overlapping slices safely
        self.v[:, start:start + n_moved] = self.v[:, stop:n_past]
        del self.tokens[start:stop]

    def common_prefix(self, tokens) -> int:
        """Length of the longest prefix of `tokens` whose keys and values are already held."""
        n = 0
        for held, new in zip(self.tokens, tokens):
            if held != new:
                break
            n += 1
        return n

    def keep_prefix(self, tokens, n: int) -> None:
        """Hold exactly the first n of `tokens`, which must be within their common prefix."""
        if n > self.common_prefix(tokens):
            raise ValueError(f"the cache does not hold the first {n} of these tokens")
        self.truncate(n)

    def prepare(self, n: int) -> None:
        """Make room for n more positions (the forward pass checks that they fit)."""

    def commit(self, tokens) -> None:
        """Record the tokens whose keys and values the forward pass just stored."""
        self.tokens.extend(int(t) for t in tokens)

    def view(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray, None]:
        """Keys and values (end, n_head_kv, head_dim) of positions 0..end-1 of one layer, and the rows
        argument of camelid.model.ops.attention (None: position t is row t)."""
        return self.k[layer, :end], self.v[layer, :end], None

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v (n_tokens, n_head_kv, head_dim) for positions start.. of one layer."""
        self.k[layer, start:start + len(k)] = k
        self.v[layer, start:start + len(v)] = v
