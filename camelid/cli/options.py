"""Command-line options shared by the subcommands that load a model and sample from it."""

from __future__ import annotations

import argparse
import json

from camelid.chat.template import check_template_variables
from camelid.errors import CamelidError
from camelid.sampling import SamplingParams


def add_model_options(p: argparse.ArgumentParser, default_ctx: int | None) -> None:
    p.add_argument("-m", "--model", metavar="FILE", help="GGUF model file, or a name to pull: qwen2.5:0.5b, hf.co/USER/REPO:Q4_K_M (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("-hf", "--hf-repo", dest="model", type=hf_repo, metavar="USER/REPO[:QUANT]",
                   help="as llama.cpp's -hf: the model of a Hugging Face GGUF repository, pulled if missing (same as -m hf.co/USER/REPO)")
    p.add_argument("-c", "--ctx-size", "--ctx_size", dest="ctx_size", type=int, default=default_ctx, metavar="N",
                   help="context size in tokens" + (f" (default: {default_ctx})" if default_ctx else " (default: min(4096, the model's))"))


def add_template_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-template", help="override the file's chat template: chatml, llama2, alpaca, or Jinja source")
    p.add_argument("--chat-template-kwargs", metavar="JSON", type=template_kwargs, default={},
                   help="""extra variables for the chat template, as llama.cpp's: '{"enable_thinking": false}' turns off Qwen3's thinking""")


def template_kwargs(value: str) -> dict:
    """--chat-template-kwargs: a JSON object of template variables."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg} at character {e.pos}): {value!r}") from None
    try:
        return check_template_variables(parsed, "the value")
    except CamelidError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def hf_repo(value: str) -> str:
    """The -m name of llama.cpp's `-hf USER/REPO[:QUANT]`."""
    return value if value.lower().startswith(("hf.co/", "huggingface.co/")) else "hf.co/" + value


def add_sampling_options(p: argparse.ArgumentParser, **defaults) -> None:
    d = {**SamplingParams().__dict__, **defaults}
    p.add_argument("--temp", type=float, default=d["temperature"], help="temperature; 0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=d["top_k"], help="top-k sampling, 0 = off (default: %(default)s)")
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=d["top_p"], help="top-p sampling, 1.0 = off (default: %(default)s)")
    p.add_argument("--min-p", "--min_p", dest="min_p", type=float, default=d["min_p"], help="min-p sampling, 0 = off (default: %(default)s)")
    p.add_argument("--repeat-penalty", "--repeat_penalty", dest="repeat_penalty", type=float, default=d["repeat_penalty"],
                   help="penalize repeated tokens, 1.0 = off (default: %(default)s)")
    p.add_argument("--repeat-last-n", "--repeat_last_n", dest="repeat_last_n", type=int, default=d["repeat_last_n"],
                   help="last N tokens to penalize, 0 = off, -1 = context (default: %(default)s)")
    p.add_argument("--presence-penalty", dest="presence_penalty", type=float, default=d["presence_penalty"])
    p.add_argument("--frequency-penalty", dest="frequency_penalty", type=float, default=d["frequency_penalty"])
    p.add_argument("-s", "--seed", type=int, default=None, help="random seed; -1 or none = random")


def sampling_from_args(args: argparse.Namespace) -> dict:
    """Keyword arguments for SamplingParams from parsed options, validated (CamelidError if not)."""
    kwargs = dict(
        temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
        seed=None if args.seed is None or args.seed < 0 else args.seed,
    )
    SamplingParams(**kwargs)
    return kwargs
