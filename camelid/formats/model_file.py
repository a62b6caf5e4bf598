"""Open any model file camelid reads: GGUF, or a 2023 legacy ggml/ggmf/ggjt file, by its magic."""

from __future__ import annotations

import os

from camelid.formats.gguf import GGUFFile, check_model_path, open_gguf
from camelid.formats.gguf_split import open_split, split_count
from camelid.formats.legacy import is_legacy, open_legacy


def open_model_file(path: str | os.PathLike, show_progress: bool = True) -> GGUFFile:
    """Open a GGUF file, or a legacy 2023 LLaMA file seen through the same GGUFFile interface.

    A legacy file gets GGUF metadata keys, GGUF tensor names and today's block layouts (see
    camelid.formats.legacy.open_legacy; show_progress shows a bar while old blocks are converted).
    Any part of a split GGUF model (PREFIX-00001-of-00003.gguf) opens the whole model.
    Raises CamelidError for a missing, unreadable, unknown, truncated or malformed file.
    """
    path = check_model_path(path)
    if is_legacy(path):
        return open_legacy(path, show_progress=show_progress)
    gguf = open_gguf(path)
    if split_count(gguf.metadata) > 1:
        return open_split(gguf)
    return gguf
