"""Files of the llama.cpp that the oracle is built from, read from llama-cpp-python's source
distribution, which tests/oracle/install.py keeps in ~/.cache/camelid/oracle/: the chat templates of
real models (models/templates/*.jinja) and src/llama-vocab.cpp. `LLAMA_CPP_SOURCE=path/to/llama.cpp`
reads a source tree instead.

    from oracle.source import llama_cpp_text
    template = llama_cpp_text("models/templates/Qwen-Qwen3-0.6B.jinja")
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from dependencies import missing
from oracle.install import VERSION, sdist_path

_PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"


def llama_cpp_text(relpath: str) -> str:
    """The text of one file of llama.cpp, by its path in llama.cpp's repository."""
    root = os.environ.get("LLAMA_CPP_SOURCE")
    if root:
        return (Path(root) / relpath).read_text(encoding="utf-8")
    path = sdist_path()
    if not path.exists():
        missing(f"llama.cpp's source is not kept at {path} (python tests/oracle/install.py downloads it)")
    with tarfile.open(path) as tar:
        member = tar.extractfile(_PREFIX + relpath)
        if member is None:
            raise FileNotFoundError(relpath)
        return member.read().decode("utf-8")
