"""A real `camelid serve` process for the server tests: a free port, the default model, killed after."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from model_files import smollm2_path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 300  # seconds; the first run compiles the kernels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m camelid serve` on 127.0.0.1 with the default model; .url, .get(), .post(), .metric()."""

    def __init__(self, tmp_dir: Path, *args: str, api_key: str | None = None):
        smollm2_path()  # skips when the default model is not installed
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.data_dir = tmp_dir / "data"
        self.log_path = tmp_dir / "server.log"
        command = [sys.executable, "-m", "camelid", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *args]
        if "-t" not in args:
            # One kernel thread: the test clients share the cores, and two OpenMP threads competing
            # with them for two cores wait on each other at every parallel region.
            command += ["-t", "1"]
        if api_key:
            command += ["--api-key", api_key]
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if k != "CAMELID_API_KEY"}
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.client = httpx.Client(base_url=self.url, timeout=120,
                                   headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"camelid serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError(f"camelid serve did not answer /health within {START_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.client.post(path, **kw)

    def metrics(self) -> dict[str, float]:
        """/metrics as {name or name{labels}: value}."""
        text = self.get("/metrics").text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}

    def openai(self, **kw):
        """The official openai client pointed at this server."""
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0, timeout=120, **kw)

    def close(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def poll(condition, timeout: float = 30.0, interval: float = 0.1):
    """Wait until condition() is truthy and return it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def serve(tmp_path_factory, *args: str, api_key: str | None = None):
    """A ServerProcess for a module-scoped fixture (yield it, close after)."""
    server = ServerProcess(tmp_path_factory.mktemp("serve"), *args, api_key=api_key)
    try:
        yield server
    finally:
        server.close()
