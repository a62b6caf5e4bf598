"""The `camelid` command: a thin dispatcher over one module per subcommand."""

from __future__ import annotations

import argparse
import sys
import warnings

from camelid import __version__
from camelid.cli import bench
from camelid.cli import chat
from camelid.cli import convert
from camelid.cli import inspect
from camelid.cli import merge_lora
from camelid.cli import models
from camelid.cli import pull
from camelid.cli import quantize
from camelid.cli import run
from camelid.cli import serve
from camelid.errors import CamelidError

# One module per subcommand, each with register(subparsers); heavy imports stay inside the handlers.
SUBCOMMANDS = (
    chat,
    run,
    serve,
    convert,
    merge_lora,
    quantize,
    inspect,
    bench,
    pull,
    models,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camelid", description="Run LLaMA-family language models locally on the CPU.")
    parser.add_argument("--version", action="version", version=f"camelid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"camelid: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except CamelidError as exc:
        sys.stdout.flush()
        print(f"camelid: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
