"""Qwen3: the LLaMA block with a per-head RMSNorm on q and k before RoPE (attn_q_norm, attn_k_norm),
no q/k/v biases, a head size given by {arch}.attention.key_length, and NeoX RoPE."""

from __future__ import annotations

from camelid.model.llama import LlamaModel


class Qwen3Model(LlamaModel):
    """A loaded Qwen3 network (general.architecture "qwen3")."""

    extra_norms = {"attn_q_norm": ("attn_q_norm", "head"), "attn_k_norm": ("attn_k_norm", "head")}
