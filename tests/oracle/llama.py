"""llama.cpp models as the oracle sees them; these functions run in the worker process only.

Each takes a spec (path, n_ctx, vocab_only) and opens the model once per kind (all-position logits
or last-token logits), keeping the few most recent open, like the tests did with llama_cpp.Llama.
"""

from __future__ import annotations

import ctypes
import os
from collections import OrderedDict

import llama_cpp
import numpy as np

N_THREADS = 2
_OPEN: OrderedDict[tuple, llama_cpp.Llama] = OrderedDict()
_KEEP = 3


def _model(spec, logits_all: bool = False) -> llama_cpp.Llama:
    path, n_ctx, vocab_only = spec
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, n_ctx, vocab_only, logits_all)
    if key in _OPEN:
        _OPEN.move_to_end(key)
        return _OPEN[key]
    while len(_OPEN) >= _KEEP:
        _OPEN.popitem(last=False)[1].close()
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=logits_all, vocab_only=vocab_only,
                          n_threads=N_THREADS, verbose=False, seed=1)
    _OPEN[key] = llm
    return llm


def _last_logits(llm) -> np.ndarray:
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def load(spec) -> None:
    """Open the file (raises when llama.cpp cannot load it)."""
    _model(spec)


def tokenize(spec, text: bytes, add_bos: bool, special: bool) -> list[int]:
    return _model(spec).tokenize(text, add_bos=add_bos, special=special)


def detokenize(spec, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
    """llama_detokenize(vocab, ids, remove_special, unparse_special)."""
    llm = _model(spec)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, len(buf), remove_special, unparse_special)
    if n < 0:
        raise ValueError(f"llama_detokenize needs {-n} bytes")
    return buf.raw[:n]


def vocab_info(spec) -> dict:
    """n_vocab, the end-of-generation ids, add_bos and the EOS id as llama.cpp's vocabulary reports them."""
    llm = _model(spec)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llm.n_vocab()
    return {"n_vocab": n, "eog_ids": {i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)},
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)), "eos": llm.token_eos()}


def logits(spec, tokens: list[int]) -> np.ndarray:
    """(len(tokens), n_vocab) float32: one batch with logits for every position."""
    llm = _model(spec, logits_all=True)
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def step_logits(spec, tokens: list[int], n_prompt: int) -> np.ndarray:
    """(len(tokens) - n_prompt + 1, n_vocab) float32: the last-token logits after the prompt batch
    and after each following token fed alone, as llama.cpp generates."""
    llm = _model(spec)
    llm.reset()
    llm.eval(tokens[:n_prompt])
    out = [_last_logits(llm)]
    for token in tokens[n_prompt:]:
        llm.eval([token])
        out.append(_last_logits(llm))
    return np.stack(out)


def greedy(spec, prompt: list[int], n: int, stop_at_eog: bool) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy continuation and the logits each token was chosen from, (len, n_vocab)."""
    llm = _model(spec)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    llm.reset()
    llm.eval(prompt)
    tokens, rows = [], []
    for _ in range(n):
        row = _last_logits(llm)
        token = int(np.argmax(row))
        if stop_at_eog and llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        tokens.append(token)
        rows.append(row)
        llm.eval([token])
    return tokens, np.stack(rows) if rows else np.zeros((0, llm.n_vocab()), np.float32)


def logits_after_shift(spec, tokens: list[int], keep: int, drop: int, next_token: int) -> np.ndarray:
    """(n_vocab,) float32: evaluate tokens, drop cells [keep, keep + drop) and move the rest back by
    drop (llama.cpp's K-shift, as its context shift does), then evaluate next_token."""
    llm = _model(spec, logits_all=True)
    llm.reset()
    llm.eval(tokens)
    memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
    if not llama_cpp.llama_memory_can_shift(memory):
        raise RuntimeError("llama.cpp cannot shift this model's memory")
    llama_cpp.llama_memory_seq_rm(memory, 0, keep, keep + drop)
    llama_cpp.llama_memory_seq_add(memory, 0, keep + drop, -1, -drop)
    llm.n_tokens = len(tokens) - drop
    llm.eval([next_token])
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


def embeddings(spec, texts: list[str], pooling: int, normalize: bool) -> np.ndarray:
    """(len(texts), n_embd) float32: llama.cpp's pooled embeddings of each text (BOS added, special
    tokens not parsed), pooling as llama_pooling_type (1 mean, 2 cls, 3 last)."""
    path, n_ctx, _ = spec
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, embedding=True, pooling_type=pooling,
                          n_threads=N_THREADS, verbose=False)
    try:
        return np.array([llm.embed(t, normalize=normalize) for t in texts], dtype=np.float32)
    finally:
        llm.close()


def quantize(src: str, dst: str, ftype: int, allow_requantize: bool) -> None:
    """llama_model_quantize(src, dst) to a llama_ftype; raises when llama.cpp refuses."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    params.nthread = N_THREADS
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to ftype {ftype}")
