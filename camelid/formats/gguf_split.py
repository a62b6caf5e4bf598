"""Split GGUF models (llama.cpp's gguf-split): several files that load as one model.

Each part is a GGUF file of its own, named PREFIX-00001-of-00003.gguf, ..., and carries the keys
split.no (u16, 0-based), split.count (u16) and split.tensors.count (i32, tensors in all parts). The
first part holds all the model's metadata; every part has the tensor table of its own tensors, with
offsets into its own data section. Every part is memory-mapped, as llama.cpp does.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any

from camelid.errors import CamelidError
from camelid.formats.gguf import GGUFFile, open_gguf

SPLIT_NO = "split.no"
SPLIT_COUNT = "split.count"
SPLIT_TENSORS_COUNT = "split.tensors.count"
_PART_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_count(metadata: dict[str, Any]) -> int:
    """How many files the model is split into (1 for a model in one file)."""
    count = metadata.get(SPLIT_COUNT, 1)
    return count if isinstance(count, int) and count > 0 else 1


def part_path(prefix: str, no: int, count: int) -> str:
    """The path of part `no` (0-based) of `count`, as llama.cpp names it: PREFIX-%05d-of-%05d.gguf."""
    return f"{prefix}-{no + 1:05d}-of-{count:05d}.gguf"


def _prefix(path: str, count: int) -> str:
    folder, name = os.path.split(path)
    match = _PART_NAME.match(name)
    if match is None or int(match["count"]) != count:
        raise CamelidError(
            f"{path} is part of a model split into {count} files, but its name does not end in -0000N-of-{count:05d}.gguf, "
            "so the other parts cannot be found; keep the names gguf-split gave them."
        )
    return os.path.join(folder, match["prefix"])


def open_split(first: GGUFFile) -> GGUFFile:
    """The whole model from an opened part of a split GGUF model: the first part's metadata, every part's tensors.

    `first` may be any part; the others are found beside it by name. Raises CamelidError for a
    missing part, a part whose split.no or split.count disagrees with its name, a tensor found in
    two parts, or a total that differs from split.tensors.count.
    """
    count = split_count(first.metadata)
    prefix = _prefix(first.path, count)
    parts = []
    for no in range(count):
        path = part_path(prefix, no, count)
        if path == first.path:
            part = first
        elif not os.path.exists(path):
            raise CamelidError(f"{path} is missing: this model is split into {count} files, and all of them must be in {os.path.dirname(path) or '.'}.")
        else:
            part = open_gguf(path)
        if part.metadata.get(SPLIT_NO) != no or split_count(part.metadata) != count:
            raise CamelidError(
                f"{path} says it is part {part.metadata.get(SPLIT_NO)} of {part.metadata.get(SPLIT_COUNT)}, "
                f"but its name makes it part {no} of {count}; the parts do not belong together."
            )
        parts.append(part)
    tensors = {}
    for part in parts:
        for name, info in part.tensors.items():
            if name in tensors:
                raise CamelidError(f"{part.path}: tensor {name} is also in another part; the split model is corrupt.")
            tensors[name] = info
    expected = parts[0].metadata.get(SPLIT_TENSORS_COUNT)
    if expected is not None and expected != len(tensors):
        raise CamelidError(f"{parts[0].path}: the split model should have {expected} tensors but its {count} parts hold {len(tensors)}.")
    return replace(parts[0], tensors=tensors)
