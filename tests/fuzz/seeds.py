"""The valid files every fuzz case starts from, built afresh (deterministically) by the tests' own writers.

Tensor data is all zeros: the readers under test look at headers, and zeros keep a saved case small.
Seeds by format:
- gguf: tiny llama (F32, BPE vocabulary, ChatML template, general.alignment), tiny qwen2 (F16, biases,
  tied output), llama with Q8_0 matrices, llama with a SentencePiece vocabulary (scores, byte tokens).
- legacy: ggjt v3 Q4_0, ggjt v1 Q4_0 (blocks converted on load), unversioned ggml F16 (no scores).
- safetensors: F16, F32, BF16 and I64 tensors with __metadata__.
- pytorch: torch.save of a state dict with views, a Parameter and several dtypes (needs torch).
- chat: a /save file of two turns.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fuzz import gguf_image as G
from fuzz import legacy_image

EXTENSIONS = {"gguf": ".gguf", "legacy": ".bin", "safetensors": ".safetensors", "pytorch": ".bin", "chat": ".json"}
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
_BLOCKS = {0: (1, 4), 1: (1, 2), 8: (32, 34)}  # ggml type id -> (weights per block, bytes per block)
SPM_PIECES = ("\u2581t", "he", "\u2581the", "in", "\u2581a", "er", "\u2581l", "la", "ma", "\u2581llama", "\u2581is")


@dataclass(frozen=True)
class Seed:
    name: str
    format: str  # a key of EXTENSIONS
    data: bytes
    image: object = None  # GGUFImage or LegacyImage for the structural mutators


def _zero_data(image: G.GGUFImage, types: dict[str, int] | None = None) -> G.GGUFImage:
    """Zero the tensor data (and retype tensors to types[name]), laying the tensors out afresh."""
    offset = 0
    for t in image.tensors:
        t.ggml_type = (types or {}).get(t.name, t.ggml_type)
        block, size = _BLOCKS[t.ggml_type]
        t.offset = offset
        offset += math.prod(t.ne[1:]) * t.ne[0] // block * size
        offset += -offset % 32
    image.data = bytes(offset)
    return image


def _set(image: G.GGUFImage, key: str, vtype: int, value, item_type: int | None = None) -> None:
    image.kvs = [kv for kv in image.kvs if kv.key != key] + [G.KV(key, vtype, value, item_type)]


def _tiny_gguf(directory: Path, name: str, arch: str, **hp) -> G.GGUFImage:
    from tiny_gguf import write_tiny_model

    path = directory / f"{name}.gguf"
    write_tiny_model(path, arch, **hp)
    return G.parse(path.read_bytes())


def gguf_seeds(directory: Path) -> list[Seed]:
    small = dict(n_embd=16, n_head=2, n_head_kv=1, n_ff=32, n_layer=1, n_ctx_train=64)
    llama = _zero_data(_tiny_gguf(directory, "llama", "llama", **small))
    _set(llama, "general.alignment", G.UINT32, 32)
    _set(llama, "tokenizer.chat_template", G.STRING, CHATML)
    qwen = _zero_data(_tiny_gguf(directory, "qwen2", "qwen2", weight_type="F16", tied_output=True, **small))
    q8 = _tiny_gguf(directory, "q8", "llama", **dict(small, n_embd=32, n_ff=64))
    q8 = _zero_data(q8, {t.name: 8 for t in q8.tensors if len(t.ne) == 2})
    spm = _zero_data(_tiny_gguf(directory, "spm", "llama", **small))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(SPM_PIECES[:7])
    _set(spm, "tokenizer.ggml.model", G.STRING, "llama")
    _set(spm, "tokenizer.ggml.tokens", G.ARRAY, tokens, G.STRING)
    _set(spm, "tokenizer.ggml.scores", G.ARRAY, [0.0] * 259 + [-float(i) for i in range(7)], G.FLOAT32)
    _set(spm, "tokenizer.ggml.token_type", G.ARRAY, [2, 3, 3] + [6] * 256 + [1] * 7, G.INT32)
    _set(spm, "tokenizer.ggml.bos_token_id", G.UINT32, 1)
    _set(spm, "tokenizer.ggml.eos_token_id", G.UINT32, 2)
    _set(spm, "tokenizer.ggml.unknown_token_id", G.UINT32, 0)
    _set(spm, "tokenizer.ggml.add_space_prefix", G.BOOL, True)
    spm.kvs = [kv for kv in spm.kvs if kv.key not in ("tokenizer.ggml.merges", "tokenizer.ggml.pre")]
    images = {"llama-f32": llama, "qwen2-f16": qwen, "llama-q8_0": q8, "llama-spm": spm}
    return [Seed(name, "gguf", image.to_bytes(), image) for name, image in images.items()]


def legacy_seeds(directory: Path) -> list[Seed]:
    import numpy as np
    from legacy_writer import write_legacy_model

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(SPM_PIECES)
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES)
    scores = [0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))]
    n_vocab, n_embd, n_ff = len(tokens), 32, 96
    shapes = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,), "output.weight": (n_vocab, n_embd)}
    for suffix, shape in (("attn_q", (n_embd, n_embd)), ("attn_k", (n_embd, n_embd)), ("attn_v", (n_embd, n_embd)),
                          ("attn_output", (n_embd, n_embd)), ("attn_norm", (n_embd,)), ("ffn_gate", (n_ff, n_embd)),
                          ("ffn_down", (n_embd, n_ff)), ("ffn_up", (n_ff, n_embd)), ("ffn_norm", (n_embd,))):
        shapes[f"blk.0.{suffix}.weight"] = shape
    weights = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    hp = dict(n_embd=n_embd, n_mult=32, n_head=2, n_layer=1)
    seeds = []
    for name, fmt, version, kind in (("ggjt3-q4_0", "ggjt", 3, "Q4_0"), ("ggjt1-q4_0", "ggjt", 1, "Q4_0"),
                                     ("ggml-f16", "ggml", 0, "F16")):
        path = directory / f"{name}.bin"
        write_legacy_model(path, fmt, version, weights, hp, kind, tokens, scores, types)
        data = path.read_bytes()
        seeds.append(Seed(name, "legacy", data, legacy_image.parse(data)))
    return seeds


def safetensors_seed() -> Seed:
    import numpy as np

    tensors = {"model.embed_tokens.weight": ("F16", [8, 4], np.arange(32, dtype=np.float16)),
               "model.norm.weight": ("F32", [4], np.ones(4, np.float32)),
               "lm_head.weight": ("BF16", [8, 4], np.full(32, 0x3F80, np.uint16)),
               "step": ("I64", [], np.array([7], np.int64))}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, shape, values) in tensors.items():
        blob = values.tobytes()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return Seed("safetensors", "safetensors", struct.pack("<Q", len(text)) + text + b"".join(blobs))


_TORCH_SAVE = """
import sys, collections, torch
g = torch.Generator().manual_seed(0)
base = torch.zeros(6, 8)
sd = collections.OrderedDict(f32=torch.zeros(3, 5), f16=torch.zeros(4, 7).half(), bf16=torch.zeros(2, 9).bfloat16(),
    transposed=torch.zeros(5, 3).t(), rows=base[2:5], cols=base[:, 3:6], param=torch.nn.Parameter(torch.zeros(4)),
    scalar=torch.tensor(3.5), ints=torch.arange(10, dtype=torch.int64))
torch.save(sd, sys.argv[1])
"""


def pytorch_seed(directory: Path) -> Seed | None:
    """torch.save's zip of a small state dict, written by torch in a child process; None without torch."""
    path = directory / "state_dict.bin"
    result = subprocess.run([sys.executable, "-c", _TORCH_SAVE, str(path)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        if "No module named 'torch'" in result.stderr:
            return None
        raise RuntimeError(f"torch.save of the seed failed: {result.stderr[-2000:]}")
    return Seed("state_dict", "pytorch", path.read_bytes())


def chat_seed() -> Seed:
    chat = {"camelid_chat": 1, "model": "tiny.gguf", "system": "You are terse.",
            "messages": [{"role": "user", "content": "Hello \u4f60\u597d"}, {"role": "assistant", "content": "Hi."}],
            "sampling": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0,
                         "repeat_last_n": 64, "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": None},
            "max_tokens": 64, "dropped_turns": 0}
    return Seed("chat", "chat", json.dumps(chat, ensure_ascii=False).encode())


def build_seeds(formats: tuple[str, ...] = tuple(EXTENSIONS)) -> list[Seed]:
    """Every seed of the given formats (pytorch is left out when torch is not installed)."""
    with tempfile.TemporaryDirectory(prefix="camelid-fuzz-seeds-") as tmp:
        directory = Path(tmp)
        seeds: list[Seed] = []
        if "gguf" in formats:
            seeds += gguf_seeds(directory)
        if "legacy" in formats:
            seeds += legacy_seeds(directory)
        if "safetensors" in formats:
            seeds.append(safetensors_seed())
        if "pytorch" in formats and os.environ.get("CAMELID_FUZZ_NO_TORCH") != "1":
            seed = pytorch_seed(directory)
            if seed is not None:
                seeds.append(seed)
        if "chat" in formats:
            seeds.append(chat_seed())
    return seeds
