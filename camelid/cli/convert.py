"""`camelid convert`: a Hugging Face or Meta LLaMA checkpoint (or a 2023 ggml/ggjt file) to GGUF."""

from __future__ import annotations

import argparse
import os
import sys

from camelid.errors import CamelidError

OUTTYPE_NAMES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k")


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert a Hugging Face / Meta checkpoint to GGUF",
        description="Convert a LLaMA-family checkpoint to GGUF: a Hugging Face directory (config.json, *.safetensors or "
                    "pytorch_model*.bin, tokenizer.model or tokenizer.json) or Meta's layout (params.json, "
                    "consolidated.*.pth, tokenizer.model). PyTorch files are read without running any code from them.")
    p.add_argument("input", metavar="MODEL_DIR", help="checkpoint directory (or, with --from-legacy, a 2023 ggml/ggjt .bin file)")
    p.add_argument("-o", "--outfile", required=True, metavar="OUT.gguf", help="GGUF file to write")
    p.add_argument("--outtype", default="f16", type=str.lower, metavar="TYPE",
                   help=f"type of the 2-D weights: {', '.join(OUTTYPE_NAMES)} (default: %(default)s); norms stay f32")
    p.add_argument("--from-legacy", action="store_true", help="the input is a 2023 ggml / ggmf / ggjt file; rewrite it as GGUF")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if os.path.abspath(args.outfile) == os.path.abspath(args.input):
        raise CamelidError("the output file would overwrite the input; choose another -o path.")
    if args.from_legacy:
        from camelid.tools.legacy_convert import convert_legacy

        convert_legacy(args.input, args.outfile, progress=not args.no_progress)
    else:
        if args.outtype not in OUTTYPE_NAMES:
            raise CamelidError(f"unknown --outtype {args.outtype!r}; choose one of {', '.join(OUTTYPE_NAMES)}.")
        from camelid.formats.checkpoint import open_checkpoint
        from camelid.tools.convert import convert_checkpoint

        convert_checkpoint(open_checkpoint(args.input), args.outfile, args.outtype, progress=not args.no_progress)
    print(f"wrote {args.outfile} ({os.path.getsize(args.outfile) / 2**20:.1f} MiB)", file=sys.stderr)
    return 0
