"""Write GGUF files of real model shapes with random quantized weights, to measure speed without a download.

    python benchmarks/make_random_llama.py OUT_DIR [--shape 1.1b|7b|qwen3-0.6b|all] [--type q4_0|q4_k|all]

Shapes: "1.1b" is TinyLlama-1.1B's (2048 wide, 22 layers, 32 heads, 4 KV heads, FFN 5632) and "7b" is
LLaMA-7B's (4096 wide, 32 layers, 32 heads, FFN 11008), both with LLaMA's 32000-token SentencePiece
vocabulary; "qwen3-0.6b" is Qwen3-0.6B's (architecture qwen3: 1024 wide, 28 layers, 16 heads of 128,
8 KV heads, FFN 3072, q/k norms, tied embeddings) with Qwen2's 151936-token BPE vocabulary. The
vocabularies are llama.cpp's test vocabularies in tests/data/vocab. The weights are random blocks
with scales chosen so activations stay finite; the text they generate is noise, the speed is a real
model's. Norms are float32, every matrix is the chosen type (written one tensor at a time).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from dataclasses import dataclass

from camelid.formats.gguf import open_gguf
from camelid.formats.gguf_writer import MetadataValue, PlannedTensor, metadata_from_gguf, write_gguf

T = GGMLQuantizationType
VOCABS = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "vocab")


@dataclass(frozen=True)
class Shape:
    arch: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int
    vocab: str  # file name in tests/data/vocab
    context_length: int
    rope_base: float
    rms_eps: float
    qk_norm: bool = False  # Qwen3's attn_q_norm / attn_k_norm, one weight per head dimension
    tied_output: bool = False  # no output.weight: the output matrix is token_embd


SHAPES = {
    "1.1b": Shape("llama", 2048, 22, 32, 4, 5632, 64, "ggml-vocab-llama-spm.gguf", 2048, 10000.0, 1e-5),
    "7b": Shape("llama", 4096, 32, 32, 32, 11008, 128, "ggml-vocab-llama-spm.gguf", 4096, 10000.0, 1e-5),
    "qwen3-0.6b": Shape("qwen3", 1024, 28, 16, 8, 3072, 128, "ggml-vocab-qwen2.gguf", 40960, 1e6, 1e-6,
                        qk_norm=True, tied_output=True),
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


def plan(shape_name: str, t: T, seed: int = 0) -> tuple[dict, list[PlannedTensor]]:
    shape = SHAPES[shape_name]
    n_embd, n_head, n_head_kv, head_dim, n_ff = shape.n_embd, shape.n_head, shape.n_head_kv, shape.head_dim, shape.n_ff
    vocab = open_gguf(os.path.join(VOCABS, shape.vocab))
    n_vocab = len(vocab.metadata["tokenizer.ggml.tokens"])
    u32, f32, a = GGUFValueType.UINT32, GGUFValueType.FLOAT32, shape.arch
    meta = {k: v for k, v in metadata_from_gguf(vocab.metadata, vocab.metadata_types).items() if k.startswith("tokenizer.")}
    meta.update({
        "general.name": MetadataValue(f"random {shape_name} {t.name}", GGUFValueType.STRING),
        "general.file_type": MetadataValue({T.Q4_0: 2, T.Q4_K: 15}[t], u32),
        f"{a}.context_length": MetadataValue(shape.context_length, u32),
        f"{a}.embedding_length": MetadataValue(n_embd, u32),
        f"{a}.block_count": MetadataValue(shape.n_layer, u32),
        f"{a}.feed_forward_length": MetadataValue(n_ff, u32),
        f"{a}.attention.head_count": MetadataValue(n_head, u32),
        f"{a}.attention.head_count_kv": MetadataValue(n_head_kv, u32),
        f"{a}.attention.key_length": MetadataValue(head_dim, u32),
        f"{a}.attention.value_length": MetadataValue(head_dim, u32),
        f"{a}.rope.dimension_count": MetadataValue(head_dim, u32),
        f"{a}.rope.freq_base": MetadataValue(shape.rope_base, f32),
        f"{a}.attention.layer_norm_rms_epsilon": MetadataValue(shape.rms_eps, f32),
        f"{a}.vocab_size": MetadataValue(n_vocab, u32),
    })
    rng = np.random.default_rng(seed)

    def matrix(name: str, n_out: int, n_in: int) -> PlannedTensor:
        return PlannedTensor(name, t, (n_out, n_in), lambda: random_blocks(rng, t, n_out, n_in))

    def norm(name: str, n: int = n_embd) -> PlannedTensor:
        return PlannedTensor(name, T.F32, (n,), lambda: np.ones(n, np.float32))

    tensors = [matrix("token_embd.weight", n_vocab, n_embd)]
    for i in range(shape.n_layer):
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
        if shape.qk_norm:
            tensors += [norm(b + "attn_q_norm.weight", head_dim), norm(b + "attn_k_norm.weight", head_dim)]
    tensors.append(norm("output_norm.weight"))
    if not shape.tied_output:
        tensors.append(matrix("output.weight", n_vocab, n_embd))
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
            prefix = "" if shape.startswith(SHAPES[shape].arch) else f"{SHAPES[shape].arch}-"
            path = os.path.join(args.out_dir, f"{prefix}{shape}-random-{name}.gguf")
            meta, tensors = plan(shape, TYPES[name])
            size = write_gguf(path, SHAPES[shape].arch, meta, tensors, progress=os.path.basename(path))
            print(f"{path}: {size / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
