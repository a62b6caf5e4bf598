"""Where Numba keeps camelid's compiled kernels: a directory keyed on everything that shapes the code.

Numba's on-disk cache checks only the timestamp of the file that defines a kernel, so an edit to a
helper that the kernel inlines from another file (simd.py, ggml_math.py) would go on running the old
machine code. camelid therefore points Numba at a directory named by a hash of the source of every
camelid module that uses Numba, the Numba/llvmlite/Python versions, and the switches that change the
generated code (CAMELID_SIMD, CAMELID_BOUNDSCHECK): an upgrade or an edit compiles afresh instead of
reusing stale code.

The directory is `$NUMBA_CACHE_DIR/camelid-<key>` when NUMBA_CACHE_DIR is set, else
`~/.cache/camelid/numba/<key>` (under $XDG_CACHE_HOME when set). CAMELID_BOUNDSCHECK=1 turns on Numba's
bounds checks in every kernel (slow; for tests of hostile input).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _numba_sources() -> list[Path]:
    return sorted(p for p in _PACKAGE.rglob("*.py") if b"numba" in p.read_bytes())


def cache_key() -> str:
    """A short hash of the kernel sources, the compiler versions and the code-shaping switches."""
    import llvmlite
    import numba

    h = hashlib.sha256()
    for part in (sys.version, numba.__version__, llvmlite.__version__,
                 os.environ.get("CAMELID_SIMD", "").lower(), os.environ.get("CAMELID_BOUNDSCHECK", "")):
        h.update(part.encode() + b"\0")
    for path in _numba_sources():
        h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """The directory this process's kernels are cached in."""
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        return Path(user) / f"camelid-{cache_key()}"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "camelid" / "numba" / cache_key()


def configure() -> None:
    """Point Numba's cache at cache_dir() and apply CAMELID_BOUNDSCHECK; call before any kernel is defined."""
    if os.environ.get("CAMELID_BOUNDSCHECK", "") not in ("", "0"):
        os.environ["NUMBA_BOUNDSCHECK"] = "1"
    import numba

    if os.environ.get("NUMBA_BOUNDSCHECK"):
        numba.config.BOUNDSCHECK = int(os.environ["NUMBA_BOUNDSCHECK"])
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # Numba falls back to __pycache__ beside the sources, or compiles each run
    numba.config.CACHE_DIR = str(directory)
