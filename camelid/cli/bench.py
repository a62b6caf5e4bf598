"""`camelid bench`: prompt and generation tokens/s of a model, like llama-bench."""

from __future__ import annotations

import argparse
import json
import os


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure prompt and generation speed (like llama-bench)",
                       description="Measure prompt processing and generation speed in tokens/s, as llama-bench does: "
                                   "random tokens, no sampling, a warm-up run, then -r repetitions.")
    p.add_argument("-m", "--model", help="GGUF model file, or a name to pull: qwen2.5:0.5b, hf.co/USER/REPO:Q4_K_M (default: the default model)")
    p.add_argument("-p", "--n-prompt", type=int, default=512, metavar="N", help="prompt tokens per prompt test (default 512; 0 skips it)")
    p.add_argument("-n", "--n-gen", type=int, default=128, metavar="N", help="tokens per generation test (default 128; 0 skips it)")
    p.add_argument("-b", "--batch-size", type=int, default=512, metavar="N", help="prompt tokens per forward pass (default 512)")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="threads (default: physical cores)")
    p.add_argument("-r", "--repetitions", type=int, default=5, metavar="N", help="repetitions of each test (default 5)")
    p.add_argument("-np", "--parallel", type=int, default=1, metavar="N",
                   help="also generate N sequences at once, one batched forward pass per step, as the server does "
                        "(tokens/s in total; default 1: no such test)")
    p.add_argument("-o", "--output", choices=("md", "json"), default="md", help="md: a table; json: one JSON object")
    p.add_argument("--profile", action="store_true", help="also profile generation: where each token's time goes")
    p.set_defaults(handler=bench)


def _table(model_name: str, size_gib: float, n_threads: int, results) -> str:
    rows = ["| model | size | threads | test | t/s (median) | min - max |", "|---|---:|---:|---|---:|---:|"]
    for r in results:
        lo, hi = r.spread
        rows.append(f"| {model_name} | {size_gib:.2f} GiB | {n_threads} | {r.test} | {r.median:.2f} | {lo:.2f} - {hi:.2f} |")
    return "\n".join(rows)


def bench(args: argparse.Namespace) -> int:
    import camelid
    from camelid.bench import run_bench
    from camelid.threads import set_threads

    model = camelid.load(args.model, n_threads=args.threads, show_progress=args.output != "json")
    n_threads = set_threads(args.threads)
    results = run_bench(model, args.n_prompt, args.n_gen, args.repetitions, args.batch_size, n_parallel=args.parallel)
    by_test = {("prompt" if r.test.startswith("pp") else "batched" if " x" in r.test else "gen"): r for r in results}
    size_gib = os.path.getsize(model.path) / 2**30
    if args.output == "json":
        report = {
            "model": model.path,
            "model_size_bytes": os.path.getsize(model.path),
            "threads": n_threads,
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "repetitions": args.repetitions,
            "prompt_tokens_per_s": by_test["prompt"].median if "prompt" in by_test else None,
            "gen_tokens_per_s": by_test["gen"].median if "gen" in by_test else None,
            "parallel": args.parallel,
            "batched_gen_tokens_per_s": by_test["batched"].median if "batched" in by_test else None,
            "runs": {r.test: r.tokens_per_s for r in results},
        }
        print(json.dumps(report))
    else:
        print(_table(os.path.basename(model.path), size_gib, n_threads, results))
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
