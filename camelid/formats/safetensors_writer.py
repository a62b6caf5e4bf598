"""Write safetensors files and Hugging Face checkpoint directories, one tensor at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
[begin, end) byte offsets into the data; padded with spaces to a multiple of 8 bytes), then the
tensors' bytes back to back. Shapes and dtypes are known up front, so the header is written first and
each tensor is produced and written in turn: peak memory is about one tensor. A checkpoint directory
is written under a temporary name beside the output and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from camelid.errors import CamelidError

# outtype -> (safetensors dtype, stored NumPy dtype, HF config torch dtype name); bf16 is stored as uint16 bits
OUTTYPES = {
    "f32": ("F32", np.dtype("<f4"), "float32"),
    "f16": ("F16", np.dtype("<f2"), "float16"),
    "bf16": ("BF16", np.dtype("<u2"), "bfloat16"),
}
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size, "5GB"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


@dataclass(frozen=True)
class SafetensorsTensor:
    """A tensor to write: name, outtype key of OUTTYPES, shape up front; produce() gives its values when its turn comes."""

    name: str
    outtype: str
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * OUTTYPES[self.outtype][1].itemsize


def _encode(tensor: SafetensorsTensor, data: np.ndarray) -> np.ndarray:
    if tuple(data.shape) != tuple(tensor.shape):
        raise CamelidError(f"tensor {tensor.name}: produced shape {tuple(data.shape)}, expected {tuple(tensor.shape)}.")
    if tensor.outtype == "bf16":
        from gguf.constants import GGMLQuantizationType

        from camelid.quant.encode import quantize_rows

        return quantize_rows(data.reshape(1, -1), GGMLQuantizationType.BF16).reshape(-1)  # uint8 bytes
    data = np.ascontiguousarray(data, dtype=OUTTYPES[tensor.outtype][1])
    return data.reshape(-1).view(np.uint8)


def _header(tensors: Sequence[SafetensorsTensor], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for t in tensors:
        if t.outtype not in OUTTYPES:
            raise CamelidError(f"cannot write {t.name} as {t.outtype} in safetensors; use one of {', '.join(OUTTYPES)}.")
        header[t.name] = {"dtype": OUTTYPES[t.outtype][0], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _write_file(path: str, tensors: Sequence[SafetensorsTensor], metadata: dict[str, str], bar) -> None:
    with open(path, "wb") as f:
        f.write(_header(tensors, metadata))
        for t in tensors:
            f.write(memoryview(_encode(t, t.produce())))
            if bar is not None:
                bar.update(t.nbytes)


def _check_names(tensors: Sequence[SafetensorsTensor]) -> None:
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise CamelidError("two tensors to write have the same name.")


def plan_shards(tensors: Sequence[SafetensorsTensor], max_shard_bytes: int) -> list[list[SafetensorsTensor]]:
    """Split tensors, in order, into shards of at most max_shard_bytes each (a larger tensor gets a shard of its own)."""
    shards: list[list[SafetensorsTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def write_sharded(out_dir: Path, tensors: Sequence[SafetensorsTensor], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                  progress: str | None = None) -> list[str]:
    """Write tensors into `out_dir` as model.safetensors, or model-0000i-of-0000n.safetensors + index; return the file names.

    `out_dir` must exist; the files are written directly (the caller makes the directory temporary).
    """
    _check_names(tensors)
    shards = plan_shards(tensors, max_shard_bytes)
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    bar = _progress_bar(progress, sum(t.nbytes for t in tensors))
    for name, shard in zip(files, shards):
        _write_file(os.fspath(out_dir / name), shard, {"format": "pt"}, bar)
    if bar is not None:
        bar.close()
    if n > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: name for name, shard in zip(files, shards) for t in shard},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return files


def save_checkpoint(checkpoint, out_dir: str | os.PathLike, outtype: str = "f16", max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                    progress: bool = True) -> Path:
    """Write a `camelid.formats.hf.Checkpoint` as a Hugging Face directory transformers can load.

    config.json (with the output dtype), generation_config.json when the source has one, the weights
    as safetensors shards of `outtype` (f32, f16 or bf16), and the tokenizer files of
    `checkpoint.tokenizer_dir`. Tensors are loaded one at a time. The directory appears under
    `out_dir` only when complete; an existing `out_dir` is an error, never overwritten.
    """
    out = Path(out_dir)
    if outtype not in OUTTYPES:
        raise CamelidError(f"safetensors output takes --outtype {', '.join(OUTTYPES)}, not {outtype!r}; "
                           "quantized types need GGUF output (--format gguf).")
    if out.exists():
        raise CamelidError(f"{out} already exists; remove it or choose another output directory.")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise CamelidError(f"cannot write {out}: the directory {parent} does not exist.")
    source = checkpoint.tensors
    tensors = [SafetensorsTensor(name, outtype, tuple(source.shape(name)), lambda n=name: source.load(n)) for name in source.names()]
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".partial", dir=parent))
    try:
        config = dict(checkpoint.config)
        config["dtype" if "dtype" in config else "torch_dtype"] = OUTTYPES[outtype][2]
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        generation = Path(checkpoint.source) / "generation_config.json"
        if generation.is_file():
            shutil.copyfile(generation, tmp / "generation_config.json")
        for name in TOKENIZER_FILES:
            if checkpoint.tokenizer_dir is not None and (Path(checkpoint.tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(checkpoint.tokenizer_dir) / name, tmp / name)
        write_sharded(tmp, tensors, max_shard_bytes, "writing" if progress else None)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _progress_bar(desc: str | None, total: int):
    if desc is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
