"""How many threads the kernels use: the physical cores by default, like llama.cpp."""

from __future__ import annotations

import os

from camelid.errors import CamelidError


def physical_cores() -> int:
    """Number of physical CPU cores (logical CPUs without SMT siblings), at least 1."""
    try:
        with open("/proc/cpuinfo") as f:
            cores = {line.split(":")[1].strip() for line in f if line.startswith("core id")}
            f.seek(0)
            sockets = {line.split(":")[1].strip() for line in f if line.startswith("physical id")}
        if cores:
            return max(1, len(cores) * max(1, len(sockets)))
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def set_threads(n_threads: int | None = None) -> int:
    """Run the kernels on n_threads threads (None: the physical cores); return the number in use."""
    import numba

    available = numba.config.NUMBA_NUM_THREADS
    if n_threads is None:
        n_threads = physical_cores()
    elif isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise CamelidError(f"the number of threads must be a positive integer, not {n_threads!r}.")
    n_threads = min(n_threads, available)
    numba.set_num_threads(n_threads)
    return n_threads
