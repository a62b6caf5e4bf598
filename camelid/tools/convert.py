"""Convert a LLaMA-family checkpoint (Hugging Face or Meta layout) to GGUF, one tensor at a time.

`convert_checkpoint` plans every output tensor up front (GGUF name, type, shape: checked against the
config before anything is written) and hands `write_gguf` a `produce()` per tensor that loads the one
source tensor, reorders q/k rows for llama.cpp's RoPE, and casts or quantizes it. Peak memory is a few
copies of the largest tensor. The metadata keys are those llama.cpp's convert_hf_to_gguf.py writes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFValueType as V, LlamaFileType

from camelid.errors import CamelidError
from camelid.formats.gguf_writer import MetadataValue, PlannedTensor, write_gguf
from camelid.formats.hf import Checkpoint

# Hugging Face architectures -> GGUF architecture.
ARCHITECTURES = {"LlamaForCausalLM": "llama", "LLaMAForCausalLM": "llama", "MistralForCausalLM": "llama",
                 "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Gemma3ForCausalLM": "gemma3",
                 "Phi3ForCausalLM": "phi3"}
_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                "gemma3_text": "gemma3", "phi3": "phi3"}  # config.json without "architectures"
_QK_NORM_ARCHITECTURES = ("qwen3", "gemma3")  # per-head RMSNorm on q and k
OUTTYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1,
            "q5_0": T.Q5_0, "q5_1": T.Q5_1, "q4_k": T.Q4_K, "q5_k": T.Q5_K, "q6_k": T.Q6_K}
_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
               "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0, "q4_1": LlamaFileType.MOSTLY_Q4_1,
               "q5_0": LlamaFileType.MOSTLY_Q5_0, "q5_1": LlamaFileType.MOSTLY_Q5_1,
               "q4_k": LlamaFileType.MOSTLY_Q4_K_S, "q5_k": LlamaFileType.MOSTLY_Q5_K_S,
               "q6_k": LlamaFileType.MOSTLY_Q6_K}
# When a row length is not a multiple of 256, llama.cpp's quantizer falls back to a 32-block type.
_K_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}

_LAYER_TENSORS = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
}
# Gemma 3 normalizes before and after both the attention and the FFN.
_GEMMA3_LAYER_TENSORS = dict(_LAYER_TENSORS, **{
    "post_attention_layernorm.weight": "post_attention_norm.weight", "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight"})
# Phi-3 stores q, k, v in one matrix and gate, up in another; GGUF keeps them fused.
_PHI3_LAYER_TENSORS = dict(_LAYER_TENSORS, **{"self_attn.qkv_proj.weight": "attn_qkv.weight",
                                              "mlp.gate_up_proj.weight": "ffn_up.weight"})
_TOP_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class HParams:
    """The model dimensions read from an HF config, with the tensor count implied by them."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx: int
    rms_eps: float
    rope_theta: float
    qkv_bias: bool
    qk_norm: bool = False  # attn_q_norm / attn_k_norm per layer (qwen3, gemma3)


def parse_outtype(outtype: str) -> T:
    """The GGML type for an --outtype name (case-insensitive); CamelidError listing the choices otherwise."""
    try:
        return OUTTYPES[outtype.lower()]
    except KeyError:
        raise CamelidError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}.") from None


def gguf_name(hf_name: str, arch: str = "llama") -> str | None:
    """The GGUF tensor name for a Hugging Face LLaMA-family tensor name, or None for buffers that are not written."""
    if hf_name in _TOP_TENSORS:
        return _TOP_TENSORS[hf_name]
    layer_tensors = {"gemma3": _GEMMA3_LAYER_TENSORS, "phi3": _PHI3_LAYER_TENSORS}.get(arch, _LAYER_TENSORS)
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in layer_tensors:
        return f"blk.{m.group(1)}.{layer_tensors[m.group(2)]}"
    if _IGNORED.fullmatch(hf_name):
        return None
    raise CamelidError(f"the checkpoint has a tensor camelid cannot place: {hf_name}. Is this a plain LLaMA-family model?")


def read_hparams(ckpt: Checkpoint) -> HParams:
    """Architecture and dimensions from `ckpt.config`; n_vocab from the embedding tensor (it may exceed config's)."""
    cfg = ckpt.config
    archs = cfg.get("architectures") or []
    arch_name = archs[0] if archs else f"model_type {cfg.get('model_type', 'unknown')}"
    arch = ARCHITECTURES.get(arch_name) if archs else _MODEL_TYPES.get(cfg.get("model_type"))
    if arch is None:
        raise CamelidError(f"unsupported architecture {arch_name} in config.json; camelid converts "
                           f"{', '.join(sorted(set(ARCHITECTURES) - {'LLaMAForCausalLM'}))}.")
    try:
        n_embd, n_head = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        n_layer, n_ff = int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CamelidError(f"config.json lacks {exc}; it is not a complete {arch_name} config.") from None
    if "model.embed_tokens.weight" not in ckpt.tensors.names():
        raise CamelidError("the checkpoint has no model.embed_tokens.weight tensor; shards are missing or it is not a LLaMA model.")
    n_vocab = ckpt.tensors.shape("model.embed_tokens.weight")[0]
    return HParams(
        arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
        head_dim=int(cfg.get("head_dim") or n_embd // n_head), n_ff=n_ff,
        n_ctx=int(cfg.get("max_position_embeddings") or 2048),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=float(rope_parameters(cfg).get("rope_theta", 10000.0)),
        qkv_bias=arch == "qwen2", qk_norm=arch in _QK_NORM_ARCHITECTURES,
    )


def rope_parameters(cfg: dict, layer_type: str = "full_attention") -> dict:
    """RoPE settings of config.json in one dict (rope_type, factor, rope_theta, ...): transformers 5's
    rope_parameters (per layer type for Gemma 3), else rope_scaling plus the top-level rope_theta."""
    params = cfg.get("rope_parameters") or {}
    if layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    merged = dict(cfg.get("rope_scaling") or {}, **params)
    if "rope_theta" not in merged and cfg.get("rope_theta") is not None:
        merged["rope_theta"] = cfg["rope_theta"]
    return merged


def expected_shapes(hp: HParams, tied: bool) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> the shape the config implies, (n_out, n_in) for matrices."""
    q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (hp.n_vocab, hp.n_embd)}
    for i in range(hp.n_layer):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hp.n_embd,),
            p + "self_attn.q_proj.weight": (q, hp.n_embd), p + "self_attn.k_proj.weight": (kv, hp.n_embd),
            p + "self_attn.v_proj.weight": (kv, hp.n_embd), p + "self_attn.o_proj.weight": (hp.n_embd, q),
            p + "post_attention_layernorm.weight": (hp.n_embd,),
            p + "mlp.gate_proj.weight": (hp.n_ff, hp.n_embd), p + "mlp.up_proj.weight": (hp.n_ff, hp.n_embd),
            p + "mlp.down_proj.weight": (hp.n_embd, hp.n_ff),
        })
        if hp.arch == "phi3":
            for part in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                         "mlp.gate_proj.weight", "mlp.up_proj.weight"):
                del shapes[p + part]
            shapes.update({p + "self_attn.qkv_proj.weight": (q + 2 * kv, hp.n_embd),
                           p + "mlp.gate_up_proj.weight": (2 * hp.n_ff, hp.n_embd)})
        if hp.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (hp.head_dim,), p + "self_attn.k_norm.weight": (hp.head_dim,)})
        if hp.arch == "gemma3":
            shapes.update({p + "pre_feedforward_layernorm.weight": (hp.n_embd,),
                           p + "post_feedforward_layernorm.weight": (hp.n_embd,)})
        if hp.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    shapes["model.norm.weight"] = (hp.n_embd,)
    if not tied:
        shapes["lm_head.weight"] = (hp.n_vocab, hp.n_embd)
    return shapes


def rotate_half_to_interleaved(w: np.ndarray, n_head: int) -> np.ndarray:
    """q/k rows (or bias) from HF's rotate-half order to llama.cpp's interleaved pairs.

    w: (n_head * head_dim, ...). Within each head, row j*head_dim/2 + i moves to 2i + j.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_type(outtype: T, shape: tuple[int, ...]) -> T:
    if len(shape) == 1 or outtype in (T.F32, T.F16, T.BF16):
        return T.F32 if len(shape) == 1 else outtype
    if shape[-1] % GGML_QUANT_SIZES[outtype][0]:
        outtype = _K_FALLBACK.get(outtype, outtype)
    return outtype if shape[-1] % GGML_QUANT_SIZES[outtype][0] == 0 else T.F16


_CHUNK_WEIGHTS = 1 << 22  # quantize about 4M weights (16 MB as float32) at a time


def _quantize(x: np.ndarray, ggml_type: T) -> np.ndarray:
    """float (n_rows, n_cols) -> uint8 (n_rows, row_bytes) blocks of `ggml_type`, a chunk of rows at a time
    so a float16 source is widened to float32 only one chunk at a time."""
    from camelid.quant.encode import quantize_rows

    n_rows, n_cols = x.shape
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    out = np.empty((n_rows, n_cols // block_size * type_size), np.uint8)
    step = max(1, _CHUNK_WEIGHTS // n_cols)
    for i in range(0, n_rows, step):
        out[i:i + step] = quantize_rows(np.ascontiguousarray(x[i:i + step], dtype=np.float32), ggml_type)
    return out


def _producer(ckpt: Checkpoint, hf_name: str, shape: tuple[int, ...], ggml_type: T, n_rope_heads: int | None,
              norm_shift: float = 0.0) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        w = ckpt.tensors.load(hf_name)
        if tuple(w.shape) != shape:
            raise CamelidError(f"tensor {hf_name} loaded with shape {list(w.shape)}, expected {list(shape)}.")
        if norm_shift:  # Gemma's RMSNorm multiplies by 1 + w; GGUF stores 1 + w
            w = np.asarray(w, dtype=np.float32) + np.float32(norm_shift)
        if n_rope_heads is not None:
            w = rotate_half_to_interleaved(w, n_rope_heads)
        if ggml_type == T.F32:
            return np.ascontiguousarray(w, dtype=np.float32)
        if ggml_type == T.F16:
            return np.ascontiguousarray(w, dtype=np.float16)
        return _quantize(w.reshape(-1, shape[-1]), ggml_type)
    return produce


def plan_tensors(ckpt: Checkpoint, hp: HParams, outtype: T) -> list[PlannedTensor]:
    """The GGUF tensors to write, in llama.cpp's order, each checked against the config's shapes."""
    names = ckpt.tensors.names()
    present = set(names)
    tied = "lm_head.weight" not in present
    expected = expected_shapes(hp, tied)
    missing = [n for n in expected if n not in present]
    if missing:
        raise CamelidError(f"the checkpoint lacks tensor {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                           + "; a shard is missing or config.json does not match the weights.")
    for name in names:
        if name not in expected and gguf_name(name, hp.arch) is not None:  # gguf_name raises for non-LLaMA tensors
            raise CamelidError(f"the checkpoint has tensor {name}, which the model config.json describes does not have "
                               f"({hp.n_layer} layers, bias={hp.qkv_bias}); the config does not belong to these weights.")
    planned = []
    for name, shape in expected.items():
        actual = tuple(ckpt.tensors.shape(name))
        if actual != shape:
            raise CamelidError(f"tensor {name} has shape {list(actual)} but config.json implies {list(shape)}; "
                               "the config does not belong to these weights.")
        rope_heads = None
        if hp.arch == "llama" and name.endswith("q_proj.weight"):
            rope_heads = hp.n_head
        elif hp.arch == "llama" and name.endswith("k_proj.weight"):
            rope_heads = hp.n_head_kv
        ggml_type = _tensor_type(outtype, shape)
        shift = 1.0 if hp.arch == "gemma3" and name.endswith("norm.weight") else 0.0
        planned.append(PlannedTensor(gguf_name(name, hp.arch), ggml_type, shape,
                                     _producer(ckpt, name, shape, ggml_type, rope_heads, shift)))
    planned.extend(_extra_tensors(ckpt, hp))
    return planned


def _extra_tensors(ckpt: Checkpoint, hp: HParams) -> list[PlannedTensor]:
    """LLaMA-3.1-style RoPE scaling is stored as a per-frequency factor tensor, rope_freqs.weight;
    Phi-3's LongRoPE as two, rope_factors_long.weight and rope_factors_short.weight."""
    if hp.arch == "phi3":
        return _phi3_rope_factors(ckpt.config, hp)
    scaling = rope_parameters(ckpt.config)
    if str(scaling.get("rope_type", scaling.get("type", ""))).lower() != "llama3":
        return []
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / hp.rope_theta ** (np.arange(0, hp.head_dim, 2, dtype=np.float32) / hp.head_dim)
    factors = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    data = np.array(factors, dtype=np.float32)  # (head_dim / 2,)
    return [PlannedTensor("rope_freqs.weight", T.F32, data.shape, lambda: data)]


def model_metadata(ckpt: Checkpoint, hp: HParams, outtype: str) -> dict[str, MetadataValue]:
    """The general.* and {arch}.* keys llama.cpp reads for this model."""
    a = hp.arch
    u32 = lambda v: MetadataValue(int(v), V.UINT32)
    f32 = lambda v: MetadataValue(float(v), V.FLOAT32)
    md = {
        "general.name": MetadataValue(os.path.basename(os.path.normpath(ckpt.source)) or "model", V.STRING),
        "general.file_type": u32(_FILE_TYPES[outtype]),
        f"{a}.vocab_size": u32(hp.n_vocab),
        f"{a}.context_length": u32(hp.n_ctx),
        f"{a}.embedding_length": u32(hp.n_embd),
        f"{a}.block_count": u32(hp.n_layer),
        f"{a}.feed_forward_length": u32(hp.n_ff),
        f"{a}.attention.head_count": u32(hp.n_head),
        f"{a}.attention.head_count_kv": u32(hp.n_head_kv),
        f"{a}.attention.layer_norm_rms_epsilon": f32(hp.rms_eps),
        f"{a}.rope.freq_base": f32(hp.rope_theta),
        f"{a}.rope.dimension_count": u32(hp.head_dim),
    }
    if hp.head_dim != hp.n_embd // hp.n_head or a == "gemma3":
        md[f"{a}.attention.key_length"] = u32(hp.head_dim)
        md[f"{a}.attention.value_length"] = u32(hp.head_dim)
    if a == "gemma3":
        md.update(_gemma3_metadata(ckpt.config, u32, f32))
    elif a == "phi3":
        md.update(_phi3_metadata(ckpt.config, hp, u32, f32))
        return md  # Phi-3's RoPE scaling (LongRoPE) is written by _phi3_metadata
    elif a == "llama" and ckpt.config.get("model_type") == "mistral" and ckpt.config.get("sliding_window"):
        # read by camelid (every layer windowed, as transformers runs Mistral); llama.cpp ignores it for llama
        md["llama.attention.sliding_window"] = u32(ckpt.config["sliding_window"])
    scaling = rope_parameters(ckpt.config)
    kind = str(scaling.get("rope_type", scaling.get("type", ""))).lower()
    if kind in ("linear", "yarn") and "factor" in scaling:
        md[f"{a}.rope.scaling.type"] = MetadataValue(kind, V.STRING)
        md[f"{a}.rope.scaling.factor"] = f32(scaling["factor"])
        if kind == "yarn" and "original_max_position_embeddings" in scaling:
            md[f"{a}.rope.scaling.original_context_length"] = u32(scaling["original_max_position_embeddings"])
    elif kind not in ("", "default", "llama3"):
        raise CamelidError(f"config.json asks for rope_scaling type {kind!r}, which camelid cannot convert; "
                           "supported: linear, yarn, llama3.")
    return md


def _phi3_rope(cfg: dict, hp: HParams) -> tuple[int, int, list | None, list | None, str]:
    """Phi-3's RoPE settings: (rope_dims, original context length, long_factor, short_factor, scaling type)."""
    scaling = rope_parameters(cfg)
    rot_pct = float(scaling.get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0)
    rope_dims = int(rot_pct * hp.n_embd) // hp.n_head
    n_ctx_orig = int(scaling.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings") or hp.n_ctx)
    kind = str(scaling.get("rope_type", scaling.get("type", ""))).lower()
    return rope_dims, n_ctx_orig, scaling.get("long_factor"), scaling.get("short_factor"), kind


def _phi3_metadata(cfg: dict, hp: HParams, u32, f32) -> dict[str, MetadataValue]:
    """Phi-3's keys beyond LLaMA's, as llama.cpp's Phi3MiniModel writes them: with LongRoPE factors
    (rope_scaling long_factor), the attention factor sqrt(1 + ln(s) / ln(n_orig)) of the context
    extension s = max_position_embeddings / original_max_position_embeddings."""
    rope_dims, n_ctx_orig, long_factors, short_factors, kind = _phi3_rope(cfg, hp)
    md = {"phi3.rope.dimension_count": u32(rope_dims),
          "phi3.rope.scaling.original_context_length": u32(n_ctx_orig)}
    if long_factors:
        scale = hp.n_ctx / n_ctx_orig
        if kind in ("su", "longrope"):
            attn_factor = math.sqrt(1 + math.log(scale) / math.log(n_ctx_orig)) if scale > 1.0 else 1.0
        elif kind == "yarn":
            attn_factor = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
        else:
            raise CamelidError(f"config.json gives LongRoPE factors with rope_scaling type {kind or 'missing'!r}; "
                               "camelid converts Phi-3 models with type longrope (or su, yarn).")
        md["phi3.rope.scaling.attn_factor"] = f32(attn_factor)
    if cfg.get("sliding_window"):
        md["phi3.attention.sliding_window"] = u32(cfg["sliding_window"])
    return md


def _phi3_rope_factors(cfg: dict, hp: HParams) -> list[PlannedTensor]:
    """LongRoPE's rope_factors_long.weight and rope_factors_short.weight, (rope_dims/2,) float32 each."""
    rope_dims, _, long_factors, short_factors, _ = _phi3_rope(cfg, hp)
    if not long_factors:
        return []
    if not short_factors or len(long_factors) != len(short_factors) or len(long_factors) != rope_dims // 2:
        raise CamelidError(f"config.json's rope_scaling long_factor and short_factor must both list {rope_dims // 2} values "
                           f"(half the rotated dimensions); they list {len(long_factors)} and {len(short_factors or [])}.")
    try:
        tensors = {name: np.array(values, dtype=np.float32) for name, values in
                   (("rope_factors_long.weight", long_factors), ("rope_factors_short.weight", short_factors))}
    except (TypeError, ValueError):
        raise CamelidError("config.json's rope_scaling long_factor and short_factor must be lists of numbers.") from None
    return [PlannedTensor(name, T.F32, data.shape, lambda data=data: data) for name, data in tensors.items()]


def _gemma3_metadata(cfg: dict, u32, f32) -> dict[str, MetadataValue]:
    """Gemma 3's window keys: the window, and the layer pattern and local RoPE base where they differ
    from llama.cpp's defaults (5 windowed layers then a global one; base 10000)."""
    md = {}
    if cfg.get("final_logit_softcapping"):
        md["gemma3.final_logit_softcapping"] = f32(cfg["final_logit_softcapping"])
    if cfg.get("attn_logit_softcapping"):
        raise CamelidError("config.json asks for attention logit soft-capping, which Gemma 3 does not use; is it a Gemma 2 config?")
    if cfg.get("query_pre_attn_scalar", cfg.get("head_dim")) != cfg.get("head_dim"):
        raise CamelidError("config.json's query_pre_attn_scalar differs from head_dim; llama.cpp scales queries by "
                           "1/sqrt(head_dim) for Gemma 3, so camelid cannot convert this model faithfully.")
    types = cfg.get("layer_types") or []
    if not cfg.get("sliding_window") or (types and "sliding_attention" not in types):
        return md
    md["gemma3.attention.sliding_window"] = u32(cfg["sliding_window"])
    n_layer = int(cfg["num_hidden_layers"])
    pattern = int(cfg.get("sliding_window_pattern") or 6)
    if types:
        swa = [t == "sliding_attention" for t in types]
        pattern = next((p for p in range(1, n_layer + 2) if swa == [i % p < p - 1 for i in range(n_layer)]), 0)
        if not pattern:
            raise CamelidError("config.json's layer_types do not repeat as a pattern of windowed layers followed by one "
                               "global layer; camelid cannot write that for llama.cpp.")
    if pattern != 6:
        md["gemma3.attention.sliding_window_pattern"] = u32(pattern)
    base_swa = float(rope_parameters(cfg, "sliding_attention").get("rope_theta", cfg.get("rope_local_base_freq") or 10000.0))
    if base_swa != 10000.0:
        md["gemma3.rope.freq_base_swa"] = f32(base_swa)
    return md


def convert_checkpoint(ckpt: Checkpoint, out_path, outtype: str = "f16", progress: bool = True) -> None:
    """Write `ckpt` as a GGUF file at `out_path` with 2-D weights in `outtype` (norms stay F32).

    Everything is validated (architecture, tensor names and shapes, tokenizer files) before the first
    byte is written; tensors are then loaded, converted and written one at a time, and the file
    appears under `out_path` only when complete. Raises CamelidError for any problem with the input.
    """
    from camelid.tools.hf_vocab import vocab_metadata

    ggml_outtype = parse_outtype(outtype)
    outtype = outtype.lower()
    hp = read_hparams(ckpt)
    planned = plan_tensors(ckpt, hp, ggml_outtype)
    metadata = model_metadata(ckpt, hp, outtype)
    metadata.update(vocab_metadata(ckpt.tokenizer_dir, hp.n_vocab, ckpt.config))
    write_gguf(out_path, hp.arch, metadata, planned, progress="converting" if progress else None)
