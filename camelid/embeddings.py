"""Embeddings of texts: the last layer's output-normed hidden states, pooled and normalized as llama.cpp does.

The pooling comes from the file's `{arch}.pooling_type` (llama.cpp's enum: 0 none, 1 mean, 2 cls,
3 last, 4 rank); a chat model's file has none, and then the tokens are averaged, as llama-server
with --embeddings does. Normalizing divides by the Euclidean norm (llama.cpp's embd_normalize 2).
"""

from __future__ import annotations

import numpy as np

from camelid.errors import CamelidError

POOLING_TYPES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}  # llama.cpp's llama_pooling_type
POOLINGS = ("none", "mean", "cls", "last")  # the ones a decoder model's hidden states support
DEFAULT_POOLING = "mean"


def file_pooling(metadata: dict) -> str:
    """The pooling a GGUF file asks for (a name of POOLING_TYPES, or "type N" for one llama.cpp does not
    define), or mean when it says nothing."""
    arch = metadata.get("general.architecture", "")
    code = metadata.get(f"{arch}.pooling_type")
    if code is None:
        return DEFAULT_POOLING
    return POOLING_TYPES.get(int(code), f"type {code}")


def check_pooling(pooling: str) -> str:
    """pooling itself when camelid computes it, else a CamelidError that says which it does."""
    if pooling not in POOLINGS:
        raise CamelidError(f"camelid does not compute {pooling!r} pooling; use one of {', '.join(POOLINGS)}.")
    return pooling


def pool(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """hidden (n_tokens, n_embd) -> (n_embd,) for mean, cls (the first token) and last; itself for none."""
    if check_pooling(pooling) == "none":
        return hidden
    if pooling == "mean":
        return hidden.mean(axis=0, dtype=np.float32)
    return hidden[0] if pooling == "cls" else hidden[-1]


def normalize(v: np.ndarray) -> np.ndarray:
    """v divided by its Euclidean norm along the last axis (zero vectors stay zero)."""
    norm = np.sqrt(np.sum(np.square(v, dtype=np.float64), axis=-1, keepdims=True))
    return (v * np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0)).astype(np.float32)


def embed_tokens(network, tokens: list[int], pooling: str, normalized: bool = True) -> np.ndarray:
    """One text's embedding from its token ids: (n_embd,), or (n_tokens, n_embd) with pooling none."""
    if not tokens:
        raise CamelidError("cannot embed an empty text (no tokens); give some text.")
    hidden = network.hidden_states(tokens, network.new_cache(len(tokens)))
    out = pool(hidden, pooling)
    return normalize(out) if normalized else out
