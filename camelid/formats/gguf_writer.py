"""Write GGUF files one tensor at a time, through the `gguf` package's writer.

The header (metadata and the table of tensor shapes and types) is written first, then each tensor's
data is produced and written in turn, so peak memory is about one tensor, not the model. The file is
written under a temporary name beside the output and renamed only when complete: an interrupted or
failed write never leaves a half-written file under the requested name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from camelid.errors import CamelidError

_FLOAT_DTYPES = {
    GGMLQuantizationType.F32: np.dtype("<f4"),
    GGMLQuantizationType.F16: np.dtype("<f2"),
}


@dataclass(frozen=True)
class MetadataValue:
    """One metadata value with its exact GGUF type (llama.cpp checks key types strictly)."""

    value: Any
    vtype: GGUFValueType
    item_type: GGUFValueType | None = None  # for arrays: the type of the items


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor to write: its name, type and shape up front, its data on demand.

    shape is in NumPy order, rows first (the reverse of GGUF's `ne`). produce() returns either the
    raw blocks as uint8 of shape (n_rows, row_bytes) or, for F32/F16, an array of that dtype with
    `shape`'s number of elements. It is called once, when the tensor's turn comes.
    """

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.ggml_type]
        if self.shape[-1] % block_size:
            raise CamelidError(
                f"tensor {self.name} has {self.shape[-1]} columns, not a multiple of the {self.ggml_type.name} block size {block_size}."
            )
        return int(np.prod(self.shape[:-1], dtype=np.int64)) * (self.shape[-1] // block_size) * type_size


def metadata_from_gguf(metadata: dict[str, Any], types: dict[str, tuple[GGUFValueType, GGUFValueType | None]]) -> dict[str, MetadataValue]:
    """Typed metadata to copy from an opened GGUFFile (`metadata`, `metadata_types`), minus the keys the writer sets."""
    return {
        key: MetadataValue(value, *types[key])
        for key, value in metadata.items()
        if key not in ("general.architecture", "general.alignment")
    }


def _as_bytes(tensor: PlannedTensor, data: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(data)
    float_dtype = _FLOAT_DTYPES.get(tensor.ggml_type)
    if float_dtype is not None and data.dtype != np.uint8:
        if data.dtype != float_dtype:
            raise CamelidError(f"tensor {tensor.name}: got {data.dtype} data for a {tensor.ggml_type.name} tensor.")
        data = data.view(np.uint8)
    if data.dtype != np.uint8 or data.nbytes != tensor.nbytes:
        raise CamelidError(f"tensor {tensor.name}: produced {data.nbytes} bytes of {data.dtype}, expected {tensor.nbytes} bytes.")
    return data.reshape(-1)


def write_gguf(
    path: str | os.PathLike,
    arch: str,
    metadata: dict[str, MetadataValue],
    tensors: Sequence[PlannedTensor],
    progress: str | None = "writing",
) -> int:
    """Write a GGUF v3 file with `metadata` and `tensors`, streaming; return its size in bytes.

    `arch` becomes `general.architecture`. Tensors are produced and written in order, one at a time;
    progress names a tqdm bar over the bytes written (None for no bar). The output appears under
    `path` only when complete.
    """
    path = os.fspath(path)
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise CamelidError(f"cannot write {path}: the directory {out_dir} does not exist.")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise CamelidError("two tensors to write have the same name.")
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=out_dir)
    os.close(fd)
    try:
        writer = GGUFWriter(tmp, arch)
        for key, item in metadata.items():
            writer.add_key_value(key, item.value, item.vtype, item.item_type)
        for t in tensors:
            writer.add_tensor_info(t.name, list(t.shape), np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = _progress_bar(progress, sum(t.nbytes for t in tensors))
        for t in tensors:
            writer.write_tensor_data(_as_bytes(t, t.produce()))
            if bar is not None:
                bar.update(t.nbytes)
        if bar is not None:
            bar.close()
        writer.close()
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.getsize(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _progress_bar(desc: str | None, total: int):
    if desc is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def iter_planned_bytes(tensors: Iterable[PlannedTensor]) -> int:
    """Total data bytes of the planned tensors (what --dry-run reports, before header and padding)."""
    return sum(t.nbytes for t in tensors)
