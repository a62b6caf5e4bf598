"""Every child process a test starts dies with the test process.

A crashed or killed pytest run used to leave `camelid serve` behind, holding its port and 360 MB.
`tie_children_to_this_process()` (called once from conftest.py) makes every `subprocess.Popen` of
the test process, and so `subprocess.run`, ask Linux to SIGKILL the child when its parent dies
(prctl PR_SET_PDEATHSIG). Elsewhere it does nothing; pexpect's terminals get SIGHUP from their pty.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc.prctl


def tie_children_to_this_process() -> None:
    """Patch subprocess.Popen so that its children get SIGKILL when this process dies."""
    prctl = _prctl()
    if prctl is None or getattr(subprocess.Popen, "_tied", False):
        return
    parent = os.getpid()

    def die_with_parent():  # runs in the child between fork and exec: no imports, no allocation
        prctl(_PR_SET_PDEATHSIG, _SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    original = subprocess.Popen.__init__

    @functools.wraps(original)
    def popen_init(self, *args, **kwargs):
        if kwargs.get("preexec_fn") is None and os.getpid() == parent:
            kwargs["preexec_fn"] = die_with_parent
        original(self, *args, **kwargs)

    subprocess.Popen.__init__ = popen_init
    subprocess.Popen._tied = True
