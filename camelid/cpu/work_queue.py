"""Parallel loops whose threads share out their work as they go, as ggml's threads do.

Numba's prange splits its iterations evenly between the threads up front, so a product waits for
its slowest thread: a thread that shares its core with another program (a browser, a build) or
runs on a slower core (the efficiency cores of hybrid CPUs) holds up every layer. The kernels
instead run one prange iteration per worker thread, and each worker takes chunks of rows one at a
time until none is left:

    queue = new_queue(n_workers)
    for w in prange(n_workers):
        c = next_chunk(queue, w, n_chunks, n_workers)
        while c < n_chunks:
            ...  # chunk c
            c = next_chunk(queue, w, n_chunks, n_workers)

Each worker owns an even share of consecutive chunks, as prange would give it, and takes them in
order through an atomic counter of its own (a cache line no other worker touches while it has
work); a worker whose share is done takes the next chunks of the other shares. When the threads
run at one speed this is prange's split, memory order included; when one is held up, the others
finish its share. Which thread computes a row changes nothing in how it is computed, so results
stay bit-identical.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

GROUPS_PER_CHUNK = 4  # row groups per chunk when there are enough: 64 rows, ggml's chunk of a product
PARALLEL_ROWS = 16  # rows from which norms and activation rounding run on every thread (a region costs microseconds)


def work_split(n_groups: int) -> tuple[int, int]:
    """(n_chunks, n_workers) of a product over n_groups row groups: chunks of GROUPS_PER_CHUNK
    groups, or more, smaller ones where that would leave threads without work; and the threads that
    take them, no more than there are chunks. (The kernels take the thread count as an argument:
    Numba cannot cache a function that asks for it.)"""
    n_threads = numba.get_num_threads()
    n_chunks = max(1, min(n_groups, max(n_threads, -(-n_groups // GROUPS_PER_CHUNK))))
    return n_chunks, min(n_chunks, n_threads)


@intrinsic
def fetch_add(typingctx, counter, index, value):
    """counter[index] += value as one atomic operation on an int64 array; returns the value before
    (with value 0: an atomic read)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and isinstance(index, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        position = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], array, [position])
        amount = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", pointer, amount, "monotonic")

    return types.int64(counter, index, value), codegen


LINE = 8  # int64 counters per 64-byte cache line: one line per worker


@njit(cache=True, inline="always")
def new_queue(n_workers):
    """The counters of one parallel loop: chunks taken from each worker's share."""
    return np.zeros(n_workers * LINE, np.int64)


@njit(cache=True, inline="always")
def next_chunk(queue, worker, n_chunks, n_workers):
    """The next chunk for `worker` to run: the next of its own share, else of the shares after it;
    n_chunks once every chunk is taken."""
    per = (n_chunks + n_workers - 1) // n_workers
    for k in range(n_workers):
        owner = (worker + k) % n_workers
        end = min(n_chunks, (owner + 1) * per)
        if owner * per + fetch_add(queue, owner * LINE, 0) < end:
            c = owner * per + fetch_add(queue, owner * LINE, 1)
            if c < end:
                return c
    return n_chunks


@njit(cache=True, inline="always")
def chunk_groups(c, n_chunks, n_groups):
    """The row groups g0..g1 of chunk c of n_chunks: consecutive, as equal as they divide."""
    per = (n_groups + n_chunks - 1) // n_chunks
    return c * per, min(n_groups, (c + 1) * per)
