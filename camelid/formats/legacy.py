"""Read llama.cpp's 2023 LLaMA model files (`ggml`, `ggmf` v1, `ggjt` v1, v2, v3) as a GGUFFile.

File layout (integers are 32-bit little-endian), as llama.cpp's loader and convert.py of 2023 had it:

    magic      'ggml' 0x67676d6c (March 2023, no version field) | 'ggmf' 0x67676d66 | 'ggjt' 0x67676a74
    version    ggmf: 1; ggjt: 1, 2 or 3 (absent for 'ggml')
    hparams    n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype (the file's llama_ftype)
    vocab      n_vocab x (length, text bytes, f32 score); 'ggml' files have no score
    tensors    until the end of the file: n_dims, name length, ggml type, ne[n_dims] (ne[0] = columns),
               name, ggjt only: zero padding to a multiple of 32 bytes from the start of the file, data

The vocabulary texts are those convert.py wrote from SentencePiece: U+2581 written as a space, a
byte piece <0xXX> as the byte itself, control pieces empty, <unk> as " \u2047 ". They are turned back
into GGUF pieces and token types as llama.cpp's own ggml-to-GGUF converter does. The files store no
norm epsilon, context length or key/value head count: LLaMA-1's values are used (RMS_EPS,
CONTEXT_LENGTH), and the key/value heads are read off the shape of wk (LLaMA-2 70B files).
The block layouts by version are in `legacy_blocks`.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from gguf.constants import GGMLQuantizationType, GGUFValueType, TokenType

from camelid.errors import CamelidError
from camelid.formats.gguf import GGUFFile, TensorInfo, check_model_path
from camelid.formats.gguf_writer import MetadataValue
from camelid.formats.metadata import shown
from camelid.formats.legacy_blocks import SpillFile, convert_blocks, convert_rows_into, file_block_bytes, needs_conversion

T = GGMLQuantizationType
V = GGUFValueType

# The 4 bytes a legacy file starts with (its u32 magic, little-endian) -> format name.
_FORMATS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt"}
_VERSIONS = {"ggmf": (1,), "ggjt": (1, 2, 3)}

RMS_EPS = 1e-6  # LLaMA-1's norm_eps; llama.cpp used 1e-6 for these files until July 2023
CONTEXT_LENGTH = 2048  # LLaMA-1's training context

# Tensor type ids of the files (ggml_type of 2023, the same numbers as today's).
_TYPES = {int(t): t for t in (T.F32, T.F16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
                               T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)}
# Types llama.cpp removed: tensor type id -> (name, when); the file-level llama_ftype ids differ.
_REMOVED_TYPES = {4: ("Q4_2", "in May 2023 (PR #1405)"), 5: ("Q4_3", "in April 2023 (PR #1218)")}
_REMOVED_FTYPES = {5: _REMOVED_TYPES[4], 6: _REMOVED_TYPES[5]}
_FTYPE_Q8_0 = 7
_FTYPE_NAMES = {0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 4: "MOSTLY_Q4_1_SOME_F16",
                7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S",
                12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M",
                16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K"}

# Meta's tensor names (used by the 2023 files) -> GGUF's.
_GLOBAL_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                 "output.weight": "output.weight"}
_LAYER_NAMES = {"attention.wq.weight": "attn_q.weight", "attention.wk.weight": "attn_k.weight",
                "attention.wv.weight": "attn_v.weight", "attention.wo.weight": "attn_output.weight",
                "attention_norm.weight": "attn_norm.weight", "feed_forward.w1.weight": "ffn_gate.weight",
                "feed_forward.w2.weight": "ffn_down.weight", "feed_forward.w3.weight": "ffn_up.weight",
                "ffn_norm.weight": "ffn_norm.weight"}
_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)")
_BYTE_IDS = range(3, 259)  # LLaMA's <0x00>..<0xFF> pieces
_SPACE = "\u2581"


@dataclass(frozen=True)
class LegacyTensor:
    """One tensor of a legacy file, under its GGUF name, with its bytes as stored in the file.

    raw is a read-only (n_rows, file_row_bytes) uint8 view of the mapped file; shape is in NumPy
    order (rows first); layout is the block layout generation (1, 2 or 3, see legacy_blocks).
    """

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    raw: np.ndarray
    offset: int  # of the data in the file
    layout: int

    @property
    def converted(self) -> bool:
        """Whether the blocks differ from today's layout (and need converting)."""
        return needs_conversion(self.ggml_type, self.layout)

    @property
    def row_bytes(self) -> int:
        block_size, type_size = file_block_bytes(self.ggml_type, 3)
        return self.shape[-1] // block_size * type_size

    @property
    def nbytes(self) -> int:
        """Bytes in today's layout."""
        return self.raw.shape[0] * self.row_bytes

    def blocks(self) -> np.ndarray:
        """The tensor in today's block layout, (n_rows, row_bytes) uint8: the file's view or a converted copy."""
        return convert_blocks(self.raw, self.ggml_type, self.layout, self.name)


@dataclass(frozen=True)
class LegacyModel:
    """A parsed legacy file: GGUF-style typed metadata and tensors still in the file's layout."""

    path: str
    format: str  # "ggml", "ggmf" or "ggjt"
    version: int  # 0 for "ggml"
    layout: int  # block layout generation, 1-3
    metadata: dict[str, MetadataValue]
    tensors: list[LegacyTensor]

    @property
    def description(self) -> str:
        """e.g. "ggjt v3"."""
        return self.format if self.format == "ggml" else f"{self.format} v{self.version}"


class _Cursor:
    """Sequential reads from the mapped file, with one clear message when the file ends early."""

    def __init__(self, buf: mmap.mmap, path: str, what: str):
        self.buf, self.path, self.what, self.pos = buf, path, what, 0

    def need(self, n: int, item: str) -> None:
        if self.pos + n > len(self.buf):
            raise CamelidError(f"{self.path} is a truncated {self.what} file: it ends inside {item}. "
                               "Download or convert it again.")

    def u32(self, n: int, item: str) -> tuple[int, ...]:
        self.need(4 * n, item)
        values = struct.unpack_from(f"<{n}I", self.buf, self.pos)
        self.pos += 4 * n
        return values

    def take(self, n: int, item: str) -> bytes:
        self.need(n, item)
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data


def _corrupt(path: str, what: str, problem: str) -> CamelidError:
    return CamelidError(f"{path} is a corrupted {what} file: {problem}. Download or convert it again.")


def _header(cur: _Cursor, path: str) -> tuple[str, int, dict[str, int]]:
    fmt = _FORMATS[cur.take(4, "the magic")]
    cur.what = f"legacy {fmt}"
    version = 0
    if fmt != "ggml":
        (version,) = cur.u32(1, "the version")
        if version not in _VERSIONS[fmt]:
            raise CamelidError(f"{path} is a legacy {fmt} file of unknown version {version}; camelid reads ggml, ggmf v1 "
                               "and ggjt v1, v2 and v3. Is it really a LLaMA model file?")
    cur.what = f"legacy {fmt}" + (f" v{version}" if version else "")
    names = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
    hp = dict(zip(names, cur.u32(7, "the hyperparameters")))
    if hp["ftype"] in _REMOVED_FTYPES:
        name, when = _REMOVED_FTYPES[hp["ftype"]]
        raise CamelidError(f"{path} is a {cur.what} file quantized to {name}, a type llama.cpp removed {when} that "
                           "nothing reads any more; quantize the original model again, e.g. "
                           "`camelid quantize model-f16.gguf out.gguf q4_0`.")
    if hp["n_embd"] == hp["n_layer"] == 0:
        raise CamelidError(f"{path} is a vocabulary-only {cur.what} file (convert.py --vocab-only): it has no weights. "
                           "Pass the model file itself.")
    for key in ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer"):
        if not 0 < hp[key] < 1 << 20:
            raise _corrupt(path, cur.what, f"{key} = {hp[key]}")
    head_dim, rest = divmod(hp["n_embd"], hp["n_head"])
    if rest or not (0 < hp["n_rot"] <= head_dim and hp["n_rot"] % 2 == 0):
        raise _corrupt(path, cur.what, f"n_embd {hp['n_embd']}, n_head {hp['n_head']} and n_rot {hp['n_rot']} do not fit together")
    return fmt, version, hp


def _read_vocab(cur: _Cursor, n_vocab: int, with_scores: bool) -> tuple[list[bytes], list[float] | None]:
    texts, scores = [], [] if with_scores else None
    for i in range(n_vocab):
        (n,) = cur.u32(1, f"vocabulary entry {i}")
        if n > 1 << 16:
            raise _corrupt(cur.path, cur.what, f"vocabulary entry {i} claims {n} bytes")
        texts.append(cur.take(n, f"vocabulary entry {i}"))
        if with_scores:
            cur.need(4, f"vocabulary entry {i}")
            scores.append(struct.unpack_from("<f", cur.buf, cur.pos)[0])
            cur.pos += 4
    return texts, scores


def legacy_vocab(texts: list[bytes], scores: list[float] | None) -> tuple[list[str], list[float], list[int]]:
    """GGUF pieces, scores and token types for the vocabulary texts of a 2023 file.

    As llama.cpp's convert_llama_ggml_to_gguf: ids 0, 1, 2 are <unk> (UNKNOWN), <s> and </s>
    (CONTROL); another empty text is a CONTROL token (named [control_ID] here, so it cannot match
    empty text); a one-byte text at ids 3..258 is the BYTE piece <0xXX>; anything else is NORMAL with
    spaces back to U+2581. Without scores ('ggml' files) a normal piece scores -id, the merge order
    of a BPE SentencePiece model such as LLaMA's, and pieces made only of U+2581 score -1e9 as in
    LLaMA's tokenizer.model: with these, LLaMA's vocabulary tokenizes as with its real scores.
    """
    tokens, out_scores, types = [], [], []
    for i, text in enumerate(texts):
        score = scores[i] if scores is not None else None
        if i < 3:
            piece, ttype = ("<unk>", "<s>", "</s>")[i], TokenType.UNKNOWN if i == 0 else TokenType.CONTROL
        elif not text:
            piece, ttype = f"[control_{i}]", TokenType.CONTROL
        elif len(text) == 1 and i in _BYTE_IDS:
            piece, ttype = f"<0x{text[0]:02X}>", TokenType.BYTE
        else:
            piece, ttype = text.decode("utf-8", errors="replace").replace(" ", _SPACE), TokenType.NORMAL
            if score is None:
                score = -1e9 if len(piece) > 1 and piece.strip(_SPACE) == "" else -float(i)
        tokens.append(piece)
        out_scores.append(0.0 if score is None else float(score))
        types.append(int(ttype))
    return tokens, out_scores, types


def _gguf_name(path: str, what: str, name: str, n_layer: int) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES and int(m.group(1)) < n_layer:
        return f"blk.{int(m.group(1))}.{_LAYER_NAMES[m.group(2)]}"
    raise CamelidError(f"{path}: tensor {shown(name)} is not a tensor of a LLaMA model ({what} file); camelid reads the LLaMA "
                       "family's legacy files only (other ggml models, e.g. GPT-2 or GPT-J, are not supported).")


def _read_tensors(cur: _Cursor, path: str, fmt: str, layout: int, hp: dict[str, int], data: np.ndarray) -> Iterator[LegacyTensor]:
    while cur.pos < len(cur.buf):
        n_dims, name_len, type_id = cur.u32(3, "a tensor header")
        if not 1 <= n_dims <= 2 or not 0 < name_len < 4096:
            raise _corrupt(path, cur.what, f"a tensor header at byte {cur.pos - 12} has {n_dims} dimensions and a {name_len}-byte name")
        ne = cur.u32(n_dims, "a tensor header")
        raw_name = cur.take(name_len, "a tensor name")
        name = raw_name.decode("utf-8", errors="replace")
        if type_id in _REMOVED_TYPES:
            removed, when = _REMOVED_TYPES[type_id]
            raise CamelidError(f"{path}: tensor {shown(name)} is {removed}, a type llama.cpp removed {when} that nothing reads "
                               "any more; quantize the original model again.")
        if type_id not in _TYPES:
            raise _corrupt(path, cur.what, f"tensor {shown(name)} has the unknown type id {type_id}")
        ggml_type = _TYPES[type_id]
        if layout == 1 and type_id == int(T.Q5_0) and hp["ftype"] == _FTYPE_Q8_0:
            ggml_type = T.Q8_0  # Q8_0 had id 6 for a day (llama.cpp 7a32fcb3b to 574406dc7, April 2023)
        if fmt == "ggjt":
            cur.pos += -cur.pos % 32
        block_size, type_size = file_block_bytes(ggml_type, layout)
        shape = tuple(reversed(ne))  # NumPy order: rows first
        if min(shape) == 0 or shape[-1] % block_size:
            raise _corrupt(path, cur.what, f"tensor {shown(name)} has shape {shape}, not whole {ggml_type.name} blocks of {block_size}")
        n_rows = shape[0] if n_dims == 2 else 1
        row_bytes = shape[-1] // block_size * type_size
        start = cur.pos
        cur.need(n_rows * row_bytes, f"the data of tensor {shown(name)}")
        cur.pos += n_rows * row_bytes
        raw = data[start:cur.pos].reshape(n_rows, row_bytes)
        yield LegacyTensor(_gguf_name(path, cur.what, name, hp["n_layer"]), ggml_type, shape, raw, start, layout)


def _check_shapes(path: str, what: str, hp: dict[str, int], tensors: dict[str, LegacyTensor]) -> tuple[int, int]:
    """Check the tensor set against the hyperparameters; return (n_ff, n_head_kv)."""
    n_vocab, n_embd, head_dim = hp["n_vocab"], hp["n_embd"], hp["n_embd"] // hp["n_head"]
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise CamelidError(f"{path}: the {what} file has no tok_embeddings.weight tensor; it is incomplete.")
    if emb.shape != (n_vocab, n_embd):
        raise CamelidError(
            f"{path}: tok_embeddings.weight has shape {emb.shape}, not ({n_vocab}, {n_embd}); this is one part of a model "
            "split over several files (13B and larger in March 2023) or a corrupted file. Merge the parts first, "
            "e.g. with llama.cpp's 2023 migrate script, or convert the original model again."
        )
    # LLaMA's FFN width: 2/3 of 4 * n_embd, rounded up to a multiple of n_mult (llama.cpp, 2023)
    n_ff = (2 * (4 * n_embd) // 3 + hp["n_mult"] - 1) // hp["n_mult"] * hp["n_mult"]
    gate, wk = tensors.get("blk.0.ffn_gate.weight"), tensors.get("blk.0.attn_k.weight")
    if gate is not None and len(gate.shape) == 2 and gate.shape[0] != n_ff:
        n_ff = gate.shape[0]  # LLaMA-2 70B's ffn_dim_multiplier, which n_mult cannot express
    n_head_kv = hp["n_head"] if wk is None or wk.shape[0] % head_dim else wk.shape[0] // head_dim
    kv = n_head_kv * head_dim

    def expected():  # lazily: n_layer may be up to 2^20 in a corrupt header that has one layer
        yield from (("token_embd.weight", (n_vocab, n_embd)), ("output_norm.weight", (n_embd,)),
                    ("output.weight", (n_vocab, n_embd)))
        for i in range(hp["n_layer"]):
            p = f"blk.{i}."
            yield from ((p + "attn_norm.weight", (n_embd,)), (p + "attn_q.weight", (n_embd, n_embd)),
                        (p + "attn_k.weight", (kv, n_embd)), (p + "attn_v.weight", (kv, n_embd)),
                        (p + "attn_output.weight", (n_embd, n_embd)), (p + "ffn_norm.weight", (n_embd,)),
                        (p + "ffn_gate.weight", (n_ff, n_embd)), (p + "ffn_up.weight", (n_ff, n_embd)),
                        (p + "ffn_down.weight", (n_embd, n_ff)))

    for name, shape in expected():
        t = tensors.get(name)
        if t is None:
            raise CamelidError(f"{path}: tensor {name} is missing from the {what} file; the file is incomplete or truncated.")
        if t.shape != shape:
            raise CamelidError(f"{path}: tensor {name} has shape {t.shape}, expected {shape} from the header; the {what} file is inconsistent.")
    return n_ff, n_head_kv


def _metadata(path: str, what: str, hp: dict[str, int], n_ff: int, n_head_kv: int,
              vocab: tuple[list[str], list[float], list[int]]) -> dict[str, MetadataValue]:
    """GGUF metadata with llama.cpp's key types (uint32 counts, float32 epsilon, typed arrays)."""
    tokens, scores, types = vocab
    u32 = lambda v: MetadataValue(int(v), V.UINT32)  # noqa: E731
    ftype = _FTYPE_NAMES.get(hp["ftype"], f"ftype {hp['ftype']}")
    return {
        "general.architecture": MetadataValue("llama", V.STRING),
        "general.name": MetadataValue(os.path.splitext(os.path.basename(path))[0], V.STRING),
        "general.description": MetadataValue(f"converted from legacy {what} {ftype} format", V.STRING),
        "general.file_type": u32(hp["ftype"]),
        "llama.context_length": u32(CONTEXT_LENGTH),
        "llama.embedding_length": u32(hp["n_embd"]),
        "llama.block_count": u32(hp["n_layer"]),
        "llama.feed_forward_length": u32(n_ff),
        "llama.rope.dimension_count": u32(hp["n_rot"]),
        "llama.attention.head_count": u32(hp["n_head"]),
        "llama.attention.head_count_kv": u32(n_head_kv),
        "llama.attention.layer_norm_rms_epsilon": MetadataValue(float(np.float32(RMS_EPS)), V.FLOAT32),
        "tokenizer.ggml.model": MetadataValue("llama", V.STRING),
        "tokenizer.ggml.pre": MetadataValue("default", V.STRING),
        "tokenizer.ggml.tokens": MetadataValue(tokens, V.ARRAY, V.STRING),
        "tokenizer.ggml.scores": MetadataValue([float(np.float32(s)) for s in scores], V.ARRAY, V.FLOAT32),
        "tokenizer.ggml.token_type": MetadataValue(types, V.ARRAY, V.INT32),
        "tokenizer.ggml.unknown_token_id": u32(0),
        "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2),
    }


def is_legacy(path: str | os.PathLike) -> bool:
    """Whether the file starts with the magic of a 2023 ggml, ggmf or ggjt file."""
    with open(path, "rb") as f:
        return f.read(4) in _FORMATS


def read_legacy(path: str | os.PathLike) -> LegacyModel:
    """Parse a legacy file: header, vocabulary and tensor table; tensor data stays in the memory map.

    Raises CamelidError for a truncated or corrupted file, an unknown version, a removed quantization
    type (Q4_2, Q4_3), a non-LLaMA ggml file, or a tensor set that does not fit the header.
    """
    path = check_model_path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4 or f.read(4) not in _FORMATS:
            raise CamelidError(f"{path} is not a legacy ggml/ggmf/ggjt model file.")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    data = np.frombuffer(buf, dtype=np.uint8)
    cur = _Cursor(buf, path, "legacy")
    fmt, version, hp = _header(cur, path)
    what = cur.what.removeprefix("legacy ")
    layout = 3 if (fmt, version) == ("ggjt", 3) else 2 if (fmt, version) == ("ggjt", 2) else 1
    texts, scores = _read_vocab(cur, hp["n_vocab"], with_scores=fmt != "ggml")
    tensors: dict[str, LegacyTensor] = {}
    for t in _read_tensors(cur, path, fmt, layout, hp, data):
        if t.name in tensors:
            raise _corrupt(path, cur.what, f"tensor {t.name} appears twice")
        tensors[t.name] = t
    n_ff, n_head_kv = _check_shapes(path, cur.what, hp, tensors)
    meta = _metadata(path, what, hp, n_ff, n_head_kv, legacy_vocab(texts, scores))
    return LegacyModel(path, fmt, version, layout, meta, list(tensors.values()))


def open_legacy(path: str | os.PathLike, show_progress: bool = True) -> GGUFFile:
    """Open a legacy file as a GGUFFile: GGUF metadata keys, GGUF tensor names, today's block layouts.

    Tensors already in today's layout (all of ggjt v3, and F16/F32 everywhere) are views of the
    memory-mapped file. Blocks of ggjt v1/v2 and older that changed since (Q4_0, Q4_1, Q8_0 scales;
    nibble order of v1) are converted once, and so are the unaligned tensors of ggml/ggmf files,
    into a temporary file that is mapped in turn (see legacy_blocks.SpillFile): disk space, not RAM.
    """
    model = read_legacy(path)
    copies = [t for t in model.tensors if t.converted or t.offset % 32]
    raws = {t.name: t.raw for t in model.tensors}
    if copies:
        from tqdm import tqdm

        spill = SpillFile(t.nbytes for t in copies)
        bar = tqdm(total=spill.total, desc=f"converting {model.description} blocks", unit="B", unit_scale=True,
                   unit_divisor=1024, leave=False, disable=None if show_progress else True)
        for t in copies:
            out = spill.take(t.raw.shape[0], t.row_bytes)
            convert_rows_into(t.raw, t.ggml_type, t.layout, out, f"{model.path}: tensor {t.name}")
            out.flags.writeable = False
            raws[t.name] = out
            bar.update(t.nbytes)
        bar.close()
    return GGUFFile(
        path=model.path,
        version=model.version,
        metadata={k: v.value for k, v in model.metadata.items()},
        tensors={t.name: TensorInfo(t.name, t.ggml_type, t.shape, raws[t.name]) for t in model.tensors},
        metadata_types={k: (v.vtype, v.item_type) for k, v in model.metadata.items()},
    )
