"""Split a GGUF file the way llama.cpp's gguf-split does, with the `gguf` package's own writer
(GGUFWriter(split_max_tensors=N)): the first part holds all the metadata, every part carries
split.no / split.count / split.tensors.count and its own tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from camelid.formats.gguf import open_gguf


def write_split(src: Path, out: Path, max_tensors: int) -> list[Path]:
    """Write `src` as OUT-00001-of-0000N.gguf, ... with at most max_tensors tensors a part; return the parts."""
    gf = open_gguf(src)
    writer = GGUFWriter(out, gf.metadata["general.architecture"], split_max_tensors=max_tensors)
    for key, value in gf.metadata.items():
        if key in ("general.architecture", "general.alignment") or key.startswith("GGUF."):
            continue
        vtype, item_type = gf.metadata_types[key]
        writer.add_key_value(key, value, vtype, item_type)
    for t in gf.tensors.values():
        data = np.ascontiguousarray(t.raw).reshape(*t.shape[:-1], t.raw.shape[-1])  # bytes, (..., row_bytes)
        writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.ggml_type)
    writer.write_header_to_file(out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    n = len(writer.tensors)
    return [out.with_name(f"{out.stem}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
