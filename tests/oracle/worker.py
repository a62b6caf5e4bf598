"""The oracle's child process: loads llama.cpp and answers calls from the test process.

Started by oracle.OracleProcess with one end of a socket pair as its only argument. Each message is
(name, args, kwargs); the reply is ("ok", value) or ("error", exception). Names are "llama.<function>"
(oracle/llama.py) or "ggml.<method>" (oracle/ggml_library.py's Ggml). Its standard output is sent to standard
error, so nothing llama.cpp prints can garble the replies. It exits when the test process closes the
socket or dies.
"""

from __future__ import annotations

import os
import sys
import traceback
from multiprocessing.connection import Connection


def _handlers():
    from oracle import ggml_library, llama

    lib = None

    def find(name: str):
        nonlocal lib
        family, _, function = name.partition(".")
        if function.startswith("_"):
            raise AttributeError(name)
        if family == "llama":
            return getattr(llama, function)
        if family == "ggml":
            lib = lib or ggml_library.Ggml()
            return getattr(lib, function)
        raise AttributeError(name)

    return find


def main(fd: int) -> None:
    os.dup2(2, 1)
    conn = Connection(fd)
    find = _handlers()
    while True:
        try:
            name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", find(name)(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the test
            reply = ("error", RuntimeError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        conn.send(reply)


if __name__ == "__main__":
    main(int(sys.argv[1]))
