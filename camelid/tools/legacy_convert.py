"""Convert a 2023 legacy LLaMA file (ggml, ggmf v1, ggjt v1-v3) to GGUF, one tensor at a time."""

from __future__ import annotations

import os

from camelid.errors import CamelidError
from camelid.formats.gguf_writer import PlannedTensor, write_gguf
from camelid.formats.legacy import read_legacy


def convert_legacy(src_path: str | os.PathLike, out_path: str | os.PathLike, progress: bool = True) -> None:
    """Write the legacy model at src_path as a GGUF v3 file at out_path, streaming.

    Metadata gets llama.cpp's keys and types (uint32 counts, float32 norm epsilon, the vocabulary
    with scores and token types); tensors get GGUF names and today's block layouts, with the f32
    block scales of ggjt v1/v2 and older rounded to f16 (see camelid.formats.legacy_blocks). Only
    one tensor is in memory at a time, and out_path appears only when the file is complete.
    """
    model = read_legacy(src_path)
    out_path = os.fspath(out_path)
    if os.path.exists(out_path) and os.path.samefile(out_path, model.path):
        raise CamelidError(f"the output {out_path} is the input file; choose another output name.")
    metadata = {k: v for k, v in model.metadata.items() if k != "general.architecture"}
    tensors = [PlannedTensor(t.name, t.ggml_type, t.shape, t.blocks) for t in model.tensors]
    write_gguf(out_path, "llama", metadata, tensors, progress=f"converting {model.description}" if progress else None)
