"""Tests for camelid.sampling: each filter alone on constructed logits, then the seeded chain."""

import dataclasses
import math

import numpy as np
import pytest

from camelid.errors import CamelidError
from camelid.sampling import (
    Sampler,
    SamplingParams,
    apply_penalties,
    apply_temperature,
    min_p_filter,
    softmax,
    top_k_filter,
    top_p_filter,
)

# Upper 0.1% points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}

NO_FILTERS = dict(top_k=0, top_p=1.0, min_p=0.0)


def kept(x):
    return set(np.flatnonzero(np.isfinite(x)).tolist())


def log_probs(*p):
    return np.log(np.array(p, dtype=np.float64)).astype(np.float32)


def draw_counts(sampler, logits, n, history=()):
    counts = np.zeros(logits.size, dtype=np.int64)
    for _ in range(n):
        counts[sampler(logits, history)] += 1
    return counts


def chi_square(counts, probs):
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a token the filters removed"
    expected = counts.sum() * probs[support]
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


# ---- SamplingParams ----------------------------------------------------------------------------------


def test_defaults_follow_llama_cpp():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.95, 0.05)
    assert (p.repeat_penalty, p.repeat_last_n, p.presence_penalty, p.frequency_penalty, p.seed) == (1.0, 64, 0.0, 0.0, None)
    assert not p.greedy and SamplingParams(temperature=0).greedy and SamplingParams(temperature=-1.0).greedy


def test_params_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().temperature = 1.0


@pytest.mark.parametrize("kwargs", [
    dict(top_p=0.0), dict(top_p=-0.1), dict(top_p=1.5),
    dict(min_p=-0.01), dict(min_p=1.5),
    dict(repeat_penalty=0.0), dict(repeat_penalty=-1.1),
    dict(repeat_last_n=-2), dict(repeat_last_n=1.5),
    dict(temperature=float("nan")), dict(temperature="hot"), dict(temperature=None),
    dict(top_k=2.5), dict(top_k=True),
    dict(presence_penalty=float("inf")), dict(frequency_penalty="0.1"),
    dict(seed=-1), dict(seed=1.5), dict(seed="42"),
])
def test_invalid_params_raise(kwargs):
    with pytest.raises(CamelidError) as e:
        SamplingParams(**kwargs)
    assert next(iter(kwargs)) in str(e.value)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-1.0), dict(temperature=0), dict(top_k=-1), dict(top_k=0), dict(top_p=1.0), dict(min_p=0.0),
    dict(min_p=1.0), dict(repeat_last_n=-1), dict(repeat_last_n=0), dict(seed=0), dict(seed=np.int64(7)),
    dict(presence_penalty=-0.5), dict(frequency_penalty=2.0),
])
def test_valid_edge_params_accepted(kwargs):
    SamplingParams(**kwargs)


# ---- penalties ---------------------------------------------------------------------------------------


def test_repeat_penalty_divides_positive_multiplies_negative_in_window_only():
    x = np.array([2.0, -2.0, 1.0, -1.0, 0.5, 3.0], dtype=np.float32)
    history = [5, 3, 0, 1, 4]  # window of 3 is [0, 1, 4]; 5 and 3 are outside it
    out = apply_penalties(x, history, repeat_penalty=1.5, last_n=3)
    np.testing.assert_allclose(out, [2.0 / 1.5, -2.0 * 1.5, 1.0, -1.0, 0.5 / 1.5, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(x, [2.0, -2.0, 1.0, -1.0, 0.5, 3.0])  # input untouched


def test_repeat_penalty_counts_each_token_once_and_window_sizes():
    x = np.array([2.0, 1.0, -1.0], dtype=np.float32)
    np.testing.assert_allclose(apply_penalties(x, [0, 0, 0], repeat_penalty=2.0), [1.0, 1.0, -1.0])
    assert np.array_equal(apply_penalties(x, [0, 1, 2], repeat_penalty=2.0, last_n=0), x)
    whole = apply_penalties(x, [2] + [0] * 100, repeat_penalty=2.0, last_n=-1)
    np.testing.assert_allclose(whole, [1.0, 1.0, -2.0])
    recent = apply_penalties(x, [2] + [0] * 100, repeat_penalty=2.0, last_n=64)
    np.testing.assert_allclose(recent, [1.0, 1.0, -1.0])
    assert np.array_equal(apply_penalties(x, [], repeat_penalty=2.0), x)


def test_frequency_and_presence_penalties_subtract():
    x = np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)
    out = apply_penalties(x, [2, 2, 2, 0], frequency_penalty=0.5, presence_penalty=0.25)
    np.testing.assert_allclose(out, [1.0 - 0.5 - 0.25, 1.0, 1.0 - 3 * 0.5 - 0.25, 1.0], rtol=1e-6)


def test_repeat_then_frequency_presence():
    x = np.array([3.0, -3.0], dtype=np.float32)
    out = apply_penalties(x, [0, 1, 1], repeat_penalty=1.5, frequency_penalty=0.1, presence_penalty=0.2)
    np.testing.assert_allclose(out, [3.0 / 1.5 - 0.1 - 0.2, -3.0 * 1.5 - 2 * 0.1 - 0.2], rtol=1e-6)


def test_history_outside_vocabulary_is_an_error():
    with pytest.raises(CamelidError, match="outside the vocabulary"):
        apply_penalties(np.zeros(4, dtype=np.float32), [1, 9], repeat_penalty=1.1)


# ---- top-k, top-p, min-p, temperature ---------------------------------------------------------------


def test_top_k_keeps_exactly_k_highest():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000).astype(np.float32)
    for k in (1, 7, 40, 4999):
        out = top_k_filter(x, k)
        assert kept(out) == set(np.argsort(-x, kind="stable")[:k].tolist())
        np.testing.assert_array_equal(out[np.isfinite(out)], x[np.isfinite(out)])
    assert np.array_equal(top_k_filter(x, 0), x) and np.array_equal(top_k_filter(x, -1), x)
    assert np.array_equal(top_k_filter(x, 5000), x) and np.array_equal(top_k_filter(x, 10**6), x)


def test_top_k_ties_go_to_lower_token_ids():
    x = np.array([1.0, 3.0, 0.0, 3.0, 2.0, 3.0], dtype=np.float32)
    assert kept(top_k_filter(x, 1)) == {1}
    assert kept(top_k_filter(x, 2)) == {1, 3}
    assert kept(top_k_filter(x, 4)) == {1, 3, 5, 4}
    big = np.zeros(3000, dtype=np.float32)
    big[[10, 2000]] = 1.0
    assert kept(top_k_filter(big, 5)) == {10, 2000, 0, 1, 2}


@pytest.mark.parametrize("kind", ["normal", "few values", "sorted", "reversed"])
def test_top_k_on_big_vocabularies_matches_a_stable_sort(kind):
    # big enough for the sampled threshold (every 64th logit), with ties and adversarial orders
    rng = np.random.default_rng(3)
    x = rng.standard_normal(151936).astype(np.float32)
    if kind == "few values":
        x = rng.integers(-3, 3, x.size).astype(np.float32)
    elif kind == "sorted":
        x = np.sort(x)
    elif kind == "reversed":
        x = np.sort(x)[::-1].copy()
    for k in (1, 40, 64, 1000, 3000):
        assert kept(top_k_filter(x, k)) == set(np.argsort(-x, kind="stable")[:k].tolist()), k


def test_nan_logits_are_no_candidates():
    x = np.array([0.0, np.nan, 1.0, np.nan, 0.5], dtype=np.float32)
    assert Sampler(SamplingParams(temperature=0))(x, []) == 2
    assert Sampler(SamplingParams(seed=0, top_k=2))(x, []) in (2, 4)
    with pytest.raises(CamelidError, match="no token to sample"):
        Sampler(SamplingParams(seed=0))(np.full(4, np.nan, np.float32), [])


def test_top_p_keeps_smallest_prefix_reaching_p():
    probs = [0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.02]
    perm = [3, 6, 0, 5, 1, 4, 2]  # token perm[i] gets probs[i]
    x = np.empty(7, dtype=np.float32)
    x[perm] = log_probs(*probs)
    for p, n in [(0.01, 1), (0.40 - 1e-3, 1), (0.41, 2), (0.75, 3), (0.85, 4), (0.999, 7)]:
        assert kept(top_p_filter(x, p)) == set(perm[:n]), p
    assert np.array_equal(top_p_filter(x, 1.0), x)
    with pytest.raises(CamelidError):
        top_p_filter(x, 0.0)


def test_top_p_always_keeps_one_and_breaks_ties_by_id():
    x = np.array([5.0, 50.0, -3.0], dtype=np.float32)
    assert kept(top_p_filter(x, 1e-9)) == {1}
    flat = np.zeros(4, dtype=np.float32)
    assert kept(top_p_filter(flat, 0.5)) == {0, 1}
    assert kept(top_p_filter(flat, 0.6)) == {0, 1, 2}


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])  # flat to peaked: exercises the partial-sort probe and the full sort
def test_top_p_matches_a_brute_force_reference_on_a_big_vocab(scale):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(20000) * scale).astype(np.float32)
    x[rng.integers(0, 20000, 300)] = x[7]  # ties
    for p in (0.1, 0.5, 0.9, 0.95):
        order = np.argsort(-x, kind="stable")
        probs = softmax(x)[order]
        n = int(np.searchsorted(np.cumsum(probs), p)) + 1
        assert kept(top_p_filter(x, p)) == set(order[:n].tolist()), p


def test_min_p_removes_tokens_below_fraction_of_max():
    x = log_probs(0.04, 0.5, 0.2, 0.03, 0.15, 0.06, 0.02)
    assert kept(min_p_filter(x, 0.1)) == {1, 2, 4, 5}  # p >= 0.05
    assert kept(min_p_filter(x, 0.35)) == {1, 2}  # p >= 0.175
    assert kept(min_p_filter(x, 1.0)) == {1}
    assert np.array_equal(min_p_filter(x, 0.0), x)
    with pytest.raises(CamelidError):
        min_p_filter(x, 1.5)


def test_temperature_scales_logits():
    x = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    np.testing.assert_allclose(apply_temperature(x, 0.5), [2.0, -4.0, 1.0])
    with pytest.raises(CamelidError):
        apply_temperature(x, 0.0)


def test_filters_return_new_arrays_of_same_dtype():
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    before = x.copy()
    for out in (top_k_filter(x, 2), top_p_filter(x, 0.5), min_p_filter(x, 0.5), apply_temperature(x, 2.0),
                apply_penalties(x, [0], repeat_penalty=2.0), top_k_filter(x, 0)):
        assert out.dtype == np.float32 and out is not x
    np.testing.assert_array_equal(x, before)


# ---- the Sampler ----------------------------------------------------------------------------------------


def test_same_seed_same_draws_different_seed_different_draws():
    logits = np.random.default_rng(2).standard_normal(1000).astype(np.float32)

    def run(seed):
        sampler, history = Sampler(SamplingParams(seed=seed, top_k=0, top_p=1.0, min_p=0.0, temperature=1.5,
                                                  repeat_penalty=1.1)), []
        for _ in range(200):
            history.append(sampler(logits, history))
        return history

    first = run(1234)
    assert run(1234) == first
    assert run(1235) != first
    assert len(set(first)) > 20  # really random, not stuck on one token


def test_reseed_restarts_the_stream():
    logits = np.zeros(50, dtype=np.float32)
    sampler = Sampler(SamplingParams(seed=5, **NO_FILTERS))
    a = [sampler(logits) for _ in range(30)]
    sampler.reseed(5)
    assert [sampler(logits) for _ in range(30)] == a


def test_greedy_is_argmax_after_penalties_and_uses_no_randomness():
    x = np.array([0.1, 2.0, 1.9, 2.0, -1.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, seed=3))
    state = sampler.rng.bit_generator.state
    assert sampler(x, []) == 1  # tie between 1 and 3: lower id
    greedy_penalized = Sampler(SamplingParams(temperature=-1.0, repeat_penalty=1.2))
    assert greedy_penalized(x, [1, 3]) == 2
    assert sampler.rng.bit_generator.state == state


def test_sampler_does_not_modify_logits():
    x = np.random.default_rng(4).standard_normal(300).astype(np.float32)
    before = x.copy()
    sampler = Sampler(SamplingParams(seed=1, repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5))
    for _ in range(5):
        sampler(x, [1, 2, 3, 2])
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.8])
def test_temperature_draws_match_softmax_chi_square(temperature):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 1.5], dtype=np.float32)
    counts = draw_counts(Sampler(SamplingParams(seed=11, temperature=temperature, **NO_FILTERS)), logits, 20000)
    stat, dof = chi_square(counts, softmax(logits / np.float32(temperature)))
    assert stat < CHI2_999[dof], (stat, counts)
    other = 1.0 if temperature != 1.0 else 0.5  # the empirical distribution tells temperatures apart
    wrong, _ = chi_square(counts, softmax(logits / np.float32(other)))
    assert wrong > 10 * CHI2_999[dof]


def test_full_chain_draws_match_the_composed_filters():
    """Penalties, top-k, top-p (before temperature), min-p, temperature: the draw follows their composition."""
    logits = np.array([3.0, 2.8, 2.5, 2.0, 1.0, 0.5, 0.0, -0.5, 2.9, 1.5, -2.0, 2.2], dtype=np.float32)
    history = [0, 0, 9, 3]
    params = SamplingParams(seed=21, temperature=1.7, top_k=7, top_p=0.9, min_p=0.2, repeat_penalty=1.2,
                            frequency_penalty=0.1, presence_penalty=0.05, repeat_last_n=3)
    x = apply_penalties(logits, history, repeat_penalty=1.2, frequency_penalty=0.1, presence_penalty=0.05, last_n=3)
    x = min_p_filter(top_p_filter(top_k_filter(x, 7), 0.9), 0.2)
    expected = softmax(apply_temperature(x, 1.7))
    assert 2 <= np.count_nonzero(expected) < 7  # the filters really cut something
    counts = draw_counts(Sampler(params), logits, 20000, history)
    stat, dof = chi_square(counts, expected)
    assert stat < CHI2_999[dof], (stat, counts, expected)


def test_filters_apply_before_temperature():
    # At T=1 top-p 0.5 keeps only token 0; a high temperature must not bring the others back.
    logits = np.array([2.0, 0.0, 0.0, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(seed=0, temperature=50.0, top_k=0, top_p=0.5, min_p=0.0))
    assert {sampler(logits) for _ in range(200)} == {0}


def test_default_chain_on_a_big_vocab_stays_in_top_k():
    rng = np.random.default_rng(9)
    logits = (rng.standard_normal(151936) * 2).astype(np.float32)
    top40 = set(np.argsort(-logits)[:40].tolist())
    sampler = Sampler(SamplingParams(seed=1))
    history = list(rng.integers(0, 151936, 100))
    draws = {sampler(logits, history) for _ in range(100)}
    assert draws <= top40 and len(draws) > 1


def test_all_inf_logits_raise():
    x = np.full(10, -np.inf, dtype=np.float32)
    for params in (SamplingParams(seed=0), SamplingParams(temperature=0)):
        with pytest.raises(CamelidError, match="no token to sample"):
            Sampler(params)(x, [])


def test_single_survivor_is_returned_without_a_draw():
    sampler = Sampler(SamplingParams(seed=0, top_k=1))
    state = sampler.rng.bit_generator.state
    assert sampler(np.array([0.0, 1.0, 0.5], dtype=np.float32), []) == 1
    assert sampler.rng.bit_generator.state == state
    assert math.isclose(softmax(np.array([0.0, -np.inf], dtype=np.float32))[0], 1.0)
