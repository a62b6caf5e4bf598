"""Write 2023 legacy LLaMA model files (ggml, ggmf v1, ggjt v1/v2/v3) for tests.

Written from the format as llama.cpp's 2023 writers produced it, independently of camelid's reader:
- convert-pth-to-ggml.py / convert.py (March-July 2023): magic as a little-endian int32, version
  (not for 'ggml'), hparams n_vocab, n_embd, n_mult, n_head, n_layer, n_rot = n_embd/n_head, ftype;
  then per SentencePiece piece: int32 length, text (<unk> as " \u2047 ", control pieces empty, byte
  pieces <0xXX> as the raw byte, U+2581 as a space), float32 score ('ggml': no score); then per
  tensor: int32 n_dims, name length, type, the dims reversed (ne[0] = columns), the name, for 'ggjt'
  zero padding to a multiple of 32 from the file start, then the data. Meta's tensor names.
- ggml.c's quantize_row_*_reference of each era (llama.cpp commits b9fd7eee5^, b9fd7eee5 = PR #1405,
  2d5db4837 = PR #1508): layout 1 (ggml, ggmf, ggjt v1) packs weights 2j, 2j+1 into byte j and
  rounds with roundf; layout 2 (ggjt v2) packs weights j, j+16 and rounds as (int)(x + 8.5f);
  Q4_0, Q4_1 and Q8_0 keep f32 scales until layout 3 (ggjt v3), where they become f16.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGICS = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}
# ggml_type ids and llama_ftype ids of 2023
TYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q4_2": 4, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8}
FTYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q4_2": 5, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}

# GGUF name -> Meta name (layer names with {i})
META_NAMES = {
    "token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight", "output.weight": "output.weight",
    "attn_q.weight": "layers.{i}.attention.wq.weight", "attn_k.weight": "layers.{i}.attention.wk.weight",
    "attn_v.weight": "layers.{i}.attention.wv.weight", "attn_output.weight": "layers.{i}.attention.wo.weight",
    "attn_norm.weight": "layers.{i}.attention_norm.weight", "ffn_gate.weight": "layers.{i}.feed_forward.w1.weight",
    "ffn_down.weight": "layers.{i}.feed_forward.w2.weight", "ffn_up.weight": "layers.{i}.feed_forward.w3.weight",
    "ffn_norm.weight": "layers.{i}.ffn_norm.weight",
}


def meta_name(gguf_name: str) -> str:
    if gguf_name.startswith("blk."):
        _, i, rest = gguf_name.split(".", 2)
        return META_NAMES[rest].format(i=i)
    return META_NAMES[gguf_name]


def layout_of(fmt: str, version: int) -> int:
    return 3 if (fmt, version) == ("ggjt", 3) else 2 if (fmt, version) == ("ggjt", 2) else 1


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _pack(codes: np.ndarray, layout: int) -> np.ndarray:
    """(n, 32) codes < 16 -> (n, 16) bytes: layout 1 pairs (2j, 2j+1), later layouts (j, j+16)."""
    codes = codes.astype(np.uint8)
    if layout == 1:
        return codes[:, 0::2] | (codes[:, 1::2] << 4)
    return codes[:, :16] | (codes[:, 16:] << 4)


def _scale(d: np.ndarray, f16: bool) -> np.ndarray:
    return d.astype(np.float16 if f16 else np.float32).reshape(len(d), 1).view(np.uint8)


def quantize(x: np.ndarray, kind: str, layout: int) -> np.ndarray:
    """float32 (n_rows, n_cols) -> (n_rows, row_bytes) uint8 blocks of `kind` as ggml.c of that layout made them."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_rows = x.shape[0]
    if kind == "F32":
        return x.view(np.uint8)
    if kind == "F16":
        return x.astype(np.float16).view(np.uint8)
    b = x.reshape(-1, 32)  # (n_blocks, 32)
    f16 = layout == 3 or kind in ("Q5_0", "Q5_1")
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind in ("Q4_0", "Q5_0"):
            levels = 8 if kind == "Q4_0" else 16
            amax_at = np.abs(b).argmax(axis=1)
            d = (b[np.arange(len(b)), amax_at] / np.float32(-levels)).astype(np.float32)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)[:, None]
            v = (b * inv).astype(np.float32)
            if layout == 1 and kind == "Q4_0":
                q = np.minimum(15, _roundf(v) + 8)
            else:
                q = np.minimum(2 * levels - 1, np.trunc((v + np.float32(levels + 0.5)).astype(np.float32)))
            parts = [_scale(d, f16)]
        elif kind in ("Q4_1", "Q5_1"):
            top = 15 if kind == "Q4_1" else 31
            lo, hi = b.min(axis=1), b.max(axis=1)
            d = ((hi - lo) / np.float32(top)).astype(np.float32)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)[:, None]
            v = ((b - lo[:, None]) * inv).astype(np.float32)
            if layout == 1 and kind == "Q4_1":
                q = _roundf(v)
            else:
                q = np.minimum(top, np.trunc((v + np.float32(0.5)).astype(np.float32)))
            parts = [_scale(d, f16), _scale(lo, f16)]
        elif kind == "Q8_0":
            d = (np.abs(b).max(axis=1) / np.float32(127)).astype(np.float32)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)[:, None]
            q = _roundf((b * inv).astype(np.float32))
            return np.concatenate([_scale(d, layout == 3), q.astype(np.int8).view(np.uint8)], axis=1).reshape(n_rows, -1)
        else:
            raise ValueError(kind)
    q = q.astype(np.uint8)
    if kind in ("Q5_0", "Q5_1"):
        qh = np.packbits(q >> 4, axis=1, bitorder="little")  # (n, 4): bit i = fifth bit of weight i
        parts.append(qh)
        q = q & 0x0F
    parts.append(_pack(q, layout))
    return np.concatenate(parts, axis=1).reshape(n_rows, -1)


def decode(raw: np.ndarray, kind: str, layout: int, f16_scales: bool = False) -> np.ndarray:
    """(n_rows, row_bytes) blocks of `kind` in `layout` -> float32 weights (n_rows, n_cols), as ggml.c of
    that layout decoded them; f16_scales rounds f32 scales to float16 first (what today's layout keeps).
    Arithmetic in float32 as ggml: d * q, or d * q + m."""
    n_rows = raw.shape[0]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if kind == "F32":
        return raw.view(np.float32).reshape(n_rows, -1)
    if kind == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(n_rows, -1)
    scale_t = np.float16 if layout == 3 or kind in ("Q5_0", "Q5_1") else np.float32
    n_scales = 2 if kind in ("Q4_1", "Q5_1") else 1
    ss = np.dtype(scale_t).itemsize
    size = {"Q4_0": 16, "Q4_1": 16, "Q5_0": 20, "Q5_1": 20, "Q8_0": 32}[kind] + n_scales * ss
    b = raw.reshape(-1, size)
    scales = [b[:, i * ss:(i + 1) * ss].copy().view(scale_t).astype(np.float32) for i in range(n_scales)]
    if f16_scales:
        scales = [s.astype(np.float16).astype(np.float32) for s in scales]
    body = b[:, n_scales * ss:]
    if kind == "Q8_0":
        q = body.view(np.int8).astype(np.float32)
    else:
        qh, qs = (body[:, :4], body[:, 4:]) if kind.startswith("Q5") else (None, body)
        if layout == 1:
            q = np.stack([qs & 15, qs >> 4], axis=-1).reshape(-1, 32)
        else:
            q = np.concatenate([qs & 15, qs >> 4], axis=1)
        if qh is not None:
            q = q | (np.unpackbits(qh, axis=1, bitorder="little") << 4)
        q = q.astype(np.float32) - {"Q4_0": 8, "Q5_0": 16}.get(kind, 0)
    w = scales[0] * q
    if n_scales == 2:
        w = w + scales[1]
    return w.astype(np.float32).reshape(n_rows, -1)


def vocab_texts(tokens: list[str], types: list[int]) -> list[bytes]:
    """The vocabulary texts convert.py wrote for SentencePiece pieces (types: GGUF token types)."""
    out = []
    for piece, ttype in zip(tokens, types):
        if ttype == 2:  # UNKNOWN
            out.append(" \u2047 ".encode())
        elif ttype == 3:  # CONTROL
            out.append(b"")
        elif ttype == 6:  # BYTE <0xXX>
            out.append(bytes([int(piece[3:-1], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode())
    return out


def write_legacy_model(path: str | Path, fmt: str, version: int, weights: dict[str, np.ndarray], hp: dict,
                       kind: str, tokens: list[str], scores: list[float], types: list[int],
                       *, kinds: dict[str, str] | None = None, raw_blocks: dict[str, tuple[int, np.ndarray]] | None = None) -> None:
    """Write a legacy model file.

    weights: GGUF name -> float32 array (NumPy order); hp: n_embd, n_mult, n_head, n_layer; kind: the
    type of the 2-D tensors ("F32", "F16", "Q4_0", ...; 1-D tensors are always F32); kinds: per-tensor
    overrides; raw_blocks: GGUF name -> (type id, raw bytes) written as they are. Tensor order as
    convert.py: token embedding, norm, output, then layer by layer.
    """
    layout = layout_of(fmt, version)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", MAGICS[fmt]))
        if fmt != "ggml":
            f.write(struct.pack("<i", version))
        n_embd, n_head = hp["n_embd"], hp["n_head"]
        ftype = hp.get("ftype", FTYPE_IDS.get(kind, 0))
        f.write(struct.pack("<7i", len(tokens), n_embd, hp["n_mult"], n_head, hp["n_layer"], n_embd // n_head, ftype))
        for text, score in zip(vocab_texts(tokens, types), scores):
            f.write(struct.pack("<i", len(text)) + text)
            if fmt != "ggml":
                f.write(struct.pack("<f", score))
        for name, w in weights.items():
            if raw_blocks and name in raw_blocks:
                type_id, data = raw_blocks[name]
            else:
                k = (kinds or {}).get(name, kind if w.ndim == 2 else "F32")
                type_id, data = TYPE_IDS[k], quantize(w.reshape(-1, w.shape[-1]), k, layout)
            sname = meta_name(name).encode()
            f.write(struct.pack("<3i", w.ndim, len(sname), type_id))
            f.write(struct.pack(f"<{w.ndim}i", *reversed(w.shape)))
            f.write(sname)
            if fmt == "ggjt":
                f.write(b"\0" * (-f.tell() % 32))
            f.write(np.ascontiguousarray(data).tobytes())
