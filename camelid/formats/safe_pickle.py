"""Read PyTorch checkpoints (`torch.save` zip archives) without torch and without running pickle code.

A `.bin`/`.pth` file saved by torch >= 1.6 is a zip archive: `<prefix>/data.pkl` is a pickle of the
state dict whose tensors point, through persistent ids, at raw storages `<prefix>/data/<key>`. The
pickle is read by an Unpickler whose `find_class` resolves only the handful of globals a state dict
needs, each to a harmless function of ours; any other global (os.system, builtins.eval, ...) is
refused before it can be called, so nothing in the file runs. Tensors come back as `StoredTensor`
records (storage, offset, shape, strides); their bytes are read from the archive with `os.pread` only
when `read()` is called, one tensor at a time (no mmap, so reading a tensor does not keep its pages in
the process's resident memory).
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from camelid.errors import CamelidError

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


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str  # e.g. "BFloat16Storage"
    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class _Storage:
    """One raw storage in the archive: `n_bytes` bytes at `offset` in `path`, elements of `kind`."""

    path: str
    offset: int
    n_bytes: int
    kind: _StorageType


@dataclass(frozen=True, slots=True)
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
        n = int(np.prod(self.shape, dtype=np.int64))
        if n == 0:
            return np.zeros(self.shape, dtype)
        # Elements touched: storage_offset + [0, last]; read that span only.
        last = sum((d - 1) * s for d, s in zip(self.shape, self.stride))
        first_byte = self.storage_offset * dtype.itemsize
        span = (last + 1) * dtype.itemsize
        if any(s < 0 for s in self.stride) or first_byte + span > self.storage.n_bytes:
            raise CamelidError(f"{self.storage.path}: a tensor's shape and strides reach past its storage; the file is corrupt.")
        buf = _pread_exact(self.storage.path, self.storage.offset + first_byte, span)
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


# --- the allowed globals, each mapped to a harmless function -------------------------------------

def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise CamelidError("a tensor in the checkpoint does not point at a storage of the archive; the file is corrupt.")
    return StoredTensor(storage, int(storage_offset), tuple(int(d) for d in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


def _ordered_dict(*args):
    return OrderedDict(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_ALLOWED.update({("torch", name): _StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()})


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED` globals and the archive's storages."""

    def __init__(self, file, path: str, storages: dict[str, tuple[int, int]], prefix: str):
        super().__init__(file)
        self._path = path
        self._storages = storages  # key -> (absolute byte offset, byte length)
        self._prefix = prefix

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise CamelidError(
                f"{self._path} asks for {module}.{name}, which a plain tensor state dict never needs; "
                "camelid refuses to run code from a checkpoint. Use a safetensors file or a state dict saved with torch.save."
            )
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CamelidError(f"{self._path}: unsupported persistent id {str(pid)[:80]!r} in the pickle; the file is not a torch state dict.")
        _, kind, key, _location, _numel = pid
        entry = self._storages.get(str(key))
        if entry is None:
            raise CamelidError(f"{self._path}: the pickle refers to storage {self._prefix}data/{key}, which the archive lacks; the file is corrupt.")
        offset, n_bytes = entry
        return _Storage(self._path, offset, n_bytes, kind)


def _stored_entry_offset(f, info: zipfile.ZipInfo) -> int:
    """Absolute offset of an uncompressed zip member's data (after its local header)."""
    f.seek(info.header_offset)
    header = f.read(_ZIP_LOCAL_HEADER.size)
    if len(header) != _ZIP_LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise CamelidError(f"{f.name}: bad zip entry {info.filename}; the file is corrupt or truncated.")
    fields = _ZIP_LOCAL_HEADER.unpack(header)
    return info.header_offset + _ZIP_LOCAL_HEADER.size + fields[-2] + fields[-1]


def load_state_dict(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Read the state dict of a torch zip checkpoint as name -> StoredTensor, without reading tensor data.

    Refuses (CamelidError) pickles that need any global besides OrderedDict, the tensor/parameter
    rebuild functions and the storage types; legacy (pre-zip) torch files; big-endian archives; and
    anything that is not a flat mapping of names to tensors.
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
    except OSError as exc:
        raise CamelidError(f"cannot read {path}: {exc.strerror}.") from None
    with archive:
        pkl = [i for i in archive.infolist() if i.filename.endswith("data.pkl") and i.filename.count("/") <= 1]
        if not pkl:
            raise CamelidError(f"{path} is a zip archive without data.pkl; it is not a torch checkpoint.")
        prefix = pkl[0].filename[: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CamelidError(f"{path} was saved on a big-endian machine; camelid reads little-endian checkpoints only.")
        storages: dict[str, tuple[int, int]] = {}
        with open(path, "rb") as raw:
            for info in archive.infolist():
                if info.filename.startswith(prefix + "data/"):
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise CamelidError(f"{path}: storage {info.filename} is compressed; torch never writes that. The file is not a torch checkpoint.")
                    storages[info.filename[len(prefix) + 5:]] = (_stored_entry_offset(raw, info), info.file_size)
        try:
            with archive.open(pkl[0]) as f:
                obj = _SafeUnpickler(f, path, storages, prefix).load()
        except CamelidError:
            raise
        except Exception as exc:  # malformed pickle opcodes, truncated data
            raise CamelidError(f"{path}: cannot read its pickle ({exc}); the file is corrupt or truncated.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CamelidError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    tensors = {k: v for k, v in obj.items() if isinstance(v, StoredTensor)}
    if not tensors:
        raise CamelidError(f"{path} holds no tensors.")
    return tensors
