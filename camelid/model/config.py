"""The model's hyper-parameters, read once from GGUF metadata into a frozen dataclass.

Every value that sizes a buffer or indexes memory is checked here, against the others and against
the shape of token_embd, before any kernel sees it: the kernels run without bounds checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from typing import Any, Mapping

from camelid.errors import CamelidError
from camelid.formats.metadata import MAX_SIZE, MetadataReader, shown

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
# Architectures whose GGUF q/k weights expect the NeoX RoPE layout (rotate x[i] with x[i + d/2]);
# the others use the "normal" layout (rotate x[2i] with x[2i+1]), as llama.cpp's llama_model_rope_type.
NEOX_ROPE_ARCHITECTURES = ("qwen2", "qwen3", "gemma3", "phi3")
# gemma3's default sliding-window pattern: of every 6 layers the first 5 are windowed (llama.cpp's load_swa_pattern).
GEMMA3_SWA_PATTERN = 6
# Float settings are used in float32: RoPE's 1/scale and the angles must stay finite there.
FLOAT32_MAX = 3.4028234663852886e38
MAX_ROPE_SCALE = 1e6


@dataclass(frozen=True)
class Config:
    """Hyper-parameters of a LLaMA-family transformer, named after their GGUF keys."""

    arch: str  # general.architecture: one of SUPPORTED_ARCHITECTURES
    n_vocab: int  # rows of token_embd
    n_embd: int  # {arch}.embedding_length: width of the residual stream
    n_layer: int  # {arch}.block_count
    n_head: int  # {arch}.attention.head_count: query heads
    n_head_kv: int  # {arch}.attention.head_count_kv: key/value heads (GQA when < n_head)
    head_dim: int  # {arch}.attention.key_length, else n_embd // n_head
    n_ff: int  # {arch}.feed_forward_length: hidden width of the SwiGLU FFN
    n_ctx_train: int  # {arch}.context_length: the context the model was trained for
    rms_eps: float  # {arch}.attention.layer_norm_rms_epsilon
    rope_base: float  # {arch}.rope.freq_base
    rope_dim: int  # {arch}.rope.dimension_count: leading dims of each head that are rotated
    rope_scale: float  # linear RoPE scaling: positions are divided by this ({arch}.rope.scaling.factor)
    rope_neox: bool  # True: rotate (x[i], x[i + rope_dim/2]); False: rotate (x[2i], x[2i+1])
    tied_output: bool  # True when the file has no output.weight and token_embd is reused
    rope_attn_factor: float = 1.0  # {arch}.rope.scaling.attn_factor: RoPE's cos and sin are multiplied by this (Phi-3 LongRoPE)
    n_ctx_orig: int = 0  # {arch}.rope.scaling.original_context_length, else n_ctx_train: Phi-3's long factors apply beyond it
    sliding_window: int = 0  # {arch}.attention.sliding_window: positions a windowed layer sees (0: no window)
    swa_layers: tuple[bool, ...] = ()  # per layer, True where the sliding window applies (empty: none)
    rope_base_swa: float = 10000.0  # {arch}.rope.freq_base_swa: RoPE base of the windowed layers (gemma3)
    q_scale: float = 0.0  # gemma3, phi3: q is multiplied by this before attention, whose scale is then 1 (0: unused)
    embd_scale: float = 1.0  # token embeddings are multiplied by this in float32 (gemma3: sqrt(n_embd))
    ffn_gelu: bool = False  # True: GeGLU with tanh GELU (gemma3); False: SwiGLU
    logit_softcap: float = 0.0  # {arch}.final_logit_softcapping: logits -> c * tanh(logits / c) (0: none)

    @property
    def n_group(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_head_kv

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]], path: str = "model") -> "Config":
        """Build the config from GGUF metadata and the file's tensor shapes (name -> shape, rows first).

        Raises CamelidError for what camelid cannot run: an unsupported architecture, a missing key,
        a value of the wrong type or out of range, values that do not fit together (heads that do
        not divide, RoPE dimensions beyond the head), or a vocabulary size that disagrees with
        token_embd, output or the tokenizer's token list.
        """
        arch = MetadataReader(meta, path).string("general.architecture", None)
        if arch not in SUPPORTED_ARCHITECTURES:
            found = "(general.architecture is missing)" if arch is None else repr(arch[:40])
            raise CamelidError(
                f"{path}: architecture {found} is not supported; camelid runs {', '.join(SUPPORTED_ARCHITECTURES)} "
                "(LLaMA 1/2/3, Mistral, SmolLM2, Chinese-LLaMA/Alpaca, Qwen 1.5/2/2.5/3, Gemma 3, Phi-3/Phi-4-mini)."
            )
        read = MetadataReader(meta, path, prefix=f"{arch}.")
        n_embd = read.size("embedding_length")
        n_head = read.size("attention.head_count")
        n_head_kv = read.size("attention.head_count_kv", n_head)
        if n_head % n_head_kv:
            read.fail(f"{n_head} query heads ({arch}.attention.head_count) cannot be grouped over {n_head_kv} key/value heads "
                      f"({arch}.attention.head_count_kv)")
        if not read.has("attention.key_length") and n_embd % n_head:
            read.fail(f"the embedding length {n_embd} is not a multiple of the {n_head} heads, and {arch}.attention.key_length is not given")
        head_dim = read.size("attention.key_length", n_embd // n_head)
        if read.size("attention.value_length", head_dim) != head_dim:
            read.fail(f"{arch}.attention.value_length differs from the head size {head_dim}; camelid needs keys and values of one size")
        rope_dim = read.size("rope.dimension_count", head_dim)
        if rope_dim % 2 or rope_dim > head_dim:
            read.fail(f"{arch}.rope.dimension_count is {rope_dim}; it must be even and at most the head size {head_dim}")
        scaling_type = read.string("rope.scaling.type", "none")
        linear = read.number("rope.scale_linear", 1.0, low=0.0, high=MAX_ROPE_SCALE)
        rope_scale = read.number("rope.scaling.factor", linear, low=0.0, high=MAX_ROPE_SCALE) or 1.0
        if scaling_type not in ("none", "linear") and rope_scale != 1.0:
            raise CamelidError(f"{path}: RoPE scaling {shown(scaling_type)} is not supported yet; camelid supports linear scaling.")
        if rope_scale < 1 / MAX_ROPE_SCALE:
            read.fail(f"the RoPE scaling factor is {rope_scale}; it must be at least {1 / MAX_ROPE_SCALE}")
        rope_attn_factor = read.number("rope.scaling.attn_factor", 1.0, low=0.0, high=MAX_ROPE_SCALE)
        if rope_attn_factor <= 0:
            read.fail(f"{arch}.rope.scaling.attn_factor is {rope_attn_factor}; it must be positive")
        rope_base = read.number("rope.freq_base", 10000.0, high=FLOAT32_MAX)
        if rope_base <= 0:
            read.fail(f"{arch}.rope.freq_base is {rope_base}; it must be positive")
        rms_eps = read.number("attention.layer_norm_rms_epsilon", 1e-5, high=1.0)
        if rms_eps < 0:
            read.fail(f"{arch}.attention.layer_norm_rms_epsilon is {rms_eps}; it must not be negative")
        n_layer = read.size("block_count")
        n_present = _layers_present(tensor_shapes)
        if n_layer > n_present:
            read.fail(f"{read.key('block_count')} is {n_layer} but tensors blk.{n_present}.* are missing "
                      f"(the file has {n_present} layers)")
        n_ctx_train = read.size("context_length", 2048)
        return cls(
            arch=arch,
            n_vocab=_vocab_size(read, tensor_shapes, n_embd),
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=read.size("feed_forward_length"),
            n_ctx_train=n_ctx_train,
            rms_eps=rms_eps,
            rope_base=rope_base,
            rope_dim=rope_dim,
            rope_scale=rope_scale,
            rope_neox=arch in NEOX_ROPE_ARCHITECTURES,
            tied_output="output.weight" not in tensor_shapes,
            rope_attn_factor=rope_attn_factor,
            n_ctx_orig=read.integer("rope.scaling.original_context_length", 0, min=0, max=MAX_SIZE) or n_ctx_train,
            **_arch_fields(read, arch, n_embd, n_layer, head_dim),
        )


def _arch_fields(read: MetadataReader, arch: str, n_embd: int, n_layer: int, head_dim: int) -> dict[str, Any]:
    """The Config fields only some architectures set, as llama.cpp's load_arch_hparams reads them.

    A llama file that declares {arch}.attention.sliding_window (Mistral 7B v0.1 converted with its
    window) gets the window on every layer, as transformers' MistralForCausalLM runs it; llama.cpp
    ignores the key for llama (and its converter does not write it), so the two part beyond it.
    """
    window = read.integer("attention.sliding_window", 0, min=0, max=MAX_SIZE)
    if arch == "llama" and window:
        return dict(sliding_window=window, swa_layers=(True,) * n_layer)
    if arch == "phi3":  # llama.cpp scales q before attention and ignores Phi-3's window
        return dict(q_scale=float(np.float32(1.0) / np.sqrt(np.float32(head_dim))))
    if arch != "gemma3":
        return {}
    # llama.cpp: 1/sqrt(head_dim), except Gemma 3 27B (62 layers): 1/sqrt(n_embd / n_head)
    q_dim = n_embd // read.size("attention.head_count") if n_layer == 62 else head_dim
    fields: dict[str, Any] = dict(q_scale=float(np.float32(1.0) / np.sqrt(np.float32(q_dim))),
                                  embd_scale=float(np.sqrt(np.float32(n_embd))), ffn_gelu=True,
                                  logit_softcap=read.number("final_logit_softcapping", 0.0, low=0.0, high=FLOAT32_MAX))
    if window:
        pattern = read.size("attention.sliding_window_pattern", GEMMA3_SWA_PATTERN)
        fields.update(sliding_window=read.size("attention.sliding_window"),
                      swa_layers=tuple(i % pattern < pattern - 1 for i in range(n_layer)),
                      rope_base_swa=read.number("rope.freq_base_swa", 10000.0, low=1e-30, high=FLOAT32_MAX))
    return fields


def _layers_present(tensor_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """How many layers, from blk.0 on, have tensors in the file."""
    indices = {name.split(".", 2)[1] for name in tensor_shapes if name.startswith("blk.") and name.count(".") >= 2}
    n = 0
    while str(n) in indices:
        n += 1
    return n


def _vocab_size(read: MetadataReader, tensor_shapes: Mapping[str, tuple[int, ...]], n_embd: int) -> int:
    """Rows of token_embd, checked against output.weight, {arch}.vocab_size and the tokenizer's token list."""
    shape = tensor_shapes.get("token_embd.weight")
    if shape is None:
        raise CamelidError(f"{read.path}: tensor token_embd.weight is missing; the file is incomplete.")
    shape = tuple(shape)
    if len(shape) != 2 or shape[1] != n_embd or not 1 <= shape[0] <= MAX_SIZE:
        read.fail(f"token_embd.weight has shape {shape}, not (n_vocab, {n_embd}) for the embedding length {n_embd}")
    n_vocab = shape[0]
    output = tensor_shapes.get("output.weight")
    if output is not None and tuple(output) != shape:
        read.fail(f"output.weight has shape {tuple(output)}, not {shape} as token_embd.weight")
    vocab_size = read.size("vocab_size", n_vocab)
    if vocab_size != n_vocab:
        read.fail(f"{read.key('vocab_size')} is {vocab_size} but token_embd.weight has {n_vocab} rows")
    tokens = MetadataReader(read.meta, read.path).array("tokenizer.ggml.tokens", "text", None)
    if tokens is None:
        return n_vocab
    if len(tokens) != n_vocab:
        read.fail(f"the tokenizer lists {len(tokens)} tokens (tokenizer.ggml.tokens) but token_embd.weight has {n_vocab} rows")
    return n_vocab
