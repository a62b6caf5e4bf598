"""`camelid chat`: an interactive chat in the terminal, streaming replies."""

from __future__ import annotations

import argparse
import sys

from camelid.cli.options import add_model_options, add_sampling_options, sampling_from_args

try:  # line editing and history for input()
    import readline  # noqa: F401
except ImportError:  # pragma: no cover - Windows
    pass

EXIT_COMMANDS = ("/exit", "/quit", "/bye")


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal", description="Chat with a model; Ctrl+C stops a reply, Ctrl+D or /exit quits.")
    add_model_options(p, None)
    p.add_argument("--system", "-sys", help="system prompt")
    p.add_argument("--chat-template", help="override the file's chat template: chatml, llama2, alpaca, or Jinja source")
    p.add_argument("-n", "--n-predict", dest="n_predict", type=int, default=1024, help="most tokens per reply (default: %(default)s)")
    add_sampling_options(p)
    p.set_defaults(handler=chat)


def chat(args: argparse.Namespace) -> int:
    import camelid

    sampling = sampling_from_args(args)
    model = camelid.load(args.model, n_ctx=args.ctx_size, chat_template=args.chat_template)
    session = model.chat(system=args.system, max_tokens=args.n_predict, **sampling)
    name = model.metadata.get("general.name") or model.path
    print(f"camelid chat with {name} ({model.n_ctx}-token context). Ctrl+C stops a reply; Ctrl+D or /exit quits.")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in EXIT_COMMANDS:
            return 0
        try:
            for chunk in session.send(text):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        stats = session.last_stats
        if stats is not None:
            print(f"[{stats.generated_tokens} tokens, {stats.generation_tokens_per_s:.1f} tok/s]", file=sys.stderr)
        sys.stdout.flush()
