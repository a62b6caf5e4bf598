"""`camelid quantize`: requantize a model file to one of llama.cpp's file types, streaming.

Which tensor gets which type follows llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp),
restricted to the file types camelid writes, so the output has the same types as `llama-quantize`:

- Only tensors with at least two dimensions whose name ends in `weight` are quantized, except norms
  (`*_norm.weight`), MoE routers (`ffn_gate_inp.weight`), position and token-type embeddings and a few
  small special tensors (`tensor_allows_quantization`); all others keep their type (1-D stay F32).
- F32, F16, BF16: every quantizable tensor gets that type, with no mix and no fallback.
- The quantized types start from the file type's default (Q4_0 -> Q4_0, Q4_K_M -> Q4_K, ...), then:
  * `output.weight` (and `token_embd.weight` when the output is tied to it, i.e. there is no
    `output.weight`) gets Q6_K, or Q8_0 when its row length is not a multiple of the default type's
    block (or the architecture is falcon); a Q8_0 file keeps Q8_0 there.
  * attn_v (also attn_qkv, attn_kv_b), counted in file order i of n: Q4_K_M and Q5_K_M give Q6_K when
    use_more_bits(i, n) (the first and last eighth of the layers, and every third layer between),
    Q4_K_S gives Q5_K to the first four; 70B-class models (80 layers, grouped-query attention) lift
    Q4_K to Q5_K; 8-expert models use Q8_0. attn_k of 8-expert models: Q8_0.
  * ffn_down of layer i of n: Q4_K_M gives Q6_K when use_more_bits(i, n) (falcon: Q6_K below n/16,
    else Q5_K when use_more_bits, else Q4_K); Q5_K_M gives Q6_K when use_more_bits; Q4_K_S gives Q5_K
    below n/8 (not falcon).
  * attn_output of 8-expert models: Q5_K for Q4_K_S and Q4_K_M.
  * Fallback when a row length is not a multiple of the chosen type's block: Q4_K -> Q5_0,
    Q5_K -> Q5_1, Q6_K -> Q8_0, then F16 if even 32 does not divide it (with a warning, as llama.cpp).
Tensors are visited in llama.cpp's order (non-layer tensors first, then by layer, by name within
each) and written in that order. A tensor already of its target type is copied byte for byte; any
other is dequantized to float32 and quantized; quantized input needs allow_requantize, as
llama.cpp's --allow-requantize. general.file_type is set to the LLAMA_FTYPE number and
general.quantization_version to 2; the other metadata is copied exactly.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES, GGUFValueType

from camelid.errors import CamelidError
from camelid.formats.metadata import MetadataReader

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
_FLOAT_TYPES = (T.F32, T.F16, T.BF16)
_CHUNK_WEIGHTS = 1 << 22  # weights dequantized and quantized per step (16 MB of float32)


@dataclass(frozen=True)
class FileType:
    """A target of `camelid quantize`: llama.cpp's LLAMA_FTYPE number and the default tensor type."""

    name: str
    ftype: int  # general.file_type
    default_type: T


_FILE_TYPES = [
    FileType("F32", 0, T.F32), FileType("F16", 1, T.F16), FileType("BF16", 32, T.BF16),
    FileType("Q4_0", 2, T.Q4_0), FileType("Q4_1", 3, T.Q4_1), FileType("Q5_0", 8, T.Q5_0),
    FileType("Q5_1", 9, T.Q5_1), FileType("Q8_0", 7, T.Q8_0),
    FileType("Q4_K_S", 14, T.Q4_K), FileType("Q4_K_M", 15, T.Q4_K),
    FileType("Q5_K_S", 16, T.Q5_K), FileType("Q5_K_M", 17, T.Q5_K), FileType("Q6_K", 18, T.Q6_K),
]
FILE_TYPES: dict[str, FileType] = {f.name: f for f in _FILE_TYPES}
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize


def parse_file_type(name: str) -> FileType:
    """The FileType called `name` (any case; Q4_K and Q5_K mean Q4_K_M and Q5_K_M), or a CamelidError."""
    key = name.strip().upper()
    key = ALIASES.get(key, key)
    if key not in FILE_TYPES:
        valid = ", ".join([*FILE_TYPES, *ALIASES])
        raise CamelidError(f"unknown quantization type {name!r}; choose one of: {valid}.")
    return FILE_TYPES[key]


# ---- which tensor gets which type (llama-quant.cpp) ----

_NOT_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
) + tuple(f"time_mix_{s}.weight" for s in ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2",
                                             "decay_w1", "decay_w2", "lerp_fused"))
_LAYER = re.compile(r"blk\.(\d+)\.")


def _layer(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def llama_order(names) -> list[str]:
    """Tensor names in llama.cpp's order: by layer (non-layer tensors first), then by name."""
    return sorted(names, key=lambda n: (_layer(n), n))


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: dimensions up to the last one larger than 1 (shape is NumPy order, ne reversed)."""
    ne = list(reversed(shape))
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return len(ne)


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp's tensor_allows_quantization for the default parameters."""
    return (_n_dims(shape) >= 2 and name.endswith("weight") and not any(s in name for s in _NOT_QUANTIZED)
            and name not in ("position_embd.weight", "token_types.weight"))


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                      ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                      ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if part in name:
            return cat
    return "other"


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class _MixState:
    arch: str
    n_layer: int
    n_expert: int
    is_70b: bool
    tied: bool
    n_attn_v: int
    i_attn_v: int = 0
    i_ffn_down: int = 0


def _mix_type(st: _MixState, ft: FileType, name: str, ncols: int, new: T) -> T:
    """llama_tensor_get_type_impl for the K-quant mixes and the 32-block types."""
    cat = _category(name)
    falcon = st.arch == "falcon"
    if cat == "output" or (st.tied and cat == "token_embd"):
        if falcon or ncols % GGML_QUANT_SIZES[new][0]:
            return T.Q8_0
        return new if new == T.Q8_0 else T.Q6_K
    if cat == "attn_v":
        if ft.name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(st.i_attn_v, st.n_attn_v):
            new = T.Q6_K
        elif ft.name == "Q4_K_S" and st.i_attn_v < 4:
            new = T.Q5_K
        if st.is_70b and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K
        if st.n_expert == 8:
            new = T.Q8_0
        st.i_attn_v += 1
    elif cat == "attn_k" and st.n_expert == 8:
        new = T.Q8_0
    elif cat == "ffn_down":
        i, n = st.i_ffn_down, st.n_layer
        if st.n_expert > 1:
            i = _layer(name)
            if not 0 <= i < n:
                raise CamelidError(f"cannot tell the layer of tensor {name} (block_count is {n}).")
        if ft.name == "Q4_K_M":
            if falcon:
                new = T.Q6_K if i < n // 16 else T.Q5_K if _use_more_bits(i, n) else T.Q4_K
            elif _use_more_bits(i, n):
                new = T.Q6_K
        elif ft.name == "Q5_K_M" and _use_more_bits(i, n):
            new = T.Q6_K
        elif ft.name == "Q4_K_S" and not falcon and i < n // 8:
            new = T.Q5_K
        st.i_ffn_down += 1
    elif cat == "attn_output" and not falcon and st.n_expert == 8 and ft.name in ("Q4_K_S", "Q4_K_M"):
        new = T.Q5_K
    return new


_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def _fallback(ncols: int, new: T) -> T:
    if ncols % GGML_QUANT_SIZES[new][0] == 0:
        return new
    out = _FALLBACK.get(new, new)
    return T.F16 if ncols % GGML_QUANT_SIZES[out][0] else out


def plan_types(tensors: dict, metadata: dict, ft: FileType, path: str = "model") -> dict[str, T]:
    """Target type of every tensor (name -> type), in llama.cpp's order, for file type `ft`.

    `tensors` maps names to objects with `ggml_type` and `shape` (NumPy order), as GGUFFile.tensors;
    a metadata value of the wrong type raises CamelidError naming `path`.
    """
    read = MetadataReader(metadata, path)
    arch = read.string("general.architecture", "llama")
    names = llama_order(tensors)
    n_layer = read.integer(f"{arch}.block_count", 0, min=0)
    n_head = read.integer(f"{arch}.attention.head_count", 0, min=0)
    n_head_kv = read.integer(f"{arch}.attention.head_count_kv", n_head, min=0)
    st = _MixState(
        arch=arch, n_layer=n_layer, n_expert=read.integer(f"{arch}.expert_count", 0, min=0),
        is_70b=n_layer == 80 and (arch == "qwen2" or (arch == "llama" and n_head != n_head_kv)),
        tied="output.weight" not in tensors, n_attn_v=sum(_category(n) == "attn_v" for n in names),
    )
    quantized = ft.default_type not in _FLOAT_TYPES
    plan, fallbacks = {}, Counter()
    for name in names:
        info = tensors[name]
        if not allows_quantization(name, info.shape):
            plan[name] = info.ggml_type
        elif quantized:
            ncols = info.shape[-1]
            chosen = _mix_type(st, ft, name, ncols, ft.default_type)
            plan[name] = _fallback(ncols, chosen)
            if plan[name] != chosen:
                fallbacks[(ncols, chosen.name, plan[name].name)] += 1
        else:
            plan[name] = ft.default_type
    for (ncols, chosen, used), n in fallbacks.items():
        warnings.warn(f"{n} tensors have rows of {ncols} values, not a multiple of the {chosen} block "
                      f"({GGML_QUANT_SIZES[T[chosen]][0]}): they get {used} instead, as in llama.cpp")
    return plan


# ---- the file ----

@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_file` wrote (or, for a dry run, would write)."""

    file_type: FileType
    types: dict[str, T]  # tensor name -> output type, in file order
    type_counts: dict[str, int]  # output type name -> number of tensors
    n_requantized: int  # quantized input tensors that went through float32
    input_bytes: int  # the input's tensor data
    output_bytes: int  # size of the output file


def _metadata(gf, ft: FileType) -> dict:
    from camelid.formats.gguf_writer import MetadataValue, metadata_from_gguf

    meta = metadata_from_gguf(gf.metadata, gf.metadata_types)
    for key in ("split.no", "split.count", "split.tensors.count", "general.quantization_version", "general.file_type"):
        meta.pop(key, None)  # the two general keys move to the end, as llama.cpp's gguf_set_val does
    meta["general.quantization_version"] = MetadataValue(QUANTIZATION_VERSION, GGUFValueType.UINT32)
    meta["general.file_type"] = MetadataValue(ft.ftype, GGUFValueType.UINT32)
    return meta


_SCALAR_SIZES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.UINT64: 8,
    GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}


def _value_size(value, vtype: GGUFValueType, item_type: GGUFValueType | None) -> int:
    """Bytes of one metadata value as GGUF stores it (after its u32 type)."""
    if vtype == GGUFValueType.STRING:
        return 8 + len(value.encode("utf-8"))
    if vtype != GGUFValueType.ARRAY:
        return _SCALAR_SIZES[vtype]
    if item_type in (GGUFValueType.STRING, GGUFValueType.ARRAY):  # u32 item type, u64 count, items
        return 4 + 8 + sum(_value_size(v, item_type, None) for v in value)
    return 4 + 8 + len(value) * _SCALAR_SIZES[item_type]


def gguf_size(arch: str, metadata: dict, planned, alignment: int = 32) -> int:
    """Exact size of the GGUF file write_gguf produces for (arch, metadata, planned tensors)."""
    pad = lambda n: -(-n // alignment) * alignment  # noqa: E731
    size = 4 + 4 + 8 + 8  # magic, version, n_tensors, n_kv
    size += 8 + len("general.architecture") + 4 + 8 + len(arch.encode("utf-8"))
    for key, mv in metadata.items():
        size += 8 + len(key.encode("utf-8")) + 4 + _value_size(mv.value, mv.vtype, mv.item_type)
    for t in planned:
        size += 8 + len(t.name.encode("utf-8")) + 4 + 8 * len(t.shape) + 4 + 8
    return pad(size) + sum(pad(t.nbytes) for t in planned)


def _producer(info, new_type: T):
    """produce() for one output tensor: the input's bytes if the type is unchanged, else the raw
    blocks (n_rows, row_bytes) of new_type, dequantized and quantized a chunk of rows at a time."""

    def produce() -> np.ndarray:
        from camelid.quant.types import dequantize
        from camelid.quant.encode import quantize_rows, row_bytes

        raw = info.raw
        if info.ggml_type == new_type:
            return raw
        n_cols = info.shape[-1]
        out = np.empty((raw.shape[0], row_bytes(new_type, n_cols)), np.uint8)
        step = max(1, _CHUNK_WEIGHTS // n_cols)
        for r in range(0, raw.shape[0], step):
            out[r:r + step] = quantize_rows(dequantize(raw[r:r + step], info.ggml_type, n_cols), new_type)
        return out

    return produce


def _check_paths(src: str, dst: str) -> None:
    same = os.path.realpath(src) == os.path.realpath(dst)
    if same or (os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst)):
        raise CamelidError(f"the output {dst} is the input file; choose another output name.")
    if os.path.isdir(dst):
        raise CamelidError(f"the output {dst} is a directory; give a file name such as {os.path.join(dst, 'model-q4_0.gguf')}.")
    out_dir = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(out_dir):
        raise CamelidError(f"cannot write {dst}: the directory {out_dir} does not exist.")
    if not os.access(out_dir, os.W_OK):
        raise CamelidError(f"cannot write {dst}: the directory {out_dir} is not writable.")


def quantize_file(src: str, dst: str | None, type_name: str, allow_requantize: bool = False,
                  n_threads: int | None = None, progress: bool = True) -> QuantizeResult:
    """Quantize the model file `src` to file type `type_name` and write it to `dst`, streaming.

    dst None is a dry run: nothing is written and the result gives the size the file would have.
    Tensors are produced one at a time (peak memory about one tensor plus a 16 MB chunk); the
    output appears under `dst` only when complete. Raises CamelidError for a bad type name, path or
    input file, and for quantized input without allow_requantize.
    """
    from camelid.formats.gguf_writer import PlannedTensor, write_gguf
    from camelid.formats.model_file import open_model_file
    from camelid.quant.types import check_supported
    from camelid.threads import set_threads

    ft = parse_file_type(type_name)
    if dst is not None:
        _check_paths(os.fspath(src), os.fspath(dst))
    gf = open_model_file(src)
    plan = plan_types(gf.tensors, gf.metadata, ft, gf.path)
    requantized = [n for n, t in plan.items() if t != gf.tensors[n].ggml_type and gf.tensors[n].ggml_type not in _FLOAT_TYPES]
    if requantized and not allow_requantize and dst is not None:
        first = gf.tensors[requantized[0]]
        raise CamelidError(
            f"{src} is already quantized ({first.name} is {first.ggml_type.name}); requantizing loses quality. "
            "Start from an F32/F16/BF16 file, or pass --allow-requantize to do it anyway."
        )
    for name, new_type in plan.items():
        if new_type != gf.tensors[name].ggml_type:
            check_supported(gf.tensors[name].ggml_type, name)
    if requantized and dst is not None:
        warnings.warn(f"requantizing {len(requantized)} already-quantized tensors through float32: the result is "
                      "worse than quantizing the original F16/F32 model.")
    arch = MetadataReader(gf.metadata, gf.path).string("general.architecture", "llama")
    meta = _metadata(gf, ft)
    planned = [PlannedTensor(n, t, gf.tensors[n].shape, _producer(gf.tensors[n], t)) for n, t in plan.items()]
    size = gguf_size(arch, meta, planned)
    if dst is not None:
        set_threads(n_threads)
        try:
            size = write_gguf(dst, arch, meta, planned, progress=f"quantizing to {ft.name}" if progress else None)
        except OSError as exc:
            raise CamelidError(f"cannot write {dst}: {exc.strerror or exc}. Check the path and the free disk space.") from None
    return QuantizeResult(
        file_type=ft, types=plan, type_counts=dict(Counter(t.name for t in plan.values())),
        n_requantized=len(requantized), input_bytes=sum(t.raw.nbytes for t in gf.tensors.values()), output_bytes=size,
    )
