"""A GGUF file as an editable structure, written back byte for byte with whatever lies it holds.

`parse` reads a valid file (the seeds); `GGUFImage.to_bytes` writes any image, including counts,
types and offsets that do not fit the rest, and records where each numeric header field landed
(`Field` spans) so a byte-level mutator can aim at counts, lengths, type ids, dims and offsets.

Layout: magic, version u32, n_tensors u64, n_kv u64; n_kv of (key: u64 length + UTF-8, value type
u32, value); n_tensors of (name, n_dims u32, ne u64 x n_dims, type u32, offset u64); zero padding to
the alignment; tensor data. An array value is item type u32, count u64, items.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FORMATS = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f",
                  BOOL: "B", UINT64: "Q", INT64: "q", FLOAT64: "d"}
INT_TYPES = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)
FLOAT_TYPES = (FLOAT32, FLOAT64)


@dataclass
class KV:
    key: str | bytes
    vtype: int
    value: Any
    item_type: int | None = None  # for ARRAY


@dataclass
class Tensor:
    name: str | bytes
    ne: list[int]  # ggml order, ne[0] = row length
    ggml_type: int
    offset: int


@dataclass(frozen=True)
class Field:
    """Where a numeric header field was written: byte offset, size in bytes, and what it is."""

    offset: int
    size: int
    kind: str  # "version", "count", "length", "vtype", "n_dims", "ne", "ggml_type", "offset", "value"


@dataclass
class GGUFImage:
    version: int
    kvs: list[KV]
    tensors: list[Tensor]
    data: bytes  # the tensor data section (after the aligned header)
    magic: bytes = b"GGUF"
    n_kv: int | None = None  # a lie about the count; None writes len(kvs)
    n_tensors: int | None = None
    fields: list[Field] = field(default_factory=list)

    def copy(self) -> "GGUFImage":
        """A copy whose lists (keys, tensors, dims) can be edited; values are shared, so mutators replace them."""
        return GGUFImage(self.version, [KV(kv.key, kv.vtype, kv.value, kv.item_type) for kv in self.kvs],
                         [Tensor(t.name, list(t.ne), t.ggml_type, t.offset) for t in self.tensors], self.data,
                         self.magic, self.n_kv, self.n_tensors)

    def alignment(self) -> int:
        for kv in self.kvs:
            if kv.key == "general.alignment" and isinstance(kv.value, int) and kv.value > 0:
                return kv.value
        return 32

    def to_bytes(self) -> bytes:
        """The file; fills `fields` with the spans of its numeric header fields."""
        out = bytearray(self.magic)
        self.fields = []
        self._put(out, "<I", self.version, "version")
        self._put(out, "<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors, "count")
        self._put(out, "<Q", len(self.kvs) if self.n_kv is None else self.n_kv, "count")
        for kv in self.kvs:
            self._string(out, kv.key)
            self._put(out, "<I", kv.vtype, "vtype")
            self._value(out, kv.vtype, kv.value, kv.item_type)
        for t in self.tensors:
            self._string(out, t.name)
            self._put(out, "<I", len(t.ne), "n_dims")
            for n in t.ne:
                self._put(out, "<Q", n, "ne")
            self._put(out, "<I", t.ggml_type, "ggml_type")
            self._put(out, "<Q", t.offset, "offset")
        align = self.alignment()
        out += bytes(-len(out) % align if align < 1 << 16 else 0)
        return bytes(out) + self.data

    def _put(self, out: bytearray, fmt: str, value: Any, kind: str) -> None:
        size = struct.calcsize(fmt)
        self.fields.append(Field(len(out), size, kind))
        out += pack_scalar(fmt, value)

    def _string(self, out: bytearray, text: str | bytes) -> None:
        raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        self._put(out, "<Q", len(raw), "length")
        out += raw

    def _value(self, out: bytearray, vtype: int, value: Any, item_type: int | None) -> None:
        if vtype == STRING:
            self._string(out, value if isinstance(value, (str, bytes)) else str(value))
        elif vtype == ARRAY:
            items = value if isinstance(value, (list, tuple)) else [value]
            it = STRING if item_type is None else item_type
            self._put(out, "<I", it, "vtype")
            self._put(out, "<Q", len(items), "count")
            if it in SCALAR_FORMATS and it != BOOL and all(isinstance(v, (int, float)) for v in items):
                fmt = "<" + SCALAR_FORMATS[it]
                out += b"".join(pack_scalar(fmt, v) for v in items)
            else:
                for i, v in enumerate(items):
                    if i < 4:
                        self._value(out, it, v, None if it != ARRAY else STRING)
                    else:
                        self._quiet_value(out, it, v)
        elif vtype in SCALAR_FORMATS:
            self._put(out, "<" + SCALAR_FORMATS[vtype], value, "value")
        # an unknown value type writes no value: the reader must stop at the type


    def _quiet_value(self, out: bytearray, vtype: int, value: Any) -> None:
        """As _value, without recording fields (an array's later items)."""
        fields = self.fields
        self.fields = []
        self._value(out, vtype, value, None if vtype != ARRAY else STRING)
        self.fields = fields


def pack_scalar(fmt: str, value: Any) -> bytes:
    """struct.pack that wraps integers to the field's width and writes anything else as a number."""
    code = fmt[-1]
    if code in "fd":
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            value = 0.0
        if code == "f" and math.isfinite(value) and abs(value) > 3.4e38:
            value = math.copysign(math.inf, value)
        return struct.pack(fmt, value)
    try:
        value = int(value) if not isinstance(value, float) or math.isfinite(value) else 0
    except (TypeError, ValueError):
        value = 0
    bits = 8 * struct.calcsize(fmt)
    value &= (1 << bits) - 1
    if code in "bhiq" and value >= 1 << (bits - 1):
        value -= 1 << bits
    return struct.pack(fmt, value)


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values[0]

    def string(self) -> str:
        n = self.take("<Q")
        text = self.buf[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return text

    def value(self, vtype: int) -> tuple[Any, int | None]:
        if vtype == STRING:
            return self.string(), None
        if vtype == ARRAY:
            item_type, count = self.take("<I"), self.take("<Q")
            return [self.value(item_type)[0] for _ in range(count)], item_type
        value = self.take("<" + SCALAR_FORMATS[vtype])
        return (bool(value) if vtype == BOOL else value), None


def parse(buf: bytes) -> GGUFImage:
    """The image of a valid GGUF file (v2/v3), as the seeds are."""
    r = _Reader(buf)
    magic = buf[:4]
    r.pos = 4
    version = r.take("<I")
    n_tensors, n_kv = r.take("<Q"), r.take("<Q")
    kvs = []
    for _ in range(n_kv):
        key = r.string()
        vtype = r.take("<I")
        value, item_type = r.value(vtype)
        kvs.append(KV(key, vtype, value, item_type))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        ne = [r.take("<Q") for _ in range(r.take("<I"))]
        tensors.append(Tensor(name, ne, r.take("<I"), r.take("<Q")))
    image = GGUFImage(version, kvs, tensors, b"", magic)
    start = r.pos + (-r.pos % image.alignment())
    image.data = buf[start:]
    return image
