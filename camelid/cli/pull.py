"""`camelid pull NAME`: download a model by name from Hugging Face (or a mirror) or ModelScope."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "pull", help="download a model by name (qwen2.5:0.5b, hf.co/USER/REPO:Q4_K_M, modelscope.cn/USER/REPO)",
        description="Download a GGUF model by name: a short name (`camelid pull --list`), hf.co/USER/REPO[:QUANT] or "
                    "USER/REPO[:QUANT] on Hugging Face, or modelscope.cn/USER/REPO[:QUANT] on ModelScope. QUANT defaults "
                    "to Q4_K_M. Set HF_ENDPOINT to use a Hugging Face mirror, HF_TOKEN for gated repositories, "
                    "HF_HUB_OFFLINE=1 to stay offline. An interrupted pull resumes where it stopped.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the model to pull")
    p.add_argument("--list", action="store_true", help="list the short names camelid knows, with their repositories")
    p.set_defaults(handler=pull)


def pull(args: argparse.Namespace) -> int:
    from camelid.errors import CamelidError
    from camelid.hub.names import CATALOG, parse_name
    from camelid.hub.pull import format_size, pull as pull_model

    if args.list:
        width = max(len(n) for n in CATALOG)
        for name, (source, repo, quant) in CATALOG.items():
            print(f"{name:<{width}}  hf.co/{repo}:{quant}" if source == "huggingface" else f"{name:<{width}}  modelscope.cn/{repo}:{quant}")
        return 0
    if not args.name:
        raise CamelidError("name a model to pull, e.g. `camelid pull qwen2.5:0.5b`; `camelid pull --list` shows the short names.")
    ref = parse_name(args.name)
    if ref is None:
        raise CamelidError(f"{args.name!r} is not a model name: write a short name (qwen2.5:0.5b), hf.co/USER/REPO[:QUANT] "
                           "or modelscope.cn/USER/REPO[:QUANT].")
    record = pull_model(ref)
    print(f"{record.name}: {record.path} ({format_size(record.size)}, {record.quant}, {record.architecture or '?'})")
    print(f"chat with it: camelid chat -m {record.name}")
    return 0
