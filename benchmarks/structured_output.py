"""What constrained decoding costs: generation speed with a JSON schema against free text, same model and prompts.

    python benchmarks/structured_output.py [-m MODEL.gguf] [-t 2] [-r 3]

For each prompt, one reply constrained to a JSON schema (camelid.constrained, through the engine's token
mask) and one free reply of the same number of tokens (end-of-text ignored), alternating, r times.
Prints the median generation tokens/s of each and their ratio; issue 16's target is a slowdown below
15% on SmolLM2 (ratio >= 0.85). Also prints the median time to build the mask's matcher per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from compare_llama_cpp import cpu_name

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                   "role": {"enum": ["admin", "user", "guest"]},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["name", "age", "role", "tags"], "additionalProperties": False,
}
PROMPTS = ["Describe a librarian as JSON.", "Describe a pilot as JSON.", "Describe a farmer as JSON.", "Describe a chef as JSON."]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    args = ap.parse_args()

    import camelid
    from camelid.constrained import GrammarMask, json_schema_grammar
    from camelid.engine import Request, generate
    from camelid.sampling import SamplingParams

    model = camelid.load(args.model, n_threads=args.threads, show_progress=False)
    greedy = SamplingParams(temperature=0)
    grammar = json_schema_grammar(SCHEMA)
    GrammarMask(grammar, model.tokenizer, model.network.n_vocab)  # the vocabulary view is built once per tokenizer

    def run(prompt: list[int], n: int, mask) -> tuple[int, float]:
        request = Request(prompt, n, greedy, model.template.stop_strings, ignore_eos=mask is None, token_mask=mask)
        stats = [c.stats for c in generate(model.network, model.tokenizer, request, model.new_cache()) if c.stats][-1]
        return stats.generated_tokens, stats.generation_seconds

    constrained, free, builds = [], [], []
    for _ in range(args.repetitions):
        for text in PROMPTS:
            prompt = model.tokenize_chat(model.template.render([{"role": "user", "content": text}], add_generation_prompt=True))
            t0 = time.perf_counter()
            mask = GrammarMask(grammar, model.tokenizer, model.network.n_vocab)
            builds.append(time.perf_counter() - t0)
            n, seconds = run(prompt, 300, mask)
            constrained.append(n / seconds)
            n_free, seconds = run(prompt, n, None)
            free.append(n_free / seconds)
    c, f = statistics.median(constrained), statistics.median(free)
    print(f"# {time.strftime('%Y-%m-%d')}, {cpu_name()}, {args.threads} threads, {model.path.split('/')[-1]}, "
          f"{len(PROMPTS)} prompts x {args.repetitions}")
    print(f"JSON schema: {c:.1f} tok/s; free text, same lengths: {f:.1f} tok/s; ratio {c / f:.2f} (target >= 0.85); "
          f"matcher built in {statistics.median(builds) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
