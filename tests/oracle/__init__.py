"""llama.cpp (llama-cpp-python) as the tests' oracle, always in a child process.

Every call into llama.cpp runs in one worker process (oracle/worker.py) that the test process starts
on first use. If llama.cpp crashes, the call raises OracleCrashed naming the signal, that test
fails, and the next call starts a fresh worker: one crash is one failed test, not a dead run.

    from oracle import Llama, ggml, require
    llm = Llama(path)                          # a GGUF file as llama.cpp opens it
    llm.tokenize("text"), llm.logits(tokens), llm.greedy(prompt, 16), llm.step_logits(...)
    ggml().mul_mat(t, raw, x)                  # the compiled ggml CPU library (oracle/ggml_library.py)

`require()` skips a test when llama-cpp-python is not installed, except under CI=true, where a
missing oracle fails the test. Install it with `python tests/oracle/install.py`.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from dependencies import in_ci, missing  # noqa: F401 - tests reach them as oracle.in_ci / oracle.missing

_TESTS = Path(__file__).resolve().parent.parent
CALL_TIMEOUT = 900  # seconds; a llama.cpp build of a tiny model's quantization or a 7B forward stays far below


class OracleCrashed(AssertionError):
    """The oracle's process died (or hung) during a call."""


class OracleError(RuntimeError):
    """llama.cpp refused a call (the worker's exception, with its traceback)."""


def require() -> None:
    """Skip (or, under CI, fail) the test when llama-cpp-python is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        missing("llama-cpp-python, the test oracle, is not installed: python tests/oracle/install.py")


class OracleProcess:
    """The worker process and the socket to it; restarted after a crash."""

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_TESTS), os.environ.get("PYTHONPATH", "")]))
        self._process = subprocess.Popen([sys.executable, "-m", "oracle.worker", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], env=env, cwd=_TESTS)
        theirs.close()
        self._conn = Connection(ours.detach())

    def call(self, name: str, *args, timeout: float = CALL_TIMEOUT, **kwargs):
        """Run name(*args, **kwargs) in the worker and return its result."""
        require()
        if self._process is None or self._process.poll() is not None:
            self._start()
        try:
            self._conn.send((name, args, kwargs))
            deadline = time.monotonic() + timeout
            while not self._conn.poll(0.5):
                if self._process.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    self._process.kill()
                    break
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._process.kill()
            code = self._process.wait()
            self._process = None
            cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            raise OracleCrashed(f"llama.cpp (the test oracle) died of {cause} during {name}") from exc
        if status == "error":
            raise OracleError(f"{name}: {value}")
        return value

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._conn.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None


_PROCESS = OracleProcess()
atexit.register(_PROCESS.close)


def call(name: str, *args, **kwargs):
    """One call into the oracle's worker (see oracle/worker.py for the names)."""
    return _PROCESS.call(name, *args, **kwargs)


class Ggml:
    """The compiled ggml library in the worker: every public method of oracle/ggml_library.py's Ggml."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: call(f"ggml.{name}", *args, **kwargs)


def ggml() -> Ggml:
    """The ggml oracle (skips, or fails under CI, when llama-cpp-python is not installed)."""
    require()
    return Ggml()


class Llama:
    """A model file as llama.cpp opens it (n_threads 2, batch = context); every method runs in the worker."""

    def __init__(self, path, n_ctx: int = 512, vocab_only: bool = False):
        require()
        self.spec = (str(path), n_ctx, vocab_only)
        self._vocab = None

    def load(self) -> None:
        """Raises OracleError when llama.cpp cannot load the file."""
        call("llama.load", self.spec)

    def tokenize(self, text: str | bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        return call("llama.tokenize", self.spec, data, add_bos, special)

    def detokenize(self, ids: list[int], remove_special: bool = False, unparse_special: bool = False) -> bytes:
        return call("llama.detokenize", self.spec, list(ids), remove_special, unparse_special)

    def _info(self) -> dict:
        if self._vocab is None:
            self._vocab = call("llama.vocab_info", self.spec)
        return self._vocab

    @property
    def n_vocab(self) -> int:
        return self._info()["n_vocab"]

    @property
    def eog_ids(self) -> set[int]:
        return self._info()["eog_ids"]

    @property
    def add_bos(self) -> bool:
        return self._info()["add_bos"]

    @property
    def eos(self) -> int:
        return self._info()["eos"]

    def logits(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), n_vocab) float32 from one batch with logits at every position."""
        return call("llama.logits", self.spec, list(tokens))

    def step_logits(self, tokens: list[int], n_prompt: int) -> np.ndarray:
        """(len(tokens) - n_prompt + 1, n_vocab): last-token logits after the prompt, then after each token alone."""
        return call("llama.step_logits", self.spec, list(tokens), n_prompt)

    def greedy(self, prompt: list[int], n: int, stop_at_eog: bool = False) -> tuple[list[int], np.ndarray]:
        """llama.cpp's greedy continuation and the logits (len, n_vocab) each token was chosen from."""
        return call("llama.greedy", self.spec, list(prompt), n, stop_at_eog)

    def embeddings(self, texts: list[str], pooling: int = 1, normalize: bool = True) -> np.ndarray:
        """llama.cpp's embeddings of texts, (len(texts), n_embd); pooling 1 mean, 2 cls, 3 last."""
        return call("llama.embeddings", self.spec, texts, pooling, normalize)

    def logits_after_shift(self, tokens: list[int], keep: int, drop: int, next_token: int) -> np.ndarray:
        """(n_vocab,): tokens, then llama.cpp's K-shift dropping [keep, keep + drop), then next_token."""
        return call("llama.logits_after_shift", self.spec, list(tokens), keep, drop, next_token)


def quantize(src, dst, ftype: int, allow_requantize: bool = False) -> None:
    """llama.cpp's own quantizer (llama_model_quantize) from src to dst as the llama_ftype."""
    call("llama.quantize", str(src), str(dst), ftype, allow_requantize)
