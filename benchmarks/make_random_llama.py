"""Write LLaMA-shaped GGUF files with random quantized weights, to measure speed without a download.

    python benchmarks/make_random_llama.py OUT_DIR [--shape 1.1b|7b|all] [--type q4_0|q4_k|all]

Shapes: "1.1b" is TinyLlama-1.1B's (2048 wide, 22 layers, 32 heads, 4 KV heads, FFN 5632) and "7b" is
LLaMA-7B's (4096 wide, 32 layers, 32 heads, FFN 11008); both with LLaMA's 32000-token SentencePiece
vocabulary, taken from llama.cpp's test vocabulary in tests/data/vocab. The weights are random
blocks with scales chosen so activations stay finite; the text they generate is noise, the speed is
a real model's. Norms are float32, every matrix is the chosen type (written one tensor at a time).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from camelid.formats.gguf import open_gguf
from camelid.formats.gguf_writer import MetadataValue, PlannedTensor, metadata_from_gguf, write_gguf

T = GGMLQuantizationType
VOCAB = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "vocab", "ggml-vocab-llama-spm.gguf")

SHAPES = {  # n_embd, n_layer, n_head, n_head_kv, n_ff
    "1.1b": (2048, 22, 32, 4, 5632),
    "7b": (4096, 32, 32, 32, 11008),
}
TYPES = {"q4_0": T.Q4_0, "q4_k": T.Q4_K}


def random_blocks(rng: np.random.Generator, t: T, n_rows: int, n_cols: int) -> np.ndarray:
    """(n_rows, row_bytes) uint8 of random blocks whose f16 scales are about 1 / (8 sqrt(n_cols)).

    Q4_0 block: f16 d then 16 bytes of nibbles. Q4_K super-block: f16 d, f16 dmin, 12 bytes of 6-bit
    scales and mins, 128 bytes of nibbles.
    """
    block_size, type_size = GGML_QUANT_SIZES[t]
    blocks = rng.integers(0, 256, size=(n_rows * (n_cols // block_size), type_size), dtype=np.uint8)
    d = np.float16(1.0 / (8.0 * np.sqrt(n_cols)))
    blocks[:, 0:2] = np.frombuffer(d.tobytes(), np.uint8)
    if t == T.Q4_K:
        blocks[:, 0:2] = np.frombuffer(np.float16(float(d) / 32).tobytes(), np.uint8)  # scales reach 63
        blocks[:, 2:4] = np.frombuffer(np.float16(float(d) / 8).tobytes(), np.uint8)
    return blocks.reshape(n_rows, -1)


def plan(shape: str, t: T, seed: int = 0) -> tuple[dict, list[PlannedTensor]]:
    n_embd, n_layer, n_head, n_head_kv, n_ff = SHAPES[shape]
    vocab = open_gguf(VOCAB)
    n_vocab = len(vocab.metadata["tokenizer.ggml.tokens"])
    head_dim = n_embd // n_head
    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    meta = {k: v for k, v in metadata_from_gguf(vocab.metadata, vocab.metadata_types).items() if k.startswith("tokenizer.")}
    meta.update({
        "general.name": MetadataValue(f"random LLaMA {shape} {t.name}", GGUFValueType.STRING),
        "general.file_type": MetadataValue({T.Q4_0: 2, T.Q4_K: 15}[t], u32),
        "llama.context_length": MetadataValue(4096 if shape == "7b" else 2048, u32),
        "llama.embedding_length": MetadataValue(n_embd, u32),
        "llama.block_count": MetadataValue(n_layer, u32),
        "llama.feed_forward_length": MetadataValue(n_ff, u32),
        "llama.attention.head_count": MetadataValue(n_head, u32),
        "llama.attention.head_count_kv": MetadataValue(n_head_kv, u32),
        "llama.rope.dimension_count": MetadataValue(head_dim, u32),
        "llama.rope.freq_base": MetadataValue(10000.0, f32),
        "llama.attention.layer_norm_rms_epsilon": MetadataValue(1e-5, f32),
        "llama.vocab_size": MetadataValue(n_vocab, u32),
    })
    rng = np.random.default_rng(seed)

    def matrix(name: str, n_out: int, n_in: int) -> PlannedTensor:
        return PlannedTensor(name, t, (n_out, n_in), lambda: random_blocks(rng, t, n_out, n_in))

    def norm(name: str) -> PlannedTensor:
        return PlannedTensor(name, T.F32, (n_embd,), lambda: np.ones(n_embd, np.float32))

    tensors = [matrix("token_embd.weight", n_vocab, n_embd)]
    for i in range(n_layer):
        b = f"blk.{i}."
        tensors += [
            norm(b + "attn_norm.weight"),
            matrix(b + "attn_q.weight", n_head * head_dim, n_embd),
            matrix(b + "attn_k.weight", n_head_kv * head_dim, n_embd),
            matrix(b + "attn_v.weight", n_head_kv * head_dim, n_embd),
            matrix(b + "attn_output.weight", n_embd, n_head * head_dim),
            norm(b + "ffn_norm.weight"),
            matrix(b + "ffn_gate.weight", n_ff, n_embd),
            matrix(b + "ffn_up.weight", n_ff, n_embd),
            matrix(b + "ffn_down.weight", n_embd, n_ff),
        ]
    tensors += [norm("output_norm.weight"), matrix("output.weight", n_vocab, n_embd)]
    return meta, tensors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--type", choices=[*TYPES, "all"], default="all")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for shape in SHAPES if args.shape == "all" else [args.shape]:
        for name in TYPES if args.type == "all" else [args.type]:
            path = os.path.join(args.out_dir, f"llama-{shape}-random-{name}.gguf")
            meta, tensors = plan(shape, TYPES[name])
            size = write_gguf(path, "llama", meta, tensors, progress=os.path.basename(path))
            print(f"{path}: {size / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
