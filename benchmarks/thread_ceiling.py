"""How much a second (fourth, ...) thread can give on this machine, whatever the program: the speed-up
of three Numba loops from 1 thread to N, next to `camelid bench --threads-sweep`.

    python benchmarks/thread_ceiling.py [-t 1,2]

- latency: one chain of dependent integer multiply-adds per thread. Uses almost none of a core's
  execution units, so it scales with the number of hardware threads, even two on one core (SMT).
- integer throughput: eight independent chains of adds and xors per thread, enough to keep a core's
  integer units busy: two threads on one core share them.
- vector FMA throughput: float32 multiply-adds over an array in L1, vectorized by LLVM: the kind of
  work a prompt's matrix products are.
- memory read: int64 sums over 256 MiB, GB/s.

On a CPU whose threads are whole cores every line reads about N x; where the operating system (or a
VM's host) gives two threads of one core, the throughput lines stay well below 2x while the latency
line reaches it, and no program's prompt processing can scale past them.
"""

from __future__ import annotations

import argparse
import platform
import time

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True)
def _latency(n_chunks, iters):
    out = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        x = np.int64(c)
        for i in range(iters):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        out[c] = x
    return out


@njit(parallel=True)
def _integer_throughput(n_chunks, iters):
    out = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        a0 = np.int64(c)
        a1, a2, a3, a4, a5, a6, a7 = a0 + 1, a0 + 2, a0 + 3, a0 + 4, a0 + 5, a0 + 6, a0 + 7
        for i in range(iters):
            a0 += i
            a1 ^= i
            a2 += a1
            a3 ^= a2
            a4 += i
            a5 ^= i
            a6 += a5
            a7 ^= a6
        out[c] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7
    return out


@njit(parallel=True, fastmath=True)
def _fma_throughput(n_chunks, iters):
    out = np.zeros(n_chunks, np.float32)
    for c in prange(n_chunks):
        acc = np.zeros(256, np.float32)
        x = np.full(256, np.float32(c * 1e-6))
        b = np.float32(0.999)
        for _ in range(iters):
            for j in range(256):
                acc[j] = acc[j] * b + x[j]
        out[c] = acc.sum()
    return out


@njit(parallel=True)
def _read(a, n_chunks):
    per = a.shape[0] // n_chunks
    out = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        s = 0
        for i in range(c * per, (c + 1) * per):
            s += a[i]
        out[c] = s
    return out


def _best_seconds(fn, *args, repetitions: int = 3) -> float:
    fn(*args)
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-t", "--threads", default=None, help="comma-separated thread counts (default: 1, 2, 4, ... up to the CPUs)")
    args = ap.parse_args()
    available = numba.config.NUMBA_NUM_THREADS
    counts = [int(t) for t in args.threads.split(",")] if args.threads else \
        [1 << i for i in range(available.bit_length()) if 1 << i < available] + [available]
    data = np.ones(2**28 // 8, np.int64)
    chunks = 16 * max(counts)  # whole multiples of every thread count: an even split is a fair one
    tests = {
        "latency (1 dependent chain)": lambda: _best_seconds(_latency, chunks, 2_000_000),
        "integer throughput (8 chains)": lambda: _best_seconds(_integer_throughput, chunks, 4_000_000),
        "vector FMA throughput (L1)": lambda: _best_seconds(_fma_throughput, chunks, 20_000),
        "memory read": lambda: _best_seconds(_read, data, chunks),
    }
    print(f"{platform.processor() or platform.machine()}, {available} CPUs for Numba")
    print("| test | " + " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    for name, run in tests.items():
        seconds = []
        for n in counts:
            numba.set_num_threads(n)
            seconds.append(run())
        if name == "memory read":
            cells = [f"{data.nbytes / s / 1e9:.1f} GB/s ({seconds[0] / s:.2f}x)" for s in seconds]
        else:
            cells = [f"{seconds[0] / s:.2f}x" for s in seconds]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
