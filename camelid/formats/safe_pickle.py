"""Read PyTorch checkpoints (`torch.save` zip archives) without torch and without running pickle code.

A `.bin`/`.pth` file saved by torch >= 1.6 is a zip archive: `<prefix>/data.pkl` is a pickle of the
state dict whose tensors point, through persistent ids, at raw storages `<prefix>/data/<key>`.

The pickle is not given to Python's unpickler. `_StateDictReader` runs its opcodes itself (decoded by
`pickletools.genops`), and knows only the ones a state dict needs: constants, tuples, lists, dicts,
the memo, GLOBAL/STACK_GLOBAL, REDUCE, BINPERSID, and BUILD on an OrderedDict (whose state, torch's
`_metadata`, is dropped). Every other opcode is refused (INST, OBJ, NEWOBJ, EXT*, PERSID, buffers, sets
and protocol-0 text opcodes), so nothing can be imported, instantiated, or have its attributes or
`__setstate__` reached. A global resolves through a table built afresh for each read, to one of our
rebuild functions or a storage type; REDUCE calls only those functions. A storage is made only by
BINPERSID, for a key naming an uncompressed `data/` entry of the archive being read, with the
storage's size inside that entry and the entry inside the file; a tensor's offset, shape and strides
must stay inside its storage. Sizes are checked before anything is allocated: data.pkl's declared
size against a limit (so a zip bomb inflates no further than that), and the number of opcodes run.

Tensors come back as `StoredTensor` records (storage, offset, shape, strides); their bytes are read
from the archive with a positioned read only when `read()` is called, one tensor at a time (no mmap,
so reading a tensor does not keep its pages in the process's resident memory).
"""

from __future__ import annotations

import math
import os
import pickletools
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from camelid.errors import CamelidError
from camelid.formats.metadata import shown

# torch storage class name -> NumPy dtype of its elements (bfloat16 as raw uint16 bits).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "DoubleStorage": np.dtype("<f8"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_ZIP_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes; the last two fields: name and extra lengths
_MAX_PICKLE_BYTES = 32 << 20  # data.pkl of a 1000-tensor shard is ~150 KB
_MAX_OPCODES = 1 << 20  # ~30 per tensor
_MAX_DIMS = 32
_MAX_DIM = 1 << 48


@dataclass(frozen=True)
class _StorageType:
    name: str  # e.g. "BFloat16Storage"
    dtype: np.dtype


@dataclass(frozen=True)
class _Storage:
    """One raw storage in the archive: `n_bytes` bytes at `offset` in `path`, elements of `kind`."""

    path: str
    offset: int
    n_bytes: int
    kind: _StorageType


@dataclass(frozen=True)
class StoredTensor:
    """A tensor of a checkpoint, not yet read: a strided view (in elements) of one storage."""

    storage: _Storage
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def is_bfloat16(self) -> bool:
        return self.storage.kind.name == "BFloat16Storage"

    def read(self) -> np.ndarray:
        """The tensor's elements as a new C-contiguous array (bfloat16 as uint16 bits)."""
        dtype = self.storage.kind.dtype
        if math.prod(self.shape) == 0:
            return np.zeros(self.shape, dtype)
        # Elements touched: storage_offset + [0, last]; read that span only (checked against the storage when built).
        last = sum((d - 1) * s for d, s in zip(self.shape, self.stride))
        buf = _pread_exact(self.storage.path, self.storage.offset + self.storage_offset * dtype.itemsize, (last + 1) * dtype.itemsize)
        flat = np.frombuffer(buf, dtype=dtype)
        strides = tuple(s * dtype.itemsize for s in self.stride)
        return np.ascontiguousarray(np.lib.stride_tricks.as_strided(flat, self.shape, strides))


def _pread_exact(path: str, offset: int, n: int) -> bytearray:
    buf = bytearray(n)
    with open(path, "rb") as f:
        got = f.readinto(memoryview(buf)) if f.seek(offset) == offset else 0
    if got != n:
        raise CamelidError(f"{path} ends early (wanted {n} bytes at offset {offset}); the file is truncated. Download it again.")
    return buf


# --- the functions a state dict's pickle may call ---------------------------------------------------


def _dims(values: Any, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(values, tuple) or len(values) > _MAX_DIMS or not all(type(v) is int and 0 <= v < _MAX_DIM for v in values):
        raise CamelidError(f"{path}: a tensor has a malformed {what} {str(values)[:80]}; the file is corrupt.")
    return values


def _rebuild_tensor(path: str, storage, storage_offset, size, stride, *_ignored) -> StoredTensor:
    """torch._utils._rebuild_tensor_v2: a tensor that must lie inside its storage, with no more elements than it."""
    if not isinstance(storage, _Storage):
        raise CamelidError(f"{path}: a tensor in the checkpoint does not point at a storage of the archive; the file is corrupt.")
    shape, stride = _dims(size, "shape", path), _dims(stride, "stride", path)
    if type(storage_offset) is not int or storage_offset < 0 or len(shape) != len(stride):
        raise CamelidError(f"{path}: a tensor has a negative offset or strides that do not match its shape; the file is corrupt.")
    itemsize = storage.kind.dtype.itemsize
    n = math.prod(shape)
    if n:
        last = storage_offset + sum((d - 1) * s for d, s in zip(shape, stride))
        if (last + 1) * itemsize > storage.n_bytes:
            raise CamelidError(f"{path}: a tensor's offset, shape and strides reach past its storage; the file is corrupt.")
        if n * itemsize > storage.n_bytes:
            raise CamelidError(f"{path}: a tensor has more elements than its storage (zero strides); camelid reads plain tensors only.")
    return StoredTensor(storage, storage_offset, shape, stride)


def _rebuild_parameter(path: str, data, *_ignored):
    """torch._utils._rebuild_parameter(_with_state): the parameter's tensor."""
    return data


def _ordered_dict(path: str, *args) -> OrderedDict:
    """collections.OrderedDict(), or OrderedDict(list of pairs)."""
    if args and not (len(args) == 1 and isinstance(args[0], (list, tuple))):
        raise CamelidError(f"{path}: an OrderedDict in the pickle has unexpected arguments; the file is not a torch state dict.")
    return OrderedDict(*args)


_FUNCTIONS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


# --- running the pickle -------------------------------------------------------------------------------

_PUSH_ARGUMENT = frozenset({
    "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
})
_PUSH_CONSTANT = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_NO_EFFECT = frozenset({"PROTO", "FRAME", "STOP"})


class _StateDictReader:
    """Runs a state dict's pickle opcodes with a stack, a memo and this read's own globals (see the module docstring)."""

    def __init__(self, path: str, storages: dict[str, tuple[int, int]], prefix: str):
        self._path = path
        self._storages = storages  # key -> (absolute byte offset, byte length) of an entry <prefix>data/<key>
        self._prefix = prefix
        self._storage_types = [_StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()]
        self._globals: dict[tuple[str, str], Any] = dict(_FUNCTIONS)
        self._globals.update({("torch", kind.name): kind for kind in self._storage_types})
        self._stack: list[Any] = []
        self._marks: list[int] = []
        self._memo: dict[int, Any] = {}

    def _refuse(self, what: str) -> CamelidError:
        return CamelidError(f"{self._path} {what}, which a plain tensor state dict never needs; camelid refuses to run code "
                            "from a checkpoint. Use a safetensors file or a state dict saved with torch.save.")

    def _corrupt(self, what: str) -> CamelidError:
        return CamelidError(f"{self._path}: {what} in its pickle; the file is corrupt or not a torch state dict.")

    def _pop_mark(self) -> list[Any]:
        if not self._marks:
            raise self._corrupt("a MARK is missing")
        start = self._marks.pop()
        items = self._stack[start:]
        del self._stack[start:]
        return items

    def _pop(self) -> Any:
        if len(self._stack) <= (self._marks[-1] if self._marks else 0):
            raise self._corrupt("the stack runs empty")
        return self._stack.pop()

    def _top(self, kind: type, opname: str) -> Any:
        if not self._stack or not isinstance(self._stack[-1], kind) or len(self._stack) <= (self._marks[-1] if self._marks else 0):
            raise self._corrupt(f"{opname} without a {kind.__name__} to work on")
        return self._stack[-1]

    def _global(self, module: Any, name: Any) -> Any:
        found = self._globals.get((module, name)) if isinstance(module, str) and isinstance(name, str) else None
        if found is None:
            raise self._refuse(f"asks for {shown(str(module))}.{shown(str(name))}")
        return found

    def _persistent(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and any(pid[1] is k for k in self._storage_types)
                and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0):
            raise self._corrupt(f"an unsupported persistent id {shown(str(pid))}")
        _, kind, key, _location, numel = pid
        entry = self._storages.get(key)
        if entry is None:
            raise CamelidError(f"{self._path}: the pickle refers to storage {shown(self._prefix + 'data/' + key)}, which the archive lacks; "
                               "the file is corrupt.")
        offset, entry_bytes = entry
        n_bytes = numel * kind.dtype.itemsize
        if n_bytes > entry_bytes:
            raise CamelidError(f"{self._path}: storage {shown(key)} claims more bytes than its archive entry holds "
                               f"({n_bytes} > {entry_bytes}); the file is corrupt.")
        return _Storage(self._path, offset, n_bytes, kind)

    def _reduce(self) -> Any:
        args = self._pop()
        func = self._pop()
        if not isinstance(args, tuple) or not any(func is f for f in _FUNCTIONS.values()):
            raise self._refuse(f"calls {type(func).__name__} {shown(str(func))}")
        return func(self._path, *args)

    def _step(self, name: str, arg: Any):
        stack = self._stack
        if name in _PUSH_ARGUMENT:
            stack.append(arg)
        elif name in _PUSH_CONSTANT:
            stack.append(_PUSH_CONSTANT[name])
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "MARK":
            self._marks.append(len(stack))
        elif name == "TUPLE":
            stack.append(tuple(self._pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [self._pop() for _ in range(int(name[-1]))]
            stack.append(tuple(reversed(items)))
        elif name == "LIST":
            stack.append(self._pop_mark())
        elif name == "DICT":
            items = self._pop_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "APPEND":
            value = self._pop()
            self._top(list, name).append(value)
        elif name == "APPENDS":
            items = self._pop_mark()
            self._top(list, name).extend(items)
        elif name == "SETITEM":
            value, key = self._pop(), self._pop()
            self._top(dict, name)[key] = value
        elif name == "SETITEMS":
            items = self._pop_mark()
            self._top(dict, name).update(zip(items[::2], items[1::2]))
        elif name == "POP":
            if self._marks and self._marks[-1] == len(stack):
                self._marks.pop()
            else:
                self._pop()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            stack.append(self._top(object, name))
        elif name in ("BINPUT", "LONG_BINPUT"):
            self._memo[arg] = self._top(object, name)
        elif name == "MEMOIZE":
            self._memo[len(self._memo)] = self._top(object, name)
        elif name in ("BINGET", "LONG_BINGET"):
            if arg not in self._memo:
                raise self._corrupt(f"memo entry {arg} is read before it is written")
            stack.append(self._memo[arg])
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(self._global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = self._pop(), self._pop()
            stack.append(self._global(module, attr))
        elif name == "REDUCE":
            stack.append(self._reduce())
        elif name == "BINPERSID":
            stack.append(self._persistent(self._pop()))
        elif name == "BUILD":
            state = self._pop()
            if type(self._top(object, name)) is not OrderedDict or not isinstance(state, dict):
                raise self._refuse(f"sets the state of a {type(stack[-1]).__name__}")
        elif name not in _NO_EFFECT:
            raise self._refuse(f"uses the pickle opcode {name}")

    def load(self, data: bytes) -> Any:
        """Run the pickle `data`; return the object it builds."""
        try:
            for n, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
                if n >= _MAX_OPCODES:
                    raise CamelidError(f"{self._path}: its data.pkl runs more than {_MAX_OPCODES} pickle opcodes; "
                                       "it is not a plain tensor state dict.")
                self._step(opcode.name, arg)
        except CamelidError:
            raise
        except (ValueError, TypeError, OverflowError, struct.error) as exc:  # undecodable opcodes, unhashable keys, a truncated pickle
            raise self._corrupt(f"cannot read opcodes ({str(exc)[:200]})") from None
        if len(self._stack) != 1 or self._marks:
            raise self._corrupt("the pickle does not end with exactly one object")
        return self._stack[0]


# --- the archive ------------------------------------------------------------------------------------


def _entry_data_offset(f, info: zipfile.ZipInfo, size: int) -> int:
    """Absolute offset of an uncompressed zip member's data, checked to lie with all its bytes inside the file."""
    header = b""
    if 0 <= info.header_offset <= size - _ZIP_LOCAL_HEADER.size:  # zipfile computes it, and can make it negative
        f.seek(info.header_offset)
        header = f.read(_ZIP_LOCAL_HEADER.size)
    if len(header) != _ZIP_LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise CamelidError(f"{f.name}: bad zip entry {shown(info.filename)}; the file is corrupt or truncated.")
    fields = _ZIP_LOCAL_HEADER.unpack(header)
    offset = info.header_offset + _ZIP_LOCAL_HEADER.size + fields[-2] + fields[-1]
    if info.compress_size != info.file_size or offset + info.file_size > size:
        raise CamelidError(f"{f.name}: entry {shown(info.filename)} reaches past the end of the file; it is truncated or corrupt. "
                           "Download it again.")
    return offset


def _storage_entries(path: str, archive: zipfile.ZipFile, prefix: str) -> dict[str, tuple[int, int]]:
    """key -> (absolute offset, byte length) of each `<prefix>data/<key>` entry, all stored uncompressed inside the file."""
    size = os.path.getsize(path)
    storages: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as raw:
        for info in archive.infolist():
            if info.filename.startswith(prefix + "data/"):
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CamelidError(f"{path}: storage {shown(info.filename)} is compressed; torch never writes that. "
                                       "The file is not a torch checkpoint.")
                storages[info.filename[len(prefix) + 5:]] = (_entry_data_offset(raw, info, size), info.file_size)
    return storages


def _read_entry(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """An entry's bytes; its declared size is checked against `limit` first, and no more than that is inflated."""
    if info.file_size > limit:
        raise CamelidError(f"{path}: its {shown(info.filename)} declares {info.file_size} bytes, more than the {limit} it can "
                           "need; the file is corrupt or a zip bomb.")
    try:
        with archive.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:  # RuntimeError: "encrypted"
        raise CamelidError(f"{path}: cannot read {shown(info.filename)} ({str(exc)[:200]}); the file is corrupt or truncated.") from None
    if len(data) != info.file_size:
        raise CamelidError(f"{path}: {shown(info.filename)} is not the size its zip entry declares; the file is corrupt.")
    return data


def load_state_dict(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Read the state dict of a torch zip checkpoint as name -> StoredTensor, without reading tensor data.

    Refuses (CamelidError) pickles that need any global besides OrderedDict, the tensor/parameter
    rebuild functions and the storage types, or any opcode beyond those a state dict uses; storages
    and tensors that reach outside their archive entries; an oversized data.pkl; legacy (pre-zip)
    torch files; big-endian archives; and anything that is not a flat mapping of names to tensors.
    """
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise CamelidError(f"{path} is a legacy (pre-2020, non-zip) torch file, which camelid does not read; "
                               "re-save it with a current torch (torch.save) or as safetensors.") from None
        raise CamelidError(f"{path} is not a PyTorch checkpoint (not a zip archive) or it is truncated.") from None
    except (NotImplementedError, ValueError, EOFError) as exc:  # zipfile on a corrupt directory entry
        raise CamelidError(f"{path} is a corrupt zip archive ({str(exc)[:200]}); it is not a readable torch checkpoint.") from None
    except OSError as exc:
        raise CamelidError(f"cannot read {path}: {exc.strerror}.") from None
    with archive:
        pkl = [i for i in archive.infolist() if i.filename.endswith("data.pkl") and i.filename.count("/") <= 1]
        if not pkl:
            raise CamelidError(f"{path} is a zip archive without data.pkl; it is not a torch checkpoint.")
        prefix = pkl[0].filename[: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and _read_entry(path, archive, archive.getinfo(byteorder), 16).strip() != b"little":
            raise CamelidError(f"{path} was saved on a big-endian machine; camelid reads little-endian checkpoints only.")
        storages = _storage_entries(path, archive, prefix)
        data = _read_entry(path, archive, pkl[0], _MAX_PICKLE_BYTES)
    obj = _StateDictReader(path, storages, prefix).load(data)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CamelidError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    tensors = {k: v for k, v in obj.items() if isinstance(v, StoredTensor)}
    if not tensors:
        raise CamelidError(f"{path} holds no tensors.")
    if not all(isinstance(k, str) for k in tensors):
        raise CamelidError(f"{path}: its state dict has tensors under names that are not strings; the file is corrupt.")
    return tensors
