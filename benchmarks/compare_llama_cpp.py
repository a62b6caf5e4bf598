"""camelid against llama.cpp (llama-cpp-python) on the same GGUF files, same threads, alternating runs.

    python benchmarks/compare_llama_cpp.py MODEL.gguf [MODEL2.gguf ...] [-p 512] [-n 128] [-t 2] [-r 3] [-np 8]

For each model it alternates one camelid run and one llama.cpp run of each test, r times, so that
whatever else the machine does affects both alike, and prints the medians and the ratio
camelid / llama.cpp. Both engines see the same random prompt tokens and feed generation tokens one
at a time without sampling, as llama-bench does. With -np N, both also generate N sequences at once, one
token of each per forward pass (llama.cpp: one llama_decode of an N-token batch with N sequence ids, as
llama-server's continuous batching; camelid: LlamaModel.decode), and the table gains the total
tokens/s and each engine's own scaling (N sequences' throughput over one's). Needs llama-cpp-python built for this CPU: python tests/oracle/install.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np


def llama_cpp_model(path: str, n_ctx: int, n_threads: int, n_batch: int):
    import llama_cpp

    return llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, n_batch=n_batch,
                           n_ubatch=n_batch, verbose=False)


def llama_cpp_prompt(llm, tokens: list[int]) -> float:
    llm.reset()
    llm._ctx.kv_cache_clear()
    start = time.perf_counter()
    llm.eval(tokens)
    return time.perf_counter() - start


def llama_cpp_generation(llm, tokens: list[int]) -> float:
    llm.reset()
    llm._ctx.kv_cache_clear()
    start = time.perf_counter()
    for t in tokens:
        llm.eval([t])
    return time.perf_counter() - start


class LlamaCppBatched:
    """A llama.cpp context of n_seq sequences, generating one token of each per llama_decode."""

    def __init__(self, llm, n_seq: int, n_gen: int, n_threads: int):
        import llama_cpp

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_seq * 256 * -(-(n_gen + 16) // 256)  # llama.cpp pads n_ctx to 256 and splits it by sequence
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        self.batch = llama_cpp.llama_batch_init(n_seq, 0, n_seq)
        self.n_seq = n_seq

    def generation(self, tokens: list[list[int]]) -> float:
        """Seconds to feed tokens[step][seq] into fresh caches, one step (every sequence's token) per call."""
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        b = self.batch
        start = time.perf_counter()
        for pos, step in enumerate(tokens):
            b.n_tokens = len(step)
            for s, t in enumerate(step):
                b.token[s], b.pos[s], b.n_seq_id[s], b.logits[s] = t, pos, 1, 1
                b.seq_id[s][0] = s
            if llama_cpp.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed")
        return time.perf_counter() - start


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def compare(path: str, n_prompt: int, n_gen: int, n_threads: int, repetitions: int, n_batch: int, n_seq: int = 1) -> dict:
    import camelid
    from camelid.bench import time_batched_generation, time_generation, time_prompt

    model = camelid.load(path, n_threads=n_threads, show_progress=False)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model.tokenizer.n_vocab, n_prompt).tolist()
    gen = rng.integers(0, model.tokenizer.n_vocab, n_gen).tolist()
    llm = llama_cpp_model(path, n_ctx=max(n_prompt, n_gen) + 16, n_threads=n_threads, n_batch=n_batch)
    times = {k: [] for k in ("camelid_pp", "llama_pp", "camelid_tg", "llama_tg", "camelid_par", "llama_par")}
    time_prompt(model, prompt[:64], n_batch), time_generation(model, gen[:8])  # warm up
    llama_cpp_prompt(llm, prompt[:64]), llama_cpp_generation(llm, gen[:8])
    if n_seq > 1 and n_gen:
        batched = LlamaCppBatched(llm, n_seq, n_gen, n_threads)
        steps = rng.integers(0, model.tokenizer.n_vocab, (n_gen, n_seq)).tolist()
        time_batched_generation(model, [list(s) for s in zip(*steps[:4])]), batched.generation(steps[:4])  # warm up
    for _ in range(repetitions):
        if n_prompt:
            times["camelid_pp"].append(n_prompt / time_prompt(model, prompt, n_batch))
            times["llama_pp"].append(n_prompt / llama_cpp_prompt(llm, prompt))
        if n_gen:
            times["camelid_tg"].append(n_gen / time_generation(model, gen))
            times["llama_tg"].append(n_gen / llama_cpp_generation(llm, gen))
        if n_seq > 1 and n_gen:
            times["camelid_par"].append(n_seq * n_gen / time_batched_generation(model, [list(s) for s in zip(*steps)]))
            times["llama_par"].append(n_seq * n_gen / batched.generation(steps))
    med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
    return {
        "model": os.path.basename(path),
        "size_gib": os.path.getsize(path) / 2**30,
        "pp": (med["camelid_pp"], med["llama_pp"]),
        "tg": (med["camelid_tg"], med["llama_tg"]),
        "parallel": (med["camelid_par"], med["llama_par"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("-b", "--batch-size", type=int, default=512)
    ap.add_argument("-np", "--parallel", type=int, default=1, help="also generate N sequences at once (default 1: no such test)")
    args = ap.parse_args()
    n_par = args.parallel
    print(f"# {time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"pp{args.n_prompt}, tg{args.n_gen}, median of {args.repetitions} alternating runs")
    par_columns = (f" camelid tg x{n_par} t/s | llama.cpp tg x{n_par} t/s | x{n_par} ratio | camelid x{n_par}/x1 | llama.cpp x{n_par}/x1 |"
                   if n_par > 1 else "")
    print("| model | size | camelid pp t/s | llama.cpp pp t/s | pp ratio | camelid tg t/s | llama.cpp tg t/s | tg ratio |" + par_columns)
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (5 if n_par > 1 else 0))
    for path in args.models:
        r = compare(path, args.n_prompt, args.n_gen, args.threads, args.repetitions, args.batch_size, n_par)
        (cp, lp), (ct, lt), (cn, ln) = r["pp"], r["tg"], r["parallel"]
        row = f"| {r['model']} | {r['size_gib']:.2f} GiB | {cp:.1f} | {lp:.1f} | {cp / lp:.2f}x | {ct:.1f} | {lt:.1f} | {ct / lt:.2f}x |"
        if n_par > 1:
            row += f" {cn:.1f} | {ln:.1f} | {cn / ln:.2f}x | {cn / ct:.2f}x | {ln / lt:.2f}x |"
        print(row, flush=True)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
