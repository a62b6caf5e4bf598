"""Write tiny random LLaMA-family GGUF files for tests.

`write_tiny_model` writes a GGUF file with the tensor names, shapes and metadata keys llama.cpp
uses for the `llama` and `qwen2` architectures, filled with random weights of a sane scale, and
returns the weights it stored (as float64, after any F16 rounding) keyed by GGUF tensor name, so a
reference forward can use exactly the numbers the engine reads. `tiny_hparams` gives the resolved
hyperparameters (defaults filled in) that the same call writes into the file's metadata.

Conventions (llama.cpp's GGUF layout):
- A 2-D tensor is given to gguf-py in NumPy order (rows, cols) = (n_out, n_in); gguf-py reverses
  the shape, so the file's ggml shape is {n_in, n_out}, e.g. token_embd is {n_embd, n_vocab}.
- 1-D tensors (norm weights, biases) stay F32 even when weight_type is "F16", as llama.cpp's
  converter does; 2-D tensors take weight_type.
- `output.weight` is omitted when tied_output is true; llama.cpp then uses token_embd as the output.
- The tokenizer is a GPT-2 style byte-level BPE vocabulary: token id b (0..255) is byte b through
  GPT-2's bytes_to_unicode table, then one token per merge in MERGES (in merge order), then the
  special tokens, then filler control tokens up to n_vocab. `merges=[]` writes an empty merges array
  (valid GGUF; llama.cpp only requires the key to exist).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

__all__ = ["write_tiny_model", "tiny_hparams", "byte_tokens", "vocab_tokens", "MERGES", "SPECIAL_TOKENS"]

# A few BPE merges (GPT-2 byte-level text: "Ġ" is the space byte); each adds the merged token.
MERGES = ("Ġ t", "h e", "i n", "Ġ a", "e r", "Ġt he")
# Special tokens after the byte and merged tokens, in id order. <|endoftext|> is bos and eos.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
N_BASE_VOCAB = 256 + len(MERGES) + len(SPECIAL_TOKENS)

_ARCHS = ("llama", "qwen2")


def byte_tokens() -> list[str]:
    """GPT-2's bytes_to_unicode table as a list: entry b is the printable character for byte b."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


def vocab_tokens(n_vocab: int, merges=MERGES) -> list[str]:
    """Token texts by id: 256 byte tokens, one per merge, the specials, then <|extra_i|> fillers."""
    tokens = byte_tokens() + [m.replace(" ", "") for m in merges] + list(SPECIAL_TOKENS)
    if n_vocab < len(tokens):
        raise ValueError(f"n_vocab must be at least {len(tokens)} (bytes, merges, specials)")
    return tokens + [f"<|extra_{i}|>" for i in range(n_vocab - len(tokens))]


def tiny_hparams(
    arch: str = "llama",
    *,
    n_vocab: int = N_BASE_VOCAB,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 256,
    rope_base: float = 10000.0,
    rope_scale_linear: float | None = None,
    rms_eps: float | None = None,
    tied_output: bool = False,
    weight_type: str = "F32",
    seed: int = 0,
) -> dict[str, Any]:
    """The resolved hyperparameters a `write_tiny_model` call with these arguments writes.

    Float values are the float32-rounded numbers stored in the file (GGUF stores them as float32),
    so a float64 reference computes with what the engine reads.
    """
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {_ARCHS}, got {arch!r}")
    if weight_type not in ("F32", "F16"):
        raise ValueError(f"weight_type must be 'F32' or 'F16', got {weight_type!r}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be a multiple of n_head, and n_head of n_head_kv")
    head_dim = n_embd // n_head
    if head_dim % 2:
        raise ValueError("head_dim must be even for RoPE")
    if rms_eps is None:
        rms_eps = 1e-6 if arch == "qwen2" else 1e-5
    return dict(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=n_ff,
        n_ctx_train=n_ctx_train,
        rope_base=float(np.float32(rope_base)),
        rope_scale_linear=None if rope_scale_linear is None else float(np.float32(rope_scale_linear)),
        # llama.cpp: LLM_ARCH_LLAMA -> LLAMA_ROPE_TYPE_NORM (adjacent pairs),
        # LLM_ARCH_QWEN2 -> LLAMA_ROPE_TYPE_NEOX (pairs offset by head_dim/2).
        rope_type="neox" if arch == "qwen2" else "norm",
        rms_eps=float(np.float32(rms_eps)),
        qkv_bias=arch == "qwen2",
        tied_output=tied_output,
        weight_type=weight_type,
        seed=seed,
    )


class _Writer(gguf.GGUFWriter):
    """GGUFWriter that can also write an empty typed array (GGUF allows count 0; gguf-py refuses)."""

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
            out = bytearray()
            if add_vtype:
                out += self._pack("I", vtype)
            out += self._pack("I", sub_type)
            out += self._pack("Q", 0)
            return bytes(out)
        return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)


def _random_weights(hp: dict[str, Any]) -> dict[str, np.ndarray]:
    """Random float32 weights, keyed by GGUF tensor name, in NumPy (n_out, n_in) order.

    Scales are chosen so activations stay O(1): RMSNorm outputs have rms 1, so a projection with
    entries of std s over n_in inputs has outputs of std s*sqrt(n_in). q/k use a larger s so the
    attention scores (std ~ 2) give a non-uniform softmax, which makes RoPE and the mask matter;
    output/embedding rows give logits of std ~ 2-3, so the argmax is well separated.
    """
    rng = np.random.default_rng(hp["seed"])
    n_vocab, n_embd, n_ff = hp["n_vocab"], hp["n_embd"], hp["n_ff"]
    hd, nh, nkv = hp["head_dim"], hp["n_head"], hp["n_head_kv"]

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_w(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, np.ndarray] = {}
    w["token_embd.weight"] = normal((n_vocab, n_embd), 0.35)  # (n_vocab, n_embd)
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm_w(n_embd)
        w[p + "attn_q.weight"] = normal((nh * hd, n_embd), 0.2)  # (n_head*head_dim, n_embd)
        w[p + "attn_k.weight"] = normal((nkv * hd, n_embd), 0.2)  # (n_head_kv*head_dim, n_embd)
        w[p + "attn_v.weight"] = normal((nkv * hd, n_embd), 0.12)
        if hp["qkv_bias"]:
            w[p + "attn_q.bias"] = normal(nh * hd, 0.2)
            w[p + "attn_k.bias"] = normal(nkv * hd, 0.2)
            w[p + "attn_v.bias"] = normal(nkv * hd, 0.1)
        w[p + "attn_output.weight"] = normal((n_embd, nh * hd), 0.1)  # (n_embd, n_head*head_dim)
        w[p + "ffn_norm.weight"] = norm_w(n_embd)
        w[p + "ffn_gate.weight"] = normal((n_ff, n_embd), 0.12)  # (n_ff, n_embd)
        w[p + "ffn_up.weight"] = normal((n_ff, n_embd), 0.12)  # (n_ff, n_embd)
        w[p + "ffn_down.weight"] = normal((n_embd, n_ff), 0.08)  # (n_embd, n_ff)
    w["output_norm.weight"] = norm_w(n_embd)
    if not hp["tied_output"]:
        w["output.weight"] = normal((n_vocab, n_embd), 0.35)  # (n_vocab, n_embd)
    return w


def write_tiny_model(path: str | Path, arch: str = "llama", *, merges=MERGES, **hparams) -> dict[str, np.ndarray]:
    """Write a tiny random `arch` model to `path` as GGUF; return its weights as float64.

    Keyword arguments are those of `tiny_hparams` (sizes, rope settings, tied_output, weight_type,
    seed). The returned dict maps each GGUF tensor name to a float64 copy of exactly the values
    stored (after F16 rounding for weight_type "F16"), in NumPy order (n_out, n_in). For a tied
    output there is no "output.weight" entry, as in the file.
    """
    hp = tiny_hparams(arch, **hparams)
    weight_type = hp["weight_type"]
    weights = _random_weights(hp)
    stored: dict[str, np.ndarray] = {}
    for name, t in weights.items():
        if weight_type == "F16" and t.ndim == 2:
            t = t.astype(np.float16)
        stored[name] = np.ascontiguousarray(t)

    writer = _Writer(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if weight_type == "F16" else gguf.LlamaFileType.ALL_F32
    )
    writer.add_context_length(hp["n_ctx_train"])
    writer.add_embedding_length(hp["n_embd"])
    writer.add_block_count(hp["n_layer"])
    writer.add_feed_forward_length(hp["n_ff"])
    writer.add_head_count(hp["n_head"])
    writer.add_head_count_kv(hp["n_head_kv"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_rope_freq_base(hp["rope_base"])
    writer.add_rope_dimension_count(hp["head_dim"])
    if hp["rope_scale_linear"] is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp["rope_scale_linear"])

    n_vocab = hp["n_vocab"]
    tokens = vocab_tokens(n_vocab, merges)
    n_normal = 256 + len(merges)
    types = [int(gguf.TokenType.NORMAL)] * n_normal + [int(gguf.TokenType.CONTROL)] * (n_vocab - n_normal)
    eot = tokens.index("<|endoftext|>")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_key_value(gguf.Keys.Tokenizer.MERGES, list(merges), gguf.GGUFValueType.ARRAY,
                         sub_type=gguf.GGUFValueType.STRING)
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)

    for name, t in stored.items():
        writer.add_tensor(name, t)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    return {name: t.astype(np.float64) for name, t in stored.items()}
