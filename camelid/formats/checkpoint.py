"""Open a model checkpoint directory in whichever layout it has: Hugging Face or Meta's original one."""

from __future__ import annotations

import os
from pathlib import Path

from camelid.errors import CamelidError
from camelid.formats.hf import Checkpoint, open_hf_checkpoint
from camelid.formats.meta import open_meta


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a Hugging Face checkpoint directory or a Meta-layout one (params.json + consolidated.*.pth).

    A file path means the directory it is in. Raises CamelidError naming what is missing when the
    directory is neither. Only headers are read.
    """
    d = Path(path)
    if not d.exists():
        raise CamelidError(f"checkpoint not found: {d}.")
    if d.is_file():
        d = d.parent
    if (d / "config.json").is_file():
        return open_hf_checkpoint(d)
    if (d / "params.json").is_file():
        return open_meta(d)
    raise CamelidError(f"{d} is not a model checkpoint: it has neither config.json (Hugging Face) nor params.json "
                       "(Meta's consolidated.*.pth layout).")
