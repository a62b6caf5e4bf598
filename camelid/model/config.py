"""The model's hyper-parameters, read once from GGUF metadata into a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from camelid.errors import CamelidError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# Architectures whose GGUF q/k weights expect the NeoX RoPE layout (rotate x[i] with x[i + d/2]);
# the others use the "normal" layout (rotate x[2i] with x[2i+1]), as llama.cpp's llama_model_rope_type.
NEOX_ROPE_ARCHITECTURES = ("qwen2",)


@dataclass(frozen=True)
class Config:
    """Hyper-parameters of a LLaMA-family transformer, named after their GGUF keys."""

    arch: str  # general.architecture: "llama" or "qwen2"
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

    @property
    def n_group(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_head_kv

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], tensor_names: set[str], path: str = "model") -> "Config":
        """Build the config from GGUF metadata, raising CamelidError for what camelid cannot run."""
        arch = meta.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise CamelidError(
                f"{path}: architecture {arch!r} is not supported; camelid runs {', '.join(SUPPORTED_ARCHITECTURES)} "
                "(LLaMA 1/2/3, Mistral, SmolLM2, Chinese-LLaMA/Alpaca, Qwen 1.5/2/2.5)."
            )

        def key(name: str, default: Any = None) -> Any:
            value = meta.get(f"{arch}.{name}", default)
            if value is None:
                raise CamelidError(f"{path}: metadata key {arch}.{name} is missing; the file is incomplete. Convert it again.")
            return value

        n_embd = int(key("embedding_length"))
        n_head = int(key("attention.head_count"))
        n_head_kv = int(key("attention.head_count_kv", n_head))
        head_dim = int(key("attention.key_length", n_embd // n_head))
        if n_head_kv <= 0 or n_head % n_head_kv:
            raise CamelidError(f"{path}: {n_head} query heads cannot be grouped over {n_head_kv} key/value heads.")
        scaling_type = meta.get(f"{arch}.rope.scaling.type", "none")
        rope_scale = float(meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear", 1.0)) or 1.0)
        if scaling_type not in ("none", "linear") and rope_scale != 1.0:
            raise CamelidError(f"{path}: RoPE scaling {scaling_type!r} is not supported yet; camelid supports linear scaling.")
        if "token_embd.weight" not in tensor_names:
            raise CamelidError(f"{path}: tensor token_embd.weight is missing; the file is incomplete.")
        n_vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ())) or None
        return cls(
            arch=arch,
            n_vocab=int(n_vocab) if n_vocab else 0,
            n_embd=n_embd,
            n_layer=int(key("block_count")),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=int(key("feed_forward_length")),
            n_ctx_train=int(key("context_length", 2048)),
            rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(key("rope.freq_base", 10000.0)),
            rope_dim=int(key("rope.dimension_count", head_dim)),
            rope_scale=rope_scale,
            rope_neox=arch in NEOX_ROPE_ARCHITECTURES,
            tied_output="output.weight" not in tensor_names,
        )
