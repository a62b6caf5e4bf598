"""Read Hugging Face and Meta LLaMA checkpoints one tensor at a time.

Public interface (the converter and the LoRA merger build on it):

- `TensorSource`: `names()`, `shape(name)`, `load(name)`; `load` reads one tensor from disk and returns
  it as a new NumPy array (float16 / float32 as stored; bfloat16 widened to float32). Nothing else is
  kept in memory: files are read with positioned reads, never memory-mapped.
- `open_tensor_files(paths)`: one TensorSource over `.safetensors` files and PyTorch `.bin`/`.pth` zip
  checkpoints (read by `safe_pickle`, which runs no pickle code), any number of shards.
- `Checkpoint(config, tensors, tokenizer_dir, source)` and `open_hf_checkpoint(dir)`: a Hugging Face
  directory (`config.json` + weight shards). `formats.meta` reads Meta's original layout (`params.json` +
  `consolidated.NN.pth` + `tokenizer.model`) into the same Checkpoint, and `formats.checkpoint.open_checkpoint`
  opens either. Either way `config` has Hugging Face `config.json` keys
  and `tensors` uses Hugging Face tensor names and layouts (Meta shards are concatenated and q/k rows
  put into Hugging Face's rotate-half order), so consumers see one format.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from camelid.errors import CamelidError
from camelid.formats import safe_pickle
from camelid.formats.metadata import describe, is_integer, shown

__all__ = ["TensorSource", "open_tensor_files", "Checkpoint", "open_hf_checkpoint", "read_json", "bf16_to_f32"]

_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8"),
                       "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
                       "U8": np.dtype("u1"), "BOOL": np.dtype("?")}
_MAX_DIMS = 8  # safetensors tensors of a checkpoint have at most 4 dimensions
_INT64_MAX = (1 << 63) - 1


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values given as their uint16 bit patterns -> float32 (exact: bf16 is f32's top half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class TensorSource:
    """Named tensors, read one at a time. Subclasses implement names, shape and load."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def load(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def __contains__(self, name: str) -> bool:
        return name in set(self.names())


@dataclass(frozen=True)
class _Entry:
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]  # returns the stored elements, bf16 as uint16 bits
    bf16: bool


class _EntrySource(TensorSource):
    """A TensorSource over a dict of lazily read entries, in file order."""

    def __init__(self, entries: dict[str, _Entry]):
        self._entries = entries

    def names(self) -> list[str]:
        return list(self._entries)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise CamelidError(f"the checkpoint has no tensor named {name}.") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def load(self, name: str) -> np.ndarray:
        entry = self._entry(name)
        data = entry.read()
        return bf16_to_f32(data) if entry.bf16 else data


def _read_at(path: str, offset: int, n_bytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, dtype)
    with open(path, "rb") as f:
        f.seek(offset)
        got = f.readinto(memoryview(out.reshape(-1)).cast("B"))
    if got != n_bytes:
        raise CamelidError(f"{path} ends early; the file is truncated. Download or write it again.")
    return out


def _safetensors_entries(path: str) -> dict[str, _Entry]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CamelidError(f"{path} is too short to be a safetensors file; it is truncated or not safetensors.")
        (n_header,) = struct.unpack("<Q", head)
        if n_header > min(size - 8, 100 << 20):
            raise CamelidError(f"{path} is not a safetensors file, or its header is truncated.")
        try:
            header = json.loads(f.read(n_header))
        except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON or a number of over 4300 digits
            raise CamelidError(f"{path} has a corrupt safetensors header (not JSON, or nested too deeply).") from None
    if not isinstance(header, dict):
        raise CamelidError(f"{path} has a corrupt safetensors header: it is {describe(header)}, not a JSON object.")
    data_start = 8 + n_header
    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = _header_entry(path, name, info)
        n_bytes = math.prod(shape) * dtype.itemsize
        if end - begin != n_bytes:
            raise CamelidError(f"{path}: tensor {shown(name)} has shape {list(shape)} of {info['dtype']} ({n_bytes} bytes) but "
                               f"data_offsets [{begin}, {end}] ({end - begin} bytes); the file is corrupt.")
        if data_start + end > size:
            raise CamelidError(f"{path} is truncated: tensor {shown(name)} ends at byte {data_start + end} of a {size}-byte file. "
                               "Download or write it again.")
        entries[name] = _Entry(shape, lambda o=data_start + begin, n=n_bytes, d=dtype, s=shape: _read_at(path, o, n, d, s),
                               info["dtype"] == "BF16")
    return entries


def _header_entry(path: str, name: str, info) -> tuple[np.dtype, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, (begin, end)) of one safetensors header entry, each checked for type and range."""
    def bad(what: str, found) -> CamelidError:
        return CamelidError(f"{path}: tensor {shown(name)} in the safetensors header has {what} {describe(found)}; "
                            "the file is corrupt. Download or write it again.")

    if not isinstance(info, dict):
        raise bad("the entry", info)
    dtype_name = info.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in _SAFETENSORS_DTYPES:
        found = shown(dtype_name) if isinstance(dtype_name, str) else describe(dtype_name)
        raise CamelidError(f"{path}: tensor {shown(name)} has dtype {found}, which camelid does not read; it reads "
                           f"{', '.join(_SAFETENSORS_DTYPES)}.")
    shape = info.get("shape")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(is_integer(d) and d >= 0 for d in shape):
        raise bad(f"a shape that is not a list of at most {_MAX_DIMS} whole numbers >= 0:", shape)
    if math.prod(d for d in shape if d) * _SAFETENSORS_DTYPES[dtype_name].itemsize > _INT64_MAX:
        raise bad("a shape with more elements than can be indexed:", shape)
    offsets = info.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_integer(x) and 0 <= x <= _INT64_MAX for x in offsets):
        raise bad("data_offsets that are not two whole numbers >= 0:", offsets)
    return _SAFETENSORS_DTYPES[dtype_name], tuple(shape), (offsets[0], offsets[1])


def _pickle_entries(path: str) -> dict[str, _Entry]:
    # safe_pickle has checked every tensor against its storage and every storage against the file.
    return {name: _Entry(t.shape, t.read, t.is_bfloat16) for name, t in safe_pickle.load_state_dict(path).items()}


def open_tensor_files(paths: list[Path]) -> TensorSource:
    """One TensorSource over several weight files: `.safetensors`, or PyTorch `.bin`/`.pth`/`.pt` zip checkpoints.

    Headers are read now (so a truncated or corrupt file is reported before any output is written);
    tensor data is read by `load`. A name found in two files is an error.
    """
    entries: dict[str, _Entry] = {}
    for p in paths:
        p = os.fspath(p)
        if not os.path.isfile(p):
            raise CamelidError(f"weight file not found: {p}.")
        found = _safetensors_entries(p) if p.endswith(".safetensors") else _pickle_entries(p)
        for name in found:
            if name in entries:
                raise CamelidError(f"tensor {shown(name)} appears in two weight files (the second is {p}); the shards overlap.")
        entries.update(found)
    return _EntrySource(entries)


@dataclass
class Checkpoint:
    """A model checkpoint: HF-style config dict, tensors with HF names and layout, where its tokenizer files are.

    `config` has Hugging Face config.json keys (`architectures`, `hidden_size`, `num_attention_heads`, ...);
    `tokenizer_dir` holds tokenizer.model and/or tokenizer.json (+ tokenizer_config.json,
    added_tokens.json, special_tokens_map.json when present); `source` is the path it was opened from.
    """

    config: dict
    tensors: TensorSource
    tokenizer_dir: Path
    source: Path


def read_json(path: Path) -> dict:
    """The JSON object in `path`; CamelidError if it is not valid JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CamelidError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise CamelidError(f"{path} should hold a JSON object.")
    return data


def _hf_weight_files(d: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = d / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CamelidError(f"{index} has no weight_map; the index is corrupt.")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (d / f).is_file()]
            if missing:
                raise CamelidError(f"{index} lists the shard {missing[0]}, which is missing from {d}"
                                   f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}. Download all shards.")
            return [d / f for f in files]
    found = sorted(p for p in d.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if not found:
        found = sorted(d.glob("pytorch_model*.bin"))
    if not found:
        raise CamelidError(f"no weights in {d}: expected model*.safetensors or pytorch_model*.bin files.")
    return found


def open_hf_checkpoint(d: Path) -> Checkpoint:
    """A Hugging Face checkpoint directory: config.json and its weight shards (headers only are read)."""
    config = read_json(d / "config.json")
    return Checkpoint(config, open_tensor_files(_hf_weight_files(d)), d, d)
