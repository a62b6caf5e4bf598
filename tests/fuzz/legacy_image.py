"""A 2023 legacy ggml/ggmf/ggjt file as an editable structure, written back with any lie in it.

Layout (u32 little-endian): magic, version (not for 'ggml'), hparams n_vocab, n_embd, n_mult, n_head,
n_layer, n_rot, ftype; per vocabulary entry: length, text, f32 score (not for 'ggml'); per tensor:
n_dims, name length, type, ne[n_dims], name, ggjt only: padding to 32 bytes from the file start, data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from fuzz.gguf_image import Field, pack_scalar

MAGICS = {"ggml": b"lmgg", "ggmf": b"fmgg", "ggjt": b"tjgg"}
HPARAMS = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")


@dataclass
class LegacyTensor:
    name: bytes
    ggml_type: int
    ne: list[int]  # ne[0] = columns
    data: bytes
    n_dims: int | None = None  # a lie about the dims; None writes len(ne)
    name_len: int | None = None


@dataclass
class LegacyImage:
    fmt: str
    version: int
    hparams: list[int]
    vocab: list[tuple[bytes, float]]
    tensors: list[LegacyTensor]
    magic: bytes | None = None
    fields: list[Field] = field(default_factory=list)

    def copy(self) -> "LegacyImage":
        """A copy whose lists (hparams, vocabulary, tensors, dims) can be edited."""
        tensors = [LegacyTensor(t.name, t.ggml_type, list(t.ne), t.data, t.n_dims, t.name_len) for t in self.tensors]
        return LegacyImage(self.fmt, self.version, list(self.hparams), list(self.vocab), tensors, self.magic)

    def to_bytes(self) -> bytes:
        out = bytearray(self.magic or MAGICS[self.fmt])
        self.fields = []
        if self.fmt != "ggml":
            self._u32(out, self.version, "version")
        for value in self.hparams:
            self._u32(out, value, "hparam")
        for text, score in self.vocab:
            self._u32(out, len(text), "length")
            out += text
            if self.fmt != "ggml":
                out += pack_scalar("<f", score)
        for t in self.tensors:
            self._u32(out, len(t.ne) if t.n_dims is None else t.n_dims, "n_dims")
            self._u32(out, len(t.name) if t.name_len is None else t.name_len, "length")
            self._u32(out, t.ggml_type, "ggml_type")
            for n in t.ne:
                self._u32(out, n, "ne")
            out += t.name
            if self.fmt == "ggjt":
                out += bytes(-len(out) % 32)
            out += t.data
        return bytes(out)

    def _u32(self, out: bytearray, value: int, kind: str) -> None:
        self.fields.append(Field(len(out), 4, kind))
        out += pack_scalar("<I", value)


def parse(buf: bytes) -> LegacyImage:
    """The image of a valid legacy file, as the seeds are."""
    fmt = {v: k for k, v in MAGICS.items()}[buf[:4]]
    pos = 4
    version = 0

    def u32() -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        return value

    if fmt != "ggml":
        version = u32()
    hparams = [u32() for _ in HPARAMS]
    vocab = []
    for _ in range(hparams[0]):
        n = u32()
        text = buf[pos:pos + n]
        pos += n
        score = 0.0
        if fmt != "ggml":
            (score,) = struct.unpack_from("<f", buf, pos)
            pos += 4
        vocab.append((text, score))
    tensors = []
    while pos < len(buf):
        n_dims, name_len, ggml_type = u32(), u32(), u32()
        ne = [u32() for _ in range(n_dims)]
        name = buf[pos:pos + name_len]
        pos += name_len
        if fmt == "ggjt":
            pos += -pos % 32
        n_bytes = _nbytes(ggml_type, ne, fmt, version)
        tensors.append(LegacyTensor(name, ggml_type, ne, buf[pos:pos + n_bytes]))
        pos += n_bytes
    return LegacyImage(fmt, version, hparams, vocab, tensors)


# (block size, bytes per block) by type id, for the seeds' types in their own layouts
_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34)}
_F32_SCALE_BLOCKS = {2: (32, 20), 3: (32, 24), 8: (32, 36)}


def _nbytes(ggml_type: int, ne: list[int], fmt: str, version: int) -> int:
    f32_scales = not (fmt == "ggjt" and version == 3)
    block, size = (_F32_SCALE_BLOCKS if f32_scales and ggml_type in _F32_SCALE_BLOCKS else _BLOCKS)[ggml_type]
    n = 1
    for d in ne[1:]:
        n *= d
    return n * (ne[0] // block) * size
