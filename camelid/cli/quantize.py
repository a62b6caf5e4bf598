"""`camelid quantize IN.gguf OUT.gguf TYPE`: requantize a model file, like llama.cpp's llama-quantize."""

from __future__ import annotations

import argparse

TYPES_HELP = "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K_S Q4_K_M (Q4_K) Q5_K_S Q5_K_M (Q5_K) Q6_K"


def register(sub) -> None:
    p = sub.add_parser(
        "quantize", help="quantize a model file (Q4_0, Q8_0, Q4_K_M, ...)",
        description="Quantize a GGUF (or 2023 ggml/ggjt) model file to one of llama.cpp's file types, one tensor at a "
                    "time. Tensor types follow llama-quantize, including the Q4_K_M and Q5_K_M mixes.",
        epilog=f"TYPE (any case): {TYPES_HELP}. With --dry-run the output name may be left out.",
    )
    p.add_argument("input", metavar="IN.gguf", help="model file to read")
    p.add_argument("output", metavar="OUT.gguf", help="file to write")
    p.add_argument("type", metavar="TYPE", nargs="?", help="target type, e.g. q4_k_m")
    p.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="threads (default: the physical cores)")
    p.add_argument("--allow-requantize", action="store_true",
                   help="allow quantizing tensors that are already quantized (through float32; loses quality)")
    p.add_argument("--dry-run", action="store_true", help="print the types and the size it would write, write nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def run(args: argparse.Namespace) -> int:
    from camelid.errors import CamelidError
    from camelid.tools.quantize import quantize_file

    output, type_name = args.output, args.type
    if type_name is None:
        if not args.dry_run:
            raise CamelidError(f"give the target type after the output file, e.g. `camelid quantize {args.input} out.gguf q4_k_m`.")
        output, type_name = None, args.output
    if args.dry_run:
        output = None
    result = quantize_file(args.input, output, type_name, allow_requantize=args.allow_requantize,
                           n_threads=args.threads, progress=not args.quiet)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(result.type_counts.items(), key=lambda kv: -kv[1]))
    verb = "would write" if output is None else f"wrote {output}:"
    print(f"{result.file_type.name}: {verb} {result.output_bytes} bytes ({_mib(result.output_bytes)}; tensor data "
          f"was {_mib(result.input_bytes)})")
    print(f"tensors: {counts}")
    if output is None and result.n_requantized and not args.allow_requantize:
        print(f"note: {result.n_requantized} tensors are already quantized; the real run needs --allow-requantize")
    return 0
