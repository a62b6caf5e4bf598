"""Phi-3 / Phi-4-mini: the LLaMA block with q, k, v in one matrix (attn_qkv) and gate, up in one
(ffn_up, gate rows first), NeoX RoPE, and q scaled by 1/sqrt(head_dim) before attention, as
llama.cpp's phi3 graph runs it (it does not apply Phi-3's sliding window, and neither does camelid).

LongRoPE (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini): rope_factors_short.weight and
rope_factors_long.weight, (rope_dim/2,) each, divide the RoPE angles per frequency, and
phi3.rope.scaling.attn_factor multiplies the cosines and sines. As llama.cpp's get_rope_factors,
the factors are chosen once per context: the long ones when the context (KV cache) holds more than
phi3.rope.scaling.original_context_length positions, else the short ones. llama.cpp rounds its
context up to a multiple of 256 first; for the original lengths of real models (4096) that makes
the same choice.
"""

from __future__ import annotations

import numpy as np

from camelid.model.llama import LlamaModel
from camelid.model.ops import Rope
from camelid.quant import QTensor


class FusedRows:
    """One weight matrix whose row blocks are separate products, multiplied once; the interface of
    StackedMatrices (prepare, matmul -> parts, matmul_joined -> all)."""

    def __init__(self, w: QTensor, sizes: list[int]):
        self.w = w
        self.bounds = np.cumsum([0, *sizes])  # row offsets of the parts

    def prepare(self) -> None:
        self.w.prepare()

    def batch_rules(self) -> set[str]:
        return self.w.batch_rules()

    def matmul(self, x: np.ndarray, single_rows: bool = False) -> list[np.ndarray]:
        """(n_tokens, n_in) -> [(n_tokens, size_i) float32], each C-contiguous."""
        y = self.w.matmul(x, single_rows)  # (n_tokens, sum of sizes)
        return [np.ascontiguousarray(y[:, a:b]) for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def matmul_joined(self, x: np.ndarray, single_rows: bool = False) -> np.ndarray:
        """(n_tokens, n_in) -> (n_tokens, sum of sizes) float32."""
        return self.w.matmul(x, single_rows)


class Phi3Model(LlamaModel):
    """A loaded Phi-3 network (general.architecture "phi3")."""

    def _load_ropes(self, vector) -> None:
        """self.ropes with the short factors, self.ropes_long with the long ones (either without
        factors where the file lacks that tensor, as in llama.cpp; a 4k-context Phi-3 has neither)."""
        c = self.config

        def ropes(name: str) -> list[Rope]:
            factors = vector(name, c.rope_dim // 2, optional=True)  # (rope_dim/2,)
            rope = Rope(c.head_dim, c.rope_dim, c.rope_base, c.rope_scale, c.rope_neox, factors, c.rope_attn_factor)
            return [rope] * c.n_layer

        self.ropes = ropes("rope_factors_short.weight")
        self.ropes_long = ropes("rope_factors_long.weight")

    def ropes_for(self, n_ctx: int) -> list[Rope]:
        """The long-factor RoPE in a context of more than config.n_ctx_orig positions, else the short one."""
        return self.ropes_long if n_ctx > self.config.n_ctx_orig else self.ropes

    def _projections(self, p: str, matrix) -> dict:
        c = self.config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        qkv = matrix(p + "attn_qkv.weight", (q_dim + 2 * kv_dim, c.n_embd))  # rows: q, k, v
        gate_up = matrix(p + "ffn_up.weight", (2 * c.n_ff, c.n_embd))  # rows: gate, up
        return dict(attn_q=None, attn_k=None, attn_v=None, ffn_gate=None, ffn_up=None,
                    attn_qkv=FusedRows(qkv, [q_dim, kv_dim, kv_dim]), ffn_gate_up=FusedRows(gate_up, [c.n_ff, c.n_ff]))
