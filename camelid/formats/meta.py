"""Meta's original LLaMA layout (params.json + consolidated.NN.pth), presented as a Hugging Face checkpoint.

Each `consolidated.NN.pth` holds one model-parallel slice: column-parallel weights (wq, wk, wv, w1,
w3, output) are split along rows, row-parallel ones (wo, w2) and LLaMA-1/2's ParallelEmbedding along
columns, norms are replicated. `MetaSource` concatenates the slices of one tensor when it is loaded,
renames it to its Hugging Face name, and reorders the rows of wq/wk from Meta's interleaved RoPE pairs
to Hugging Face's rotate-half order (what transformers' convert_llama_weights_to_hf does), so a
consumer handles both layouts alike.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from camelid.errors import CamelidError
from camelid.formats.hf import Checkpoint, TensorSource, open_tensor_files, read_json

_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)")


def _hf_name(meta_name: str) -> str | None:
    if meta_name in _TOP_NAMES:
        return _TOP_NAMES[meta_name]
    m = _LAYER_RE.fullmatch(meta_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None  # rope.freqs and other buffers


def interleaved_to_rotate_half(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k weight from Meta's order (pairs 2i, 2i+1 rotate together) to HF's (i, i + head_dim/2).

    w: (n_head * head_dim, n_in). Within each head, row 2i+j moves to j*head_dim/2 + i.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class MetaSource(TensorSource):
    """Tensors of Meta's shards under Hugging Face names and layout; slices are joined on load."""

    def __init__(self, shards: list[TensorSource], n_head: int, n_head_kv: int, dim: int):
        self._shards = shards
        self._n_head, self._n_head_kv, self._dim = n_head, n_head_kv, dim
        self._meta_names: dict[str, str] = {}
        for name in shards[0].names():
            hf = _hf_name(name)
            if hf is not None:
                self._meta_names[hf] = name
        for i, shard in enumerate(shards[1:], 1):
            missing = set(self._meta_names.values()) - set(shard.names())
            if missing:
                raise CamelidError(f"Meta shard {i} lacks tensor {sorted(missing)[0]}; the shards are not of one model.")

    def names(self) -> list[str]:
        return list(self._meta_names)

    def _axis(self, meta_name: str, shard_shape: tuple[int, ...]) -> int | None:
        if len(self._shards) == 1 or len(shard_shape) == 1:
            return None
        if meta_name == "tok_embeddings.weight":
            return 0 if shard_shape[1] == self._dim else 1  # LLaMA-3's embedding is split by vocabulary rows
        if meta_name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            return 1
        return 0

    def _meta(self, name: str) -> str:
        try:
            return self._meta_names[name]
        except KeyError:
            raise CamelidError(f"the checkpoint has no tensor named {name}.") from None

    def shape(self, name: str) -> tuple[int, ...]:
        meta = self._meta(name)
        shape = list(self._shards[0].shape(meta))
        axis = self._axis(meta, tuple(shape))
        if axis is not None:
            shape[axis] = sum(s.shape(meta)[axis] for s in self._shards)
        return tuple(shape)

    def load(self, name: str) -> np.ndarray:
        meta = self._meta(name)
        axis = self._axis(meta, self._shards[0].shape(meta))
        if axis is None:
            w = self._shards[0].load(meta)
        else:
            w = np.concatenate([s.load(meta) for s in self._shards], axis=axis)
        if name.endswith("q_proj.weight"):
            w = interleaved_to_rotate_half(w, self._n_head)
        elif name.endswith("k_proj.weight"):
            w = interleaved_to_rotate_half(w, self._n_head_kv)
        return w


def _context_length(params: dict) -> int:
    if "max_seq_len" in params:
        return int(params["max_seq_len"])
    # params.json of LLaMA-1/2 do not say; llama.cpp's legacy converter guesses from other settings.
    if float(params.get("rope_theta", 10000.0)) == 1e6:
        return 16384  # CodeLlama
    return 4096 if float(params.get("norm_eps", 1e-6)) == 1e-5 else 2048  # LLaMA-2 : LLaMA-1


def open_meta(d: Path) -> Checkpoint:
    """Open Meta's layout in directory `d`: params.json, consolidated.NN.pth shards, tokenizer.model here or in the parent."""
    params = read_json(d / "params.json")
    paths = sorted(d.glob("consolidated.*.pth"))
    if not paths:
        raise CamelidError(f"{d} has params.json but no consolidated.*.pth weight files.")
    numbers = {p.name.split(".")[1] for p in paths}
    missing = [f"consolidated.{i:02d}.pth" for i in range(len(paths) + 1) if f"{i:02d}" not in numbers]
    if len(missing) > 1 or (missing and missing[0] != f"consolidated.{len(paths):02d}.pth"):
        raise CamelidError(f"{d}: {missing[0]} is missing (found {', '.join(p.name for p in paths)}); "
                           "the model is split over consecutive shards from consolidated.00.pth. Copy all of them.")
    try:
        dim, n_head, n_layer = int(params["dim"]), int(params["n_heads"]), int(params["n_layers"])
    except (KeyError, TypeError, ValueError):
        raise CamelidError(f"{d / 'params.json'} lacks dim, n_heads or n_layers.") from None
    n_head_kv = int(params.get("n_kv_heads") or n_head)
    shards = [open_tensor_files([p]) for p in paths]
    tensors = MetaSource(shards, n_head, n_head_kv, dim)
    if "model.embed_tokens.weight" not in tensors.names() or "model.layers.0.mlp.gate_proj.weight" not in tensors.names():
        raise CamelidError(f"{paths[0]} lacks tok_embeddings.weight or layers.0.feed_forward.w1.weight; it is not a LLaMA checkpoint.")
    tokenizer_dir = d if (d / "tokenizer.model").is_file() else d.parent
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": dim,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "intermediate_size": tensors.shape("model.layers.0.mlp.gate_proj.weight")[0],
        "vocab_size": tensors.shape("model.embed_tokens.weight")[0],
        "rms_norm_eps": float(params.get("norm_eps", 1e-6)),
        "rope_theta": float(params.get("rope_theta", 10000.0)),
        "max_position_embeddings": _context_length(params),
        "tie_word_embeddings": False,
    }
    return Checkpoint(config, tensors, tokenizer_dir, d)
