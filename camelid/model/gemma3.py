"""Gemma 3: embeddings scaled by sqrt(n_embd), per-head q/k RMSNorm, RMSNorm after attention and
after the FFN (post_attention_norm, post_ffw_norm), a GeGLU FFN with tanh GELU, q scaled by
1/sqrt(head_dim) before attention, and interleaved sliding-window layers with their own RoPE base.

The Config carries the scales, the window and the layer pattern (see Config's gemma3 fields); the
GGUF norm weights already hold Gemma's 1 + w (llama.cpp's converter adds the 1).
"""

from __future__ import annotations

from camelid.model.llama import LlamaModel


class Gemma3Model(LlamaModel):
    """A loaded Gemma 3 network (general.architecture "gemma3")."""

    extra_norms = {
        "attn_q_norm": ("attn_q_norm", "head"),
        "attn_k_norm": ("attn_k_norm", "head"),
        "attn_post_norm": ("post_attention_norm", "embd"),
        "ffn_post_norm": ("post_ffw_norm", "embd"),
    }
