"""Replicas on Ray Serve: total generation throughput of `camelid serve --ray` with 2 replicas against 1,
on this machine, and against a plain `camelid serve` with the same threads in all.

    python benchmarks/ray_replicas.py [-m MODEL.gguf] [-n 64] [-t 1] [-r 2]

Each configuration serves 8 concurrent streams (greedy, end-of-text ignored, n tokens each, each
from its own prompt); throughput is generated tokens over the wall clock from their start to the
last one's end (server_batching.streams). Replicas get t threads each; the plain server gets
2 x t threads, the cores the two replicas use together. Needs `pip install 'camelid[ray]'`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import httpx

from server_batching import PROMPTS, streams
from server_vs_run import free_port, parse_arguments


def serving(command: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "camelid", "serve", "--port", str(port), *command],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/health", timeout=5).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"camelid serve {' '.join(command)} exited with {process.returncode}")
        time.sleep(0.5)
    raise SystemExit("the server did not start")


def throughput(command: list[str], n: int, repetitions: int) -> float:
    process, base = serving(command)
    try:
        streams(base + "/v1/completions", PROMPTS, 4)  # the warm-up
        return statistics.median(streams(base + "/v1/completions", PROMPTS, n) for _ in range(repetitions))
    finally:
        process.terminate()
        process.wait()


def main() -> int:
    args = parse_arguments(__doc__, 64)
    model = ["-m", args.model] if args.model else []
    common = [*model, "-np", "8", "-c", str(8 * 512)]
    t = str(args.threads)
    results = {
        "plain": throughput([*common, "-t", str(2 * args.threads)], args.n, args.repetitions),
        "ray x1": throughput([*common, "--ray", "--replicas", "1", "-t", t], args.n, args.repetitions),
        "ray x2": throughput([*common, "--ray", "--replicas", "2", "-t", t], args.n, args.repetitions),
    }
    print(f"{args.model or 'default model'}, {os.cpu_count()} CPUs, 8 streams of tg{args.n}, median of {args.repetitions}: "
          f"plain serve -t {2 * args.threads} {results['plain']:.1f} tok/s; on Ray, 1 replica of -t {t} "
          f"{results['ray x1']:.1f} tok/s, 2 replicas {results['ray x2']:.1f} tok/s: "
          f"2 against 1 {results['ray x2'] / results['ray x1']:.2f}x, against plain {results['ray x2'] / results['plain']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
