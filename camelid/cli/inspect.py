"""`camelid inspect FILE`: metadata, tensor table, totals per type and tokenizer summary of a model file."""

from __future__ import annotations

import argparse
import json

_LONG = 8  # arrays longer than this are summarized: length, item type, first items


def register(sub) -> None:
    p = sub.add_parser(
        "inspect", help="show a model file's metadata, tensors and tokenizer",
        description="Show the metadata, tensor table (name, type, shape in ggml order, size), totals per type and "
                    "tokenizer of a GGUF or 2023 ggml/ggmf/ggjt model file.",
    )
    p.add_argument("file", metavar="FILE", help="model file (.gguf or legacy .bin), or a pulled model's name")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-tensors", action="store_true", help="leave out the per-tensor table")
    p.set_defaults(handler=run)


def _format(path: str) -> str:
    from camelid.formats.gguf import GGUF_MAGIC, LEGACY_MAGICS

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return "GGUF"
    return f"legacy {LEGACY_MAGICS.get(magic, 'unknown')}"


def _summary(value, vtype, item_type) -> object:
    """A JSON-able value; arrays longer than _LONG become {length, item_type, first}."""
    import numpy as np
    from gguf.constants import GGUFValueType

    if isinstance(value, list) and len(value) > _LONG:
        return {"array_length": len(value), "item_type": item_type.name if item_type else None, "first": value[:_LONG // 2]}
    if vtype == GGUFValueType.FLOAT32:
        return float(str(np.float32(value)))  # the shortest text that reads back as the same float32
    return value


def _tokenizer(meta: dict, tensors_vocab: int | None) -> dict:
    """The tokenizer summary; a value of the wrong type is shown as what it is, never used as what it should be."""
    from camelid.formats.metadata import MetadataReader, describe, is_integer

    read = MetadataReader(meta)
    tokens = read.peek("tokenizer.ggml.tokens", "list")
    special = {}
    for key, value in meta.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            role = key[len("tokenizer.ggml."):-len("_token_id")]
            if not is_integer(value):
                special[role] = {"id": describe(value), "text": None}
                continue
            text = tokens[value] if tokens is not None and 0 <= value < len(tokens) else None
            special[role] = {"id": value, "text": text if isinstance(text, str) else None}
    template = read.peek("tokenizer.chat_template", "text")
    merges = read.peek("tokenizer.ggml.merges", "list")
    return {
        "model": meta.get("tokenizer.ggml.model"),
        "pre": meta.get("tokenizer.ggml.pre"),
        "vocab_size": len(tokens) if tokens is not None else tensors_vocab,
        "merges": None if merges is None else len(merges),
        "scores": "tokenizer.ggml.scores" in meta,
        "special_tokens": special,
        "add_bos": meta.get("tokenizer.ggml.add_bos_token"),
        "add_eos": meta.get("tokenizer.ggml.add_eos_token"),
        "chat_template": None if template is None else {"chars": len(template)},
    }


def describe(path: str) -> dict:
    """Everything `camelid inspect` shows, as a JSON-able dict."""
    import math
    import os

    from camelid.formats.model_file import open_model_file

    gf = open_model_file(path, show_progress=False)
    tensors, totals = [], {}
    for t in gf.tensors.values():
        n, nbytes = math.prod(t.shape), int(t.raw.nbytes)
        tensors.append({"name": t.name, "type": t.ggml_type.name, "ne": list(reversed(t.shape)), "n_elements": n, "bytes": nbytes})
        tot = totals.setdefault(t.ggml_type.name, {"tensors": 0, "n_elements": 0, "bytes": 0})
        tot["tensors"] += 1
        tot["n_elements"] += n
        tot["bytes"] += nbytes
    n_params = sum(t["n_elements"] for t in tensors)
    n_bytes = sum(t["bytes"] for t in tensors)
    embd = gf.tensors.get("token_embd.weight")
    metadata = {k: _summary(v, *gf.metadata_types.get(k, (None, None))) for k, v in gf.metadata.items()}
    return {
        "path": path,
        "format": f"{_format(path)} v{gf.version}",
        "file_type": _file_type(gf.metadata),
        "file_bytes": os.path.getsize(path),
        "n_parameters": n_params,
        "tensor_bytes": n_bytes,
        "bits_per_weight": round(8 * n_bytes / n_params, 3) if n_params else None,
        "metadata": metadata,
        "tensors": tensors,
        "totals": dict(sorted(totals.items(), key=lambda kv: -kv[1]["bytes"])),
        "tokenizer": _tokenizer(gf.metadata, embd.shape[0] if embd is not None else None),
    }


def _short(value) -> str:
    if isinstance(value, dict) and "array_length" in value:
        first = ", ".join(json.dumps(v, ensure_ascii=False) for v in value["first"])
        return f"[{value['array_length']} x {value['item_type']}: {first}, ...]"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 100 else f"{text[:80]}... ({len(value) if isinstance(value, str) else len(text)} chars)"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:8.2f} {unit}"
    return f"{n:8d} B  "


def _file_type(meta: dict) -> str | None:
    from gguf.constants import LlamaFileType

    from camelid.formats.metadata import describe, is_integer

    ftype = meta.get("general.file_type")
    if ftype is None:
        return None
    if not is_integer(ftype):
        return f"unknown ({describe(ftype)})"
    try:
        return f"{LlamaFileType(ftype).name.removeprefix('MOSTLY_')} ({ftype})"
    except ValueError:
        return f"unknown ({ftype})"


def _print_text(d: dict, with_tensors: bool) -> None:
    print(f"{d['path']}: {d['format']}, {d['file_bytes']} bytes ({_size(d['file_bytes']).strip()})")
    print(f"file type {d['file_type']}, {d['n_parameters'] / 1e6:.1f}M parameters, {d['bits_per_weight']} bits per weight")
    print(f"\nmetadata ({len(d['metadata'])} keys):")
    for key, value in d["metadata"].items():
        print(f"  {key} = {_short(value)}")
    if with_tensors:
        width = max((len(t["name"]) for t in d["tensors"]), default=4)
        print(f"\ntensors ({len(d['tensors'])}; shape in ggml order, ne[0] = row length):")
        print(f"  {'name':<{width}}  {'type':<5}  {'shape':<20}  {'size':>12}")
        for t in d["tensors"]:
            print(f"  {t['name']:<{width}}  {t['type']:<5}  {str(t['ne']):<20}  {_size(t['bytes'])}")
    print("\ntotals by type:")
    for name, tot in d["totals"].items():
        print(f"  {name:<5} {tot['tensors']:5d} tensors  {tot['n_elements'] / 1e6:10.2f}M weights  {_size(tot['bytes'])}")
    tok = d["tokenizer"]
    print(f"\ntokenizer: model {tok['model']}, pre {tok['pre']}, vocab {tok['vocab_size']}, merges {tok['merges']}, "
          f"scores {'yes' if tok['scores'] else 'no'}")
    for role, s in tok["special_tokens"].items():
        print(f"  {role}: {s['id']} {json.dumps(s['text'], ensure_ascii=False) if s['text'] is not None else ''}")
    print(f"  add_bos {tok['add_bos']}, add_eos {tok['add_eos']}, chat template: "
          + (f"yes ({tok['chat_template']['chars']} chars)" if tok["chat_template"] else "no"))


def run(args: argparse.Namespace) -> int:
    from camelid.hub import resolve_model

    d = describe(resolve_model(args.file))
    if args.no_tensors:
        d.pop("tensors")
    if args.json:
        print(json.dumps(d, ensure_ascii=False, indent=1))
    else:
        _print_text(d, not args.no_tensors)
    return 0
