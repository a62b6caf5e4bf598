"""`camelid run`: llama.cpp `main`'s command (2023 flags): complete a prompt, or chat with -i / -ins.

The flags live in run_flags, the conversation loop in run_session (imported when the command
runs, so `camelid --help` stays fast).
"""

from __future__ import annotations

import argparse

from camelid.cli import run_flags


def register(sub) -> None:
    p = run_flags.add_run_parser(sub)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from camelid.cli.run_session import run_session

    return run_session(args)
