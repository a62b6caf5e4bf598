"""`camelid bench`: prompt and generation tokens/s of a model, like llama-bench."""

from __future__ import annotations

import argparse
import json
import os

from camelid.errors import CamelidError


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure prompt and generation speed (like llama-bench)",
                       description="Measure prompt processing and generation speed in tokens/s, as llama-bench does: "
                                   "random tokens, no sampling, a warm-up run, then -r repetitions.")
    p.add_argument("-m", "--model", help="GGUF model file, or a name to pull: qwen2.5:0.5b, hf.co/USER/REPO:Q4_K_M (default: the default model)")
    p.add_argument("-p", "--n-prompt", type=int, default=512, metavar="N", help="prompt tokens per prompt test (default 512; 0 skips it)")
    p.add_argument("-n", "--n-gen", type=int, default=128, metavar="N", help="tokens per generation test (default 128; 0 skips it)")
    p.add_argument("-b", "--batch-size", type=int, default=512, metavar="N", help="prompt tokens per forward pass (default 512)")
    p.add_argument("-t", "--threads", default=None, metavar="N[,N...]",
                   help="threads, or a comma-separated list to measure each, as llama-bench (default: physical cores)")
    p.add_argument("--threads-sweep", action="store_true",
                   help="measure 1, 2, 4, ... threads up to the physical cores, and how each scales against 1")
    p.add_argument("-r", "--repetitions", type=int, default=5, metavar="N", help="repetitions of each test (default 5)")
    p.add_argument("-np", "--parallel", type=int, default=1, metavar="N",
                   help="also generate N sequences at once, one batched forward pass per step, as the server does "
                        "(tokens/s in total; default 1: no such test)")
    p.add_argument("-o", "--output", choices=("md", "json"), default="md", help="md: a table; json: one JSON object")
    p.add_argument("--profile", action="store_true", help="also profile generation: where each token's time goes")
    p.set_defaults(handler=bench)


def thread_counts(threads: str | None, sweep: bool) -> list[int | None]:
    """The thread counts to measure, from -t (one count or a comma-separated list) and --threads-sweep
    (1, 2, 4, ... up to the physical cores); [None] for the default. Each is checked against the
    threads this process can run (Numba's NUMBA_NUM_THREADS, the CPUs it may use)."""
    import numba

    from camelid.threads import physical_cores

    if sweep and threads is not None:
        raise CamelidError("give either -t or --threads-sweep, not both.")
    if sweep:
        cores = min(physical_cores(), numba.config.NUMBA_NUM_THREADS)
        counts = [1 << i for i in range(cores.bit_length()) if 1 << i < cores] + [cores]
        return counts
    if threads is None:
        return [None]
    counts = []
    for part in threads.split(","):
        try:
            counts.append(int(part))
        except ValueError:
            raise CamelidError(f"-t takes a number of threads or a comma-separated list of them (1,2,4), not {threads!r}.") from None
    available = numba.config.NUMBA_NUM_THREADS
    for n in counts:
        if n < 1:
            raise CamelidError(f"the number of threads must be a positive integer, not {n}.")
        if n > available:
            raise CamelidError(f"{n} threads asked, but this process can run at most {available} (the CPUs it may use; "
                               "NUMBA_NUM_THREADS raises the limit).")
    if len(set(counts)) != len(counts):
        raise CamelidError(f"-t {threads} names a thread count twice.")
    return counts


def _table(model_name: str, size_gib: float, sweep: list[tuple[int, list]]) -> str:
    """One row per thread count and test; with several thread counts, a column of each test's
    speed against the first count's."""
    scaling = len(sweep) > 1
    first = {r.test: r.median for r in sweep[0][1]}
    rows = ["| model | size | threads | test | t/s (median) | min - max |" + (f" vs {sweep[0][0]} |" if scaling else ""),
            "|---|---:|---:|---|---:|---:|" + ("---:|" if scaling else "")]
    for n_threads, results in sweep:
        for r in results:
            lo, hi = r.spread
            rows.append(f"| {model_name} | {size_gib:.2f} GiB | {n_threads} | {r.test} | {r.median:.2f} | {lo:.2f} - {hi:.2f} |"
                        + (f" {r.median / first[r.test]:.2f}x |" if scaling else ""))
    return "\n".join(rows)


def _report(n_threads: int, results) -> dict:
    by_test = {("prompt" if r.test.startswith("pp") else "batched" if " x" in r.test else "gen"): r for r in results}
    return {
        "threads": n_threads,
        "prompt_tokens_per_s": by_test["prompt"].median if "prompt" in by_test else None,
        "gen_tokens_per_s": by_test["gen"].median if "gen" in by_test else None,
        "batched_gen_tokens_per_s": by_test["batched"].median if "batched" in by_test else None,
        "runs": {r.test: r.tokens_per_s for r in results},
    }


def bench(args: argparse.Namespace) -> int:
    import camelid
    from camelid.bench import run_bench
    from camelid.threads import set_threads

    counts = thread_counts(args.threads, args.threads_sweep)
    model = camelid.load(args.model, n_threads=counts[0], show_progress=args.output != "json")
    sweep = []
    for count in counts:
        n_threads = set_threads(count)
        sweep.append((n_threads, run_bench(model, args.n_prompt, args.n_gen, args.repetitions, args.batch_size,
                                           n_parallel=args.parallel)))
    size_bytes = os.path.getsize(model.path)
    if args.output == "json":
        settings = {"model": model.path, "model_size_bytes": size_bytes, "n_prompt": args.n_prompt, "n_gen": args.n_gen,
                    "repetitions": args.repetitions, "parallel": args.parallel}
        reports = [_report(n_threads, results) for n_threads, results in sweep]
        if len(reports) == 1:
            print(json.dumps({**settings, **reports[0]}))
        else:
            print(json.dumps({**settings, "threads": [r["threads"] for r in reports], "by_threads": reports}))
    else:
        print(_table(os.path.basename(model.path), size_bytes / 2**30, sweep))
    if args.profile:
        _print_profile(model, max(8, args.n_gen))
    return 0


def _print_profile(model, n_gen: int) -> None:
    from camelid.bench import profile_generation

    ms_per_token, rows = profile_generation(model, n_gen)
    print(f"\ngeneration profile: {ms_per_token:.2f} ms/token under cProfile, {n_gen} tokens")
    print("| function | ms/token | calls/token |\n|---|---:|---:|")
    for r in rows:
        calls = "" if r.calls_per_token != r.calls_per_token else f"{r.calls_per_token:.0f}"
        print(f"| {r.name} | {r.ms_per_token:.3f} | {calls} |")
