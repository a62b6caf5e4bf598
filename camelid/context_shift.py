"""Context shifting: make room in a full KV cache without recomputing what it still holds.

RoPE rotates each key by an angle proportional to its position, and rotations add: a key rotated for
position p and then by -d is the key for position p - d. So dropping d positions from the middle of
the cache only needs the later keys rotated once more by -d and moved down; values carry no position
and just move. This is llama.cpp's K-shift (llama_kv_cache_seq_rm + seq_add, since late 2023): the
keys are widened from float16, rotated in float32 and rounded back to float16.

Which positions to drop is a policy. llama.cpp drops the older half of everything after the kept
prompt (`halving_discard`). In a conversation that cuts turns in two, so `turn_discard` drops whole
turns instead and never touches the current one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from camelid.model.cache import KVCache


def shift_context(network, cache: KVCache, start: int, stop: int) -> None:
    """Drop positions start..stop-1 from the cache; later positions move down, keys re-rotated.

    `network` is the LlamaModel whose `ropes_for(cache.n_ctx)` (one per layer) wrote the keys. Afterwards
    the cache holds exactly what it would hold had the kept tokens been processed at their new positions
    (up to float16 rounding of the re-rotated keys), except that their keys and values were computed
    while the dropped tokens were still in view, as with llama.cpp. The keys are turned without the
    RoPE's attn_factor (Phi-3 LongRoPE): llama.cpp's K-shift applies it again, scaling the moved keys
    by it at every shift.
    """
    n_drop = stop - start
    if n_drop <= 0:
        return
    n_moved = cache.n_past - stop
    cache.remove(start, stop)
    if n_moved == 0:
        return
    positions = np.full(n_moved, -n_drop, dtype=np.int64)  # every moved key turns back by n_drop
    ropes = network.ropes_for(cache.n_ctx)
    for layer in range(cache.k.shape[0]):
        rope = ropes[layer].rotation_only()  # windowed layers (gemma3) rotate with their own base
        k = cache.k[layer, start:start + n_moved].astype(np.float32)  # (n_moved, n_head_kv, head_dim)
        rope.apply(k, positions, rope.cos_sin(positions))
        cache.k[layer, start:start + n_moved] = k  # rounded to float16, as ggml's in-place rope on the f16 cache


def halving_discard(n_past: int, n_keep: int) -> int:
    """llama.cpp's amount to drop when the context is full: half of what follows the kept prefix."""
    return max(0, (n_past - n_keep) // 2)


def turn_discard(n_keep: int, turn_starts: Sequence[int], current_turn: int, n_past: int, n_needed: int) -> int:
    """How many positions after n_keep to drop so that whole turns go, oldest first.

    turn_starts are the cache positions where turns begin (ascending); the current turn, which
    begins at `current_turn`, is never touched. Drops up to the first turn boundary that removes at
    least half of what follows the kept prefix and at least n_needed positions; if no boundary
    reaches half, as much as frees n_needed; returns 0 when even dropping every earlier turn
    does not free n_needed positions.
    """
    target = max(n_needed, halving_discard(n_past, n_keep))
    boundaries = [b for b in turn_starts if n_keep < b <= current_turn]
    for b in boundaries:
        if b - n_keep >= target:
            return b - n_keep
    if boundaries and boundaries[-1] - n_keep >= n_needed:
        return boundaries[-1] - n_keep
    return 0
