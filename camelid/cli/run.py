"""`camelid run`: complete a prompt, in the manner of llama.cpp's `main`."""

from __future__ import annotations

import argparse
import sys

from camelid.cli.options import add_model_options, add_sampling_options, sampling_from_args
from camelid.errors import CamelidError

# llama.cpp's `main` defaults of 2023: a 512-token context, no token limit, temperature 0.8.
RUN_DEFAULT_CTX = 512


def register(sub) -> None:
    p = sub.add_parser("run", help="complete a prompt (llama.cpp main-style)", description="Print the model's completion of a prompt.")
    add_model_options(p, RUN_DEFAULT_CTX)
    p.add_argument("-p", "--prompt", help="prompt text")
    p.add_argument("-f", "--file", metavar="FILE", help="read the prompt from a UTF-8 text file")
    p.add_argument("-n", "--n-predict", "--n_predict", dest="n_predict", type=int, default=-1,
                   help="tokens to generate, -1 = until end of text or the context is full (default: %(default)s)")
    p.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=512, help="prompt tokens per batch (default: %(default)s)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating after the end-of-text token")
    p.add_argument("--no-display-prompt", action="store_true", help="print only the completion, not the prompt")
    add_sampling_options(p, repeat_penalty=1.1)
    p.set_defaults(handler=run)


def read_prompt(args: argparse.Namespace) -> str:
    if args.file:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise CamelidError(f"cannot read prompt file {args.file}: {exc.strerror}.") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CamelidError(f"prompt file {args.file} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8.") from None
        if args.prompt:
            text = args.prompt + text
        return text
    return args.prompt if args.prompt is not None else ""


def run(args: argparse.Namespace) -> int:
    import camelid

    if args.batch_size < 1:
        raise CamelidError("--batch-size must be at least 1.")
    prompt = read_prompt(args)
    sampling = sampling_from_args(args)
    model = camelid.load(args.model, n_ctx=args.ctx_size)
    tokens = model.tokenize(prompt, add_special=True, parse_special=True)
    if not tokens:
        raise CamelidError("the prompt is empty and this model adds no BOS token; give a prompt with -p or -f.")
    if not args.no_display_prompt:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    stats = None
    for chunk in model.stream_tokens(tokens, max_tokens=args.n_predict, ignore_eos=args.ignore_eos, **sampling):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        stats = chunk.stats or stats
    sys.stdout.write("\n")
    if stats is not None:
        print(
            f"\n[{stats.prompt_tokens} prompt tokens at {stats.prompt_tokens_per_s:.1f} tok/s, "
            f"{stats.generated_tokens} generated at {stats.generation_tokens_per_s:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0
