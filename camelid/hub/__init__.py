"""Models by name: pull from Hugging Face (and HF_ENDPOINT mirrors) or ModelScope, list, remove.

`resolve_model(value)` is what every -m goes through: an existing path stays a path; a name
(qwen2.5:0.5b, hf.co/USER/REPO:Q4_K_M, modelscope.cn/USER/REPO) gives the local copy of the model,
pulled first if it is missing.
"""

from __future__ import annotations

import os


def resolve_model(value: str | os.PathLike) -> str:
    """The file to load for a -m value: the path itself, or the local copy of a named model (pulled if missing).

    Raises CamelidError for names it cannot pull (see camelid.hub.pull.pull). A value that is neither
    an existing path nor a name is returned unchanged, for the loader's own "file not found".
    """
    value = os.fspath(value)
    if os.path.exists(value):
        return value
    from camelid.hub.names import parse_name

    ref = parse_name(value)
    if ref is None:
        return value
    from camelid.hub.pull import ensure

    return ensure(ref).path
