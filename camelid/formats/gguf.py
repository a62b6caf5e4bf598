"""Read GGUF files (v2, v3), memory-mapped, with the `gguf` package's type constants.

A `GGUFFile` holds the metadata as plain Python values and each tensor as a read-only view of its
raw bytes in the mapped file: nothing is copied until a consumer asks for it.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from camelid.errors import CamelidError
from camelid.formats.metadata import MetadataReader, describe, shown

GGUF_MAGIC = b"GGUF"
# Magics of the 2023 formats, as the bytes start the file (uint32 little-endian on disk).
LEGACY_MAGICS = {b"lmgg": "ggml (unversioned)", b"fmgg": "ggmf", b"tjgg": "ggjt"}
GGML_MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1  # ggml's tensor sizes are int64


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file.

    shape is in NumPy order, rows first: a (n_out, n_in) weight matrix has shape (n_out, n_in), the
    reverse of GGUF's `ne`. raw is a read-only uint8 view into the mapped file, (n_rows, row_bytes),
    where n_rows is the product of all but the last dimension.
    """

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    raw: np.ndarray

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFFile:
    """Metadata and tensors of one GGUF file; tensors stay in the memory map."""

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    # key -> (value type, array item type or None), so a writer can copy the metadata exactly
    metadata_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = field(default_factory=dict)


def check_model_path(path: str | os.PathLike) -> str:
    """Return `path` as a string if it names a readable file, else raise a CamelidError saying why."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CamelidError(f"model file not found: {path}. Check the path, or run `camelid chat` without -m for the default model.")
    if os.path.isdir(path):
        raise CamelidError(f"{path} is a directory; pass the path of a .gguf file inside it.")
    if not os.access(path, os.R_OK):
        raise CamelidError(f"cannot read {path}: permission denied.")
    return path


def _check_magic(path: str) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return
    if magic in LEGACY_MAGICS:
        raise CamelidError(
            f"{path} is a legacy {LEGACY_MAGICS[magic]} file from 2023, not GGUF; `camelid run`/`chat` read it as it is, "
            f"or convert it first: `camelid convert --from-legacy {path} -o model.gguf`."
        )
    raise CamelidError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). Pass a .gguf model file.")


_SCALAR_DTYPES = {
    GGUFValueType.UINT8: np.dtype("<u1"), GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"), GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"), GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.UINT64: np.dtype("<u8"), GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT32: np.dtype("<f4"), GGUFValueType.FLOAT64: np.dtype("<f8"),
    GGUFValueType.BOOL: np.dtype("<u1"),
}


class _HeaderParser:
    """Parses the GGUF header from a byte buffer.

    GGUFReader builds a NumPy view per array element and takes 20 s on a 262k-token vocabulary;
    this parser reads the same layout in well under a second.
    Layout: magic u32, version u32, n_tensors u64, n_kv u64, then n_kv of (key string, value type u32,
    value), then n_tensors of (name string, n_dims u32, ne u64 x n_dims, type u32, offset u64), then
    padding to `general.alignment`, then the tensor data. A string is a u64 length and UTF-8 bytes.
    """

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def _take(self, fmt: str):
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self._take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        vtype = _value_type(vtype)
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            item_type, count = self._take("<IQ")
            item_type = _value_type(item_type)
            if count > len(self.buf) - self.pos:
                raise ValueError(f"an array claims {count} items, more than the bytes left in the file")
            if item_type == GGUFValueType.STRING:
                return [self.string() for _ in range(count)]
            if item_type == GGUFValueType.ARRAY:
                return [self.value(GGUFValueType.ARRAY) for _ in range(count)]
            dtype = _SCALAR_DTYPES[item_type]
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += dtype.itemsize * count
            return arr.astype(bool).tolist() if item_type == GGUFValueType.BOOL else arr.tolist()
        dtype = _SCALAR_DTYPES[vtype]
        value = np.frombuffer(self.buf, dtype=dtype, count=1, offset=self.pos)[0]
        self.pos += dtype.itemsize
        return bool(value) if vtype == GGUFValueType.BOOL else value.item()


def _value_type(code: int) -> GGUFValueType:
    try:
        return GGUFValueType(code)
    except ValueError:
        raise ValueError(f"value type {code} is not one GGUF defines") from None


def _corrupt(path: str, problem: str) -> CamelidError:
    return CamelidError(f"{path}: {problem}; the file is corrupt. Download or convert it again.")


def _parse(path: str, buf) -> tuple[int, dict[str, Any], list[tuple[str, list[int], int, int]], int, dict]:
    """Parse the header: (version, metadata, [(name, ne, type, offset)], data_start, metadata types)."""
    p = _HeaderParser(buf)
    _magic, version = p._take("<4sI")
    if version not in (2, 3):
        raise CamelidError(f"{path} is GGUF version {version}; camelid reads versions 2 and 3.")
    n_tensors, n_kv = p._take("<QQ")
    meta: dict[str, Any] = {}
    types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
    for i in range(n_kv):
        key = p.string()
        if key in meta:
            raise _corrupt(path, f"metadata key {shown(key)} appears twice")
        try:
            vtype = _value_type(p._take("<I"))
            item_type = _value_type(struct.unpack_from("<I", buf, p.pos)[0]) if vtype == GGUFValueType.ARRAY else None
            types[key] = (vtype, item_type)
            meta[key] = p.value(vtype)
        except (ValueError, struct.error, RecursionError) as exc:
            raise _corrupt(path, f"metadata key {shown(key)} (key {i + 1} of {n_kv}) cannot be read: {exc}") from None
    infos = []
    names = set()
    for i in range(n_tensors):
        name = p.string()
        if name in names:
            raise _corrupt(path, f"tensor {shown(name)} appears twice in the tensor table")
        names.add(name)
        n_dims = p._take("<I")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise _corrupt(path, f"tensor {shown(name)} has {n_dims} dimensions, where GGUF allows 1 to {GGML_MAX_DIMS}")
        ne = [p._take("<Q") for _ in range(n_dims)]
        ggml_type, offset = p._take("<IQ")
        infos.append((name, ne, ggml_type, offset))
    alignment = MetadataReader(meta, path).integer("general.alignment", GGUF_DEFAULT_ALIGNMENT, min=1, max=1 << 30)
    if alignment & (alignment - 1):
        raise _corrupt(path, f"general.alignment is {alignment}, not a power of two")
    data_start = -(-p.pos // alignment) * alignment
    for name, _ne, _type, offset in infos:
        if offset % alignment:
            raise _corrupt(path, f"tensor {shown(name)} starts at offset {offset}, not a multiple of the alignment {alignment}")
    return version, meta, infos, data_start, types


def _map(path: str) -> np.memmap:
    path = check_model_path(path)
    _check_magic(path)
    return np.memmap(path, dtype=np.uint8, mode="r")


def _parse_or_explain(path: str, buf):
    try:
        return _parse(path, buf)
    except CamelidError:
        raise
    except Exception as exc:  # struct.error, ValueError, IndexError on malformed input
        raise CamelidError(f"{path} is not a valid GGUF file or is truncated ({type(exc).__name__}: {str(exc)[:200]}). "
                           "Download or convert it again.") from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the key-value metadata of a GGUF file (works on vocab-only files)."""
    path = os.fspath(path)
    return _parse_or_explain(path, _map(path))[1]


def _tensor_info(path: str, buf, data_start: int, name: str, ne: list[int], type_id: int, offset: int) -> TensorInfo:
    try:
        ggml_type = GGMLQuantizationType(type_id)
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    except (ValueError, KeyError):
        raise CamelidError(f"{path}: tensor {shown(name)} has an unknown type id {type_id}; this file may need a newer camelid.") from None
    shape = tuple(int(n) for n in reversed(ne))
    if max(shape) > INT64_MAX or math.prod(shape) > INT64_MAX or math.prod(shape[:-1]) > INT64_MAX:
        raise _corrupt(path, f"tensor {shown(name)} has shape {_shape_text(ne)} (ggml order), more elements than GGML can index")
    if shape[-1] % block_size:
        raise CamelidError(f"{path}: tensor {shown(name)} has {shape[-1]} columns, not a multiple of the {ggml_type.name} block size {block_size}.")
    row_bytes = shape[-1] // block_size * type_size
    n_rows = math.prod(shape[:-1])
    start = data_start + offset
    if start + n_rows * row_bytes > len(buf):
        raise CamelidError(f"{path} is truncated: tensor {shown(name)} ends past the end of the file. Download or convert it again.")
    raw = buf[start:start + n_rows * row_bytes].reshape(n_rows, row_bytes)
    return TensorInfo(name=name, ggml_type=ggml_type, shape=shape, raw=raw)


def _shape_text(ne: list[int]) -> str:
    return describe(list(ne)) if len(str(ne)) > 80 else str(list(ne))


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open a GGUF file: metadata as Python values, tensors as memory-mapped raw bytes.

    Raises CamelidError for a missing file, a file that is not GGUF, a legacy 2023 file, or a
    truncated or malformed one.
    """
    path = os.fspath(path)
    buf = _map(path)
    version, meta, infos, data_start, types = _parse_or_explain(path, buf)
    tensors = {}
    for name, ne, type_id, offset in infos:
        tensors[name] = _tensor_info(path, buf, data_start, name, ne, type_id, offset)
    return GGUFFile(path=path, version=version, metadata=meta, tensors=tensors, metadata_types=types)
