"""One `camelid serve` stream against `camelid run` on the same model and threads, alternating runs.

    python benchmarks/server_vs_run.py [-m MODEL.gguf] [-n 256] [-t 2] [-r 3]

Both generate n tokens greedily from the same prompt with end-of-text ignored; the server's speed is
its own `timings.predicted_per_second` for a /v1/completions request, `camelid run`'s the
"generated at X tok/s" of its closing line. Prints the medians and the ratio server / run (issue
15's target: at least 0.9).
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPT = "Once upon a time"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_arguments(doc: str, default_n: int) -> argparse.Namespace:
    """The options both server benchmarks take: -m, -n, -t, -r."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-n", type=int, default=default_n)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    return ap.parse_args()


def run_speed(model: list[str], n: int, threads: int) -> float:
    result = subprocess.run([sys.executable, "-m", "camelid", "run", *model, "-p", PROMPT, "-n", str(n), "-t", str(threads),
                             "--temp", "0", "--ignore-eos"], capture_output=True, text=True, check=True)
    return float(re.search(r"generated at ([\d.]+) tok/s", result.stderr).group(1))


def main() -> int:
    args = parse_arguments(__doc__, 256)
    model = ["-m", args.model] if args.model else []
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "camelid", "serve", *model, "--port", str(port), "-t", str(args.threads),
                               "-c", str(args.n + 64)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"prompt": PROMPT, "max_tokens": args.n, "temperature": 0, "ignore_eos": True}
    try:
        for _ in range(600):
            try:
                httpx.post(url, json={**body, "max_tokens": 4}, timeout=600)  # also the warm-up
                break
            except httpx.TransportError:
                time.sleep(0.5)
        served, ran = [], []
        for _ in range(args.repetitions):
            served.append(httpx.post(url, json=body, timeout=600).json()["timings"]["predicted_per_second"])
            ran.append(run_speed(model, args.n, args.threads))
    finally:
        server.terminate()
        server.wait()
    s, r = statistics.median(served), statistics.median(ran)
    print(f"{args.model or 'default model'}, {args.threads} threads, tg{args.n}, median of {args.repetitions}: "
          f"serve {s:.1f} tok/s, run {r:.1f} tok/s, serve / run = {s / r:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
