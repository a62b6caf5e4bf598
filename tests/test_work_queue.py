"""The kernels' work queue (camelid.cpu.work_queue): every chunk runs once, and a thread that is held
up does not hold up the rest of its share; products do not depend on the thread count."""

import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from numba import njit, prange

from camelid.cpu.work_queue import chunk_groups, fetch_add, new_queue, next_chunk, work_split
from camelid.quant import QTensor
from camelid.threads import set_threads
from test_kernels import random_weights


@njit(parallel=True)
def _take_all(n_chunks, n_workers):
    """How many times each chunk ran, and which worker ran it."""
    runs = np.zeros(n_chunks, np.int64)
    worker_of = np.full(n_chunks, -1, np.int64)
    queue = new_queue(n_workers)
    for w in prange(n_workers):
        c = next_chunk(queue, w, n_chunks, n_workers)
        while c < n_chunks:
            fetch_add(runs, c, 1)
            worker_of[c] = w
            c = next_chunk(queue, w, n_chunks, n_workers)
    return runs, worker_of


@njit(parallel=True)
def _first_chunk_waits_for_the_rest(n_chunks, n_workers, max_spins):
    """The worker that takes chunk 0 waits until every other chunk has run (or max_spins reads of
    the count have passed); returns which worker ran each chunk."""
    worker_of = np.full(n_chunks, -1, np.int64)
    done = np.zeros(1, np.int64)
    queue = new_queue(n_workers)
    for w in prange(n_workers):
        c = next_chunk(queue, w, n_chunks, n_workers)
        while c < n_chunks:
            worker_of[c] = w
            if c == 0:
                spins = 0
                while fetch_add(done, 0, 0) < n_chunks - 1 and spins < max_spins:
                    spins += 1
            else:
                fetch_add(done, 0, 1)
            c = next_chunk(queue, w, n_chunks, n_workers)
    return worker_of


@pytest.fixture
def two_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("this machine runs one thread: nothing to balance")
    before = numba.get_num_threads()
    set_threads(2)
    yield
    numba.set_num_threads(before)


@pytest.mark.parametrize("n_chunks, n_workers", [(1, 1), (7, 1), (1000, 2), (3, 2)])
def test_every_chunk_runs_exactly_once(two_threads, n_chunks, n_workers):
    runs, worker_of = _take_all(n_chunks, n_workers)
    assert (runs == 1).all()
    assert set(worker_of.tolist()) <= set(range(n_workers))


def test_a_held_up_thread_leaves_its_share_to_the_others(two_threads):
    # worker 0's share is chunks 0..49; under prange's even split it would run 1..49 itself after
    # waiting out max_spins
    worker_of = _first_chunk_waits_for_the_rest(100, 2, 2_000_000_000)
    waiting = worker_of[0]
    assert (worker_of[1:] != waiting).all(), worker_of


@pytest.mark.parametrize("n_groups, n_threads, expected", [
    (704, 2, (176, 2)),  # chunks of 4 groups
    (16, 16, (16, 16)),  # one group each rather than 4 chunks for 16 threads
    (3, 16, (3, 3)),  # no more workers than chunks
    (1, 1, (1, 1)),
])
def test_work_split(monkeypatch, n_groups, n_threads, expected):
    monkeypatch.setattr(numba, "get_num_threads", lambda: n_threads)
    n_chunks, n_workers = work_split(n_groups)
    assert (n_chunks, n_workers) == expected
    covered = [g for c in range(n_chunks) for g in range(*chunk_groups(c, n_chunks, n_groups))]
    assert covered == list(range(n_groups))


@pytest.mark.parametrize("ggml_type", ["Q4_0", "Q8_0", "Q4_K", "Q6_K", "F16"])
def test_products_do_not_depend_on_the_thread_count(two_threads, ggml_type):
    t = GGMLQuantizationType[ggml_type]
    rng = np.random.default_rng(7)
    n_out, n_in = 16 * 37 + 5, 512  # row groups that split unevenly, and a partial last group
    raw = random_weights(t, n_out, n_in, rng)
    matrix = QTensor("blk.0.ffn_up.weight", t, (n_out, n_in), raw)
    for n_tok in (1, 9):
        x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
        set_threads(1)
        one = matrix.matmul(x)
        set_threads(2)
        two = matrix.matmul(x)
        assert np.isfinite(one).all() and one.tobytes() == two.tobytes()
