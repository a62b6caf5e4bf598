"""Write a synthetic LLaMA-7B-shaped Hugging Face checkpoint and a Chinese-LLaMA-Alpaca-shaped LoRA, cheaply.

    python benchmarks/make_7b_hf_checkpoint.py OUT_DIR [--layers 32] [--adapter-format bin|safetensors]

OUT_DIR/base: config.json with LLaMA-7B's dimensions (32 layers, hidden 4096, FFN 11008, 32 heads,
vocabulary 32000), a 32000-piece SentencePiece tokenizer.model, and float16 weights in safetensors
shards (about 13.5 GB). OUT_DIR/lora: what Chinese-LLaMA-Alpaca published: adapter_config.json (r=8,
lora_alpha=32, q/k/v/o/gate/up/down, modules_to_save embed_tokens and lm_head), adapter_model.bin (a
PyTorch zip pickle; needs torch) with float16 LoRA matrices and the full 49953-row embed_tokens and
lm_head, and a tokenizer.model of 49953 pieces (the base's plus 17953 CJK characters).

The values are a small random block tiled over each tensor, so writing 7B weights costs disk bandwidth,
not random-number generation. They are meaningless; the files exist to measure the merge's memory and
time (benchmarks/merge_memory.py).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from camelid.formats.safetensors_writer import SafetensorsTensor, write_sharded  # noqa: E402

HIDDEN, FFN, HEADS, VOCAB, ZH_VOCAB, RANK, ALPHA = 4096, 11008, 32, 32000, 49953, 8, 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BLOCK_ROWS = 61  # a prime, so tiles of different tensors do not line up

_BLOCK = (np.random.default_rng(0).standard_normal((BLOCK_ROWS, FFN)) * 0.02).astype(np.float16)


def tiled(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float16 `shape` (rows, cols) filled with rows of the random block, starting at row `seed`."""
    rows, cols = shape
    index = (np.arange(rows) + seed) % BLOCK_ROWS
    return _BLOCK[:, :cols][index]  # (rows, cols) float16, a fresh contiguous array


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {
        p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        p + "mlp.gate_proj.weight": (FFN, HIDDEN), p + "mlp.up_proj.weight": (FFN, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, FFN),
        p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
    }


def base_shapes(n_layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(n_layers):
        shapes.update(layer_shapes(i))
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def _produce(shape: tuple[int, ...], seed: int):
    if len(shape) == 1:
        return lambda: np.ones(shape, np.float16)
    return lambda: tiled(shape, seed)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _piece(text: str, score: float, kind: int) -> bytes:
    # ModelProto field 1: SentencePiece {1: piece, 2: score (float), 3: type (1 NORMAL, 2 UNKNOWN, 3 CONTROL, 6 BYTE)}
    raw = text.encode("utf-8")
    msg = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score) + b"\x18" + _varint(kind)
    return b"\x0a" + _varint(len(msg)) + msg


def spm_pieces(n_vocab: int) -> list[bytes]:
    """LLaMA's layout: <unk>, <s>, </s>, 256 byte pieces, then made-up word pieces with falling scores."""
    pieces = [_piece("<unk>", 0.0, 2), _piece("<s>", 0.0, 3), _piece("</s>", 0.0, 3)]
    pieces += [_piece(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(pieces) < n_vocab:
        word, k = "", i
        while True:
            word = letters[k % 26] + word
            k = k // 26 - 1
            if k < 0:
                break
        pieces.append(_piece("\u2581" + word, -float(i), 1))
        i += 1
    return pieces


def write_tokenizer(d: Path, pieces: list[bytes], added: dict[str, int] | None = None) -> None:
    # ModelProto {1: pieces, 2: TrainerSpec {3: model_type = 2 (BPE)}, 3: NormalizerSpec {3: add_dummy_prefix}}
    trainer = b"\x18\x02"
    normalizer = b"\x18\x01"
    proto = b"".join(pieces) + b"\x12" + _varint(len(trainer)) + trainer + b"\x1a" + _varint(len(normalizer)) + normalizer
    (d / "tokenizer.model").write_bytes(proto)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False}, indent=2))
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def write_base(d: Path, n_layers: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": n_layers, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "vocab_size": VOCAB, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float16",
    }
    (d / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(d, spm_pieces(VOCAB))
    tensors = [SafetensorsTensor(name, "f16", shape, _produce(shape, seed))
               for seed, (name, shape) in enumerate(base_shapes(n_layers).items())]
    write_sharded(d, tensors, progress="base")


def write_lora(d: Path, n_layers: int, fmt: str) -> None:
    """r=8 LoRA on every projection, full 49953-row embed_tokens/lm_head, float16, PEFT 0.2 names (no `.default`)."""
    d.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.05,
        "target_modules": list(TARGETS), "modules_to_save": ["embed_tokens", "lm_head"], "fan_in_fan_out": False,
        "bias": "none", "inference_mode": True, "base_model_name_or_path": "llama-7b-hf",
    }
    (d / "adapter_config.json").write_text(json.dumps(config, indent=2))
    cjk = [_piece(chr(0x4E00 + i), -float(VOCAB + i), 1) for i in range(ZH_VOCAB - VOCAB)]
    write_tokenizer(d, spm_pieces(VOCAB) + cjk)
    rng = np.random.default_rng(1)
    state: dict[str, np.ndarray] = {}
    for i in range(n_layers):
        for name, shape in layer_shapes(i).items():
            module = name.removesuffix(".weight")
            if module.rsplit(".", 1)[-1] not in TARGETS:
                continue
            n_out, n_in = shape
            state[f"base_model.model.{module}.lora_A.weight"] = (rng.standard_normal((RANK, n_in)) * 0.01).astype(np.float16)
            state[f"base_model.model.{module}.lora_B.weight"] = (rng.standard_normal((n_out, RANK)) * 0.01).astype(np.float16)
    state["base_model.model.model.embed_tokens.weight"] = tiled((ZH_VOCAB, HIDDEN), 7)
    state["base_model.model.lm_head.weight"] = tiled((ZH_VOCAB, HIDDEN), 11)
    if fmt == "bin":
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, d / "adapter_model.bin")
    else:
        from safetensors.numpy import save_file

        save_file(state, d / "adapter_model.safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to create base/ and lora/ in")
    parser.add_argument("--layers", type=int, default=32, help="number of layers (default: LLaMA-7B's %(default)s)")
    parser.add_argument("--adapter-format", choices=("bin", "safetensors"), default="bin",
                        help="adapter_model.bin (PyTorch, as Chinese-LLaMA-Alpaca shipped it) or .safetensors")
    args = parser.parse_args()
    write_lora(args.out / "lora", args.layers, args.adapter_format)
    write_base(args.out / "base", args.layers)
    print(f"wrote {args.out / 'base'} and {args.out / 'lora'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
