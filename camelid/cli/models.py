"""`camelid list` and `camelid rm NAME`: the models pulled by name."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    p = sub.add_parser("list", help="list the models pulled by name",
                       description="List the models pulled by name: name, file, size, quantization, architecture.")
    p.set_defaults(handler=list_models)
    p = sub.add_parser("rm", help="remove a pulled model", description="Forget a pulled model and delete its files.")
    p.add_argument("names", nargs="+", metavar="NAME", help="model name as `camelid list` shows it")
    p.set_defaults(handler=remove)


def list_models(args: argparse.Namespace) -> int:
    from camelid.hub.pull import format_size
    from camelid.hub.registry import all_models

    rows = [("NAME", "FILE", "SIZE", "QUANT", "ARCH")]
    for m in all_models():
        name = m.name if m.is_complete() else f"{m.name} (files missing)"
        file = os.path.basename(m.filenames[0]) + (f" (+{len(m.filenames) - 1} parts)" if len(m.filenames) > 1 else "")
        rows.append((name, file, format_size(m.size), m.quant, m.architecture or "?"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def remove(args: argparse.Namespace) -> int:
    from camelid.errors import CamelidError
    from camelid.hub.names import parse_name
    from camelid.hub.pull import remove as remove_model

    for name in args.names:
        ref = parse_name(name)
        if ref is None:
            raise CamelidError(f"{name!r} is not a model name; `camelid list` shows the pulled models.")
        record = remove_model(ref)
        print(f"removed {record.name}")
    return 0
