"""Context shifting: dropping cache positions and re-rotating the kept keys instead of recomputing them.

Oracles: llama.cpp's own K-shift (llama-cpp-python: llama_memory_seq_rm + llama_memory_seq_add, then a
decode) on the default SmolLM2 model, and, on one-layer tiny models whose keys and values depend only
on their token and position, a fresh forward of the kept tokens at their new positions. A cache moved
without the re-rotation serves as the negative control: it must fail both comparisons.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracle
from oracle.mode import assert_logits_match
from tiny_gguf import write_tiny_model

import camelid
from camelid.context_shift import halving_discard, shift_context, turn_discard
from camelid.model.cache import KVCache

TEXT = (
    "The history of the Roman Empire began when a small town on the Tiber grew into a city, then a republic, "
    "and finally an empire that ruled the Mediterranean for centuries. Its roads, laws and language shaped Europe."
)


def test_cache_remove_moves_later_positions_down():
    cache = KVCache(n_layer=2, n_ctx=10, n_head_kv=1, head_dim=2)
    for pos in range(8):
        cache.store(0, pos, np.full((1, 1, 2), pos), np.full((1, 1, 2), 10 + pos))
        cache.tokens.append(100 + pos)
    cache.remove(2, 5)
    assert cache.tokens == [100, 101, 105, 106, 107]
    assert cache.k[0, :5, 0, 0].tolist() == [0, 1, 5, 6, 7]
    assert cache.v[0, :5, 0, 0].tolist() == [10, 11, 15, 16, 17]
    with pytest.raises(ValueError):
        cache.remove(3, 9)


def test_halving_is_llama_cpps_amount():
    # llama.cpp main: n_left = n_past - n_keep, drops n_left / 2
    assert halving_discard(200, 18) == 91
    assert halving_discard(200, 0) == 100
    assert halving_discard(10, 10) == 0


def test_turn_discard_drops_whole_turns_and_never_the_current_one():
    keep = 18
    turns = [18, 60, 110, 150]  # each a turn start; the current turn starts at 150
    # half of 200 - 18 is 91: the first boundary at or past 18 + 91 is 110
    assert turn_discard(keep, turns, current_turn=150, n_past=200, n_needed=1) == 110 - keep
    # no boundary reaches half: drop every earlier turn (up to the current one)
    assert turn_discard(keep, [18, 40, 60], current_turn=60, n_past=200, n_needed=1) == 60 - keep
    # the current turn alone fills the context: nothing may go
    assert turn_discard(keep, [18], current_turn=18, n_past=200, n_needed=1) == 0
    # more is needed than the earlier turns hold
    assert turn_discard(keep, [18, 40], current_turn=40, n_past=200, n_needed=30) == 0


@pytest.fixture(scope="module")
def smollm2():
    from model_files import smollm2_path

    path = smollm2_path()
    return str(path), camelid.load(path, n_ctx=256, show_progress=False)


def _camelid_after_shift(model, tokens, keep, drop, next_token, rotate=True):
    cache = model.new_cache()
    model.forward(tokens, cache)
    if rotate:
        shift_context(model.network, cache, keep, keep + drop)
    else:
        cache.remove(keep, keep + drop)
    assert cache.tokens == tokens[:keep] + tokens[keep + drop:]
    return model.forward([next_token], cache)[-1]


def test_shift_matches_llama_cpp_k_shift(smollm2):
    path, model = smollm2
    tokens = model.tokenize(TEXT, add_special=True)
    keep, drop = 5, 20
    next_token = model.tokenize(" The", add_special=False)[0]
    expected = oracle.Llama(path, n_ctx=256).logits_after_shift(tokens, keep, drop, next_token)

    got = _camelid_after_shift(model, tokens, keep, drop, next_token)
    unrotated = _camelid_after_shift(model, tokens, keep, drop, next_token, rotate=False)
    # the shift is llama.cpp's to the bit in exact mode, within its noise floor elsewhere
    assert_logits_match(got[None], expected[None], "after the K-shift")
    assert int(np.argmax(got)) == int(np.argmax(expected))
    assert np.abs(unrotated - expected).max() > 1.0  # the control: moving keys without rotating them is wrong


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # RoPE on adjacent pairs, and NeoX halves
def test_one_layer_shift_equals_fresh_forward_at_new_positions(tmp_path, arch):
    path = tmp_path / f"{arch}.gguf"
    write_tiny_model(path, arch, n_layer=1, n_ctx_train=128, seed=3)
    model = camelid.load(path, n_ctx=128, show_progress=False)
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(0, model.network.n_vocab, size=90)]
    keep, drop, next_token = 7, 33, 42
    got = _camelid_after_shift(model, tokens, keep, drop, next_token)

    fresh_cache = model.new_cache()
    fresh = model.forward(tokens[:keep] + tokens[keep + drop:] + [next_token], fresh_cache)[-1]
    shifted = model.new_cache()
    model.forward(tokens, shifted)
    shift_context(model.network, shifted, keep, keep + drop)
    n = shifted.n_past
    # keys: rotated twice (old position, then -drop) instead of once, each time rounded to float16
    k_fresh = fresh_cache.k[0, :n].astype(np.float32)
    k_shift = shifted.k[0, :n].astype(np.float32)
    np.testing.assert_allclose(k_shift, k_fresh, rtol=2e-3, atol=2e-3 * np.abs(k_fresh).max())
    np.testing.assert_array_equal(shifted.v[0, :n], fresh_cache.v[0, :n])
    # "within float16 rounding": the same fresh cache with every key moved by one float16 ulp at
    # random (up, down or not) changes the logits by about as much as the shift does (measured
    # 0.006-0.015 against 0.003-0.017 for the shift, logits of magnitude ~9)
    noisy_cache = model.new_cache()
    model.forward(tokens[:keep] + tokens[keep + drop:], noisy_cache)
    bits = noisy_cache.k[0, :n].view(np.uint16)
    bits += np.random.default_rng(1).integers(-1, 2, size=bits.shape).astype(np.uint16)
    ulp_noise = np.abs(model.forward([next_token], noisy_cache)[-1] - fresh).max()
    error = np.abs(got - fresh).max()
    assert error <= 4 * ulp_noise

    unrotated = _camelid_after_shift(model, tokens, keep, drop, next_token, rotate=False)
    assert np.abs(unrotated - fresh).max() > 100 * error
