"""camelid.model.kv_pool: sequences that share a KV pool give, to the bit, what each gives in a KV
cache of its own; they share the blocks of a common prefix instead of copying them (a partly
matched block is copied, then written); finished sequences stay as cache; when the pool is full the
least recently used prefixes go first, and blocks in use never do.

The model is Gemma 3 270M Q4_K_M (K-quant products round a batch of rows differently from one row,
so a reused prefix must leave the recomputed rows their fresh arithmetic: camelid.engine's
reusable_prefix decides how much to reuse, and these prompts are built so it reuses).
"""

from __future__ import annotations

import numpy as np
import pytest

import camelid
from camelid.engine import Engine, Request
from camelid.errors import CamelidError
from camelid.model.kv_pool import BLOCK, KVPool
from camelid.model.ops import attention
from camelid.sampling import SamplingParams
from model_files import gemma_path

GREEDY = SamplingParams(temperature=0)
N_CTX = 256
BASE = ("The llama is a domesticated South American camelid, widely used as a meat and pack animal by Andean "
        "cultures since the pre-Columbian era. Llamas are social animals")
MORE = " and live with others as a herd. Their wool is soft and contains only a small amount of lanolin."


@pytest.fixture(scope="module")
def model():
    return camelid.load(str(gemma_path()), n_ctx=N_CTX, show_progress=False)


def run(model, requests_and_caches):
    """Run (request, cache) pairs together to the end: per request, its tokens, log-probabilities and stats."""
    engine = Engine(model.network, model.tokenizer)
    seqs = [engine.add(r, c) for r, c in requests_and_caches]
    out = {id(s): ([], []) for s in seqs}
    stats = {}
    while engine.sequences:
        for seq, chunk in engine.step():
            out[id(seq)][0].extend([chunk.token] if chunk.token is not None else [])
            out[id(seq)][1].extend(chunk.logprobs or [])
            if chunk.finish_reason is not None:
                stats[id(seq)] = chunk.stats
    return [(*out[id(s)], stats[id(s)]) for s in seqs]


def request(model, text: str, n: int = 10) -> Request:
    return Request(model.tokenize(text), max_tokens=n, sampling=GREEDY, ignore_eos=True, top_logprobs=3)


def check_blocks(pool: KVPool) -> None:
    """Every block is free, or a node of the tree, or a sequence's own, exactly once."""
    tree = [node.block for node in pool._nodes()]
    assert len(set(tree)) == len(tree) and not set(tree) & set(pool.free)
    assert pool.n_cached_blocks == sum(node.refs == 0 for node in pool._nodes())


@pytest.mark.parametrize("d, n_head, n_kv, n, start", [(64, 4, 2, 1, 40), (64, 4, 2, 9, 31), (16, 2, 1, 1, 20), (16, 2, 1, 5, 3)])
def test_attention_through_rows_equals_a_contiguous_cache(d, n_head, n_kv, n, start):
    rng = np.random.default_rng(0)
    t = start + n
    q = rng.standard_normal((n, n_head, d)).astype(np.float32)
    k = rng.standard_normal((t, n_kv, d)).astype(np.float16)
    v = rng.standard_normal((t, n_kv, d)).astype(np.float16)
    rows = rng.permutation(3 * t)[:t].astype(np.int64)  # position i in row rows[i] of a larger, shuffled pool
    k_pool = rng.standard_normal((3 * t, n_kv, d)).astype(np.float16)
    v_pool = rng.standard_normal((3 * t, n_kv, d)).astype(np.float16)
    k_pool[rows], v_pool[rows] = k, v
    assert np.array_equal(attention(q, k_pool, v_pool, start, rows=rows), attention(q, k, v, start))


def test_a_pooled_sequence_equals_its_own_cache_and_reuses_a_finished_prefix(model):
    pool = model.network.new_pool(2 * N_CTX)
    first = request(model, BASE, n=1)
    seq = pool.sequence(N_CTX)
    assert run(model, [(first, seq)])[0][2].cached_tokens == 0
    seq.release()  # as the server does when a generation ends

    second = request(model, BASE + MORE)
    alone = run(model, [(second, model.new_cache())])[0]
    pooled = run(model, [(second, pool.sequence(N_CTX))])[0]
    assert pooled[:2] == alone[:2]  # tokens and log-probabilities, to the bit
    n_base = len(first.prompt)
    assert pooled[2].cached_tokens == n_base and n_base % BLOCK  # reused, the last block partly (copied)
    assert alone[2].cached_tokens == 0
    check_blocks(pool)


def test_released_sequences_stay_as_cache_and_share_blocks(model):
    pool = model.network.new_pool(2 * N_CTX)
    a = pool.sequence(N_CTX)
    run(model, [(request(model, BASE, n=2), a)])
    n_a = a.n_past
    a.release()
    assert a.n_past == 0 and pool.usage() == (0, -(-n_a // BLOCK) * BLOCK)
    check_blocks(pool)

    # two sequences start from the same prefix at once: both hold its full blocks, nobody copies them
    b, c = pool.sequence(N_CTX), pool.sequence(N_CTX)
    requests = [request(model, BASE + MORE, n=4), request(model, BASE + " and live alone in the high mountains of Peru and Bolivia.", n=4)]
    together = run(model, [(requests[0], b), (requests[1], c)])
    shared = [node for node in b.nodes if node in c.nodes]
    assert len(shared) == len(model.tokenize(BASE)) // BLOCK and all(node.refs == 2 for node in shared)
    for r, result in zip(requests, together):
        assert result[2].cached_tokens > 0
        assert run(model, [(r, model.new_cache())])[0][:2] == result[:2]
    b.release()
    c.release()
    assert pool.usage()[0] == 0
    check_blocks(pool)


def test_the_least_recently_used_prefix_goes_first_and_blocks_in_use_never(model):
    texts = ["The alpaca is a species of South American camelid mammal, similar to and often confused with the llama.",
             "羊驼是一种生活在南美洲安第斯山脉的骆驼科动物，性情温顺，毛质柔软，被广泛用于制作衣物。",
             "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"]
    prompts = [model.tokenize(t) for t in texts]
    blocks_each = max(-(-len(p) // BLOCK) for p in prompts)
    pool = KVPool(model.config.n_layer, 2 * blocks_each * BLOCK, model.config.n_head_kv, model.config.head_dim)

    def fill(prompt):
        seq = pool.sequence(N_CTX)
        model.network.forward(prompt, seq)
        seq.release()

    fill(prompts[0])
    fill(prompts[1])
    pool.sequence(N_CTX).keep_prefix(prompts[0], BLOCK)  # uses (and holds) the first prompt's first block again
    assert pool.sequence(N_CTX).common_prefix(prompts[1]) == len(prompts[1])
    fill(prompts[2])  # needs room: the second prompt, least recently used, goes
    assert pool.n_evicted_blocks > 0
    assert pool.sequence(N_CTX).common_prefix(prompts[1]) < len(prompts[1])
    assert pool.sequence(N_CTX).common_prefix(prompts[2]) == len(prompts[2])
    assert pool.sequence(N_CTX).common_prefix(prompts[0]) >= BLOCK  # held: never evicted
    check_blocks(pool)

    held = pool.sequence(N_CTX)
    model.network.forward(prompts[2], held)
    other = pool.sequence(N_CTX)
    with pytest.raises(CamelidError, match="pool .* is full"):
        model.network.forward(model.tokenize(" ".join(texts) * 2)[:blocks_each * 2 * BLOCK], other)
    assert held.tokens == prompts[2] and not set(held.blocks) & set(pool.free)
    own = model.new_cache()
    model.network.forward(prompts[2], own)
    assert np.array_equal(model.network.decode([5], [held]), model.network.decode([5], [own]))
    check_blocks(pool)


def test_a_sequence_never_writes_a_shared_block(model):
    pool = model.network.new_pool(N_CTX)
    a = pool.sequence(N_CTX)
    prompt = model.tokenize(BASE)
    model.network.forward(prompt, a)
    b = pool.sequence(N_CTX)
    b.keep_prefix(prompt, BLOCK)
    assert b.blocks[0] == a.blocks[0] and b.nodes[0] is a.nodes[0]
    before = pool.k[:, a.blocks[0] * BLOCK:(a.blocks[0] + 1) * BLOCK].copy()
    b.truncate(BLOCK - 3)  # keeps part of a shared block: copied into one of its own
    assert b.blocks[0] != a.blocks[0] and not b.nodes
    model.network.forward(model.tokenize(" camelid", add_special=False), b)
    assert np.array_equal(pool.k[:, a.blocks[0] * BLOCK:(a.blocks[0] + 1) * BLOCK], before)
    with pytest.raises(ValueError, match="shares"):
        a.store(0, 0, np.zeros((1, model.config.n_head_kv, model.config.head_dim), np.float32), np.zeros((1, model.config.n_head_kv, model.config.head_dim), np.float32))
