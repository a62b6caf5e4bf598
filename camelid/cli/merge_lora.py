"""`camelid merge-lora`: merge PEFT LoRA adapters into a Hugging Face base model, streaming."""

from __future__ import annotations

import argparse

from camelid.errors import CamelidError


def register(sub) -> None:
    p = sub.add_parser(
        "merge-lora",
        help="merge LoRA adapters into a base model (GGUF or safetensors out)",
        description="Merge PEFT LoRA adapters (adapter_config.json + adapter_model.bin|safetensors) into a Hugging Face "
        "LLaMA checkpoint, in order, one tensor at a time. Adapters that ship a tokenizer and full embed_tokens/lm_head "
        "(Chinese-LLaMA-Alpaca) replace the base's vocabulary.",
    )
    p.add_argument("--base", required=True, metavar="BASE", help="base model: Hugging Face directory (config.json + weights) or Meta layout")
    p.add_argument("--lora", required=True, action="append", metavar="DIR",
                   help="LoRA adapter directory; repeat to apply several in order (e.g. LLaMA-Plus, then Alpaca-Plus)")
    p.add_argument("-o", "--outfile", required=True, metavar="OUT", help="output .gguf file, or directory for --format safetensors")
    p.add_argument("--outtype", default="f16", help="f32, f16, bf16, or (GGUF only) a quantized type such as q8_0, q4_0 (default: %(default)s)")
    p.add_argument("--format", choices=("gguf", "safetensors"), default=None,
                   help="output format (default: safetensors if OUT ends with /, else gguf)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from camelid.tools.merge_lora import merge_lora

    fmt = args.format or ("safetensors" if args.outfile.endswith(("/", "\\")) else "gguf")
    if fmt == "gguf" and args.outfile.endswith(("/", "\\")):
        raise CamelidError(f"-o {args.outfile} names a directory; give a .gguf file name, or use --format safetensors.")
    merge_lora(args.base, args.lora, args.outfile.rstrip("/\\") or args.outfile, outtype=args.outtype.lower(), fmt=fmt,
               progress=not args.no_progress)
    print(f"wrote {args.outfile}")
    return 0
