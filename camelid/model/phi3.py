"""Phi-3 / Phi-4-mini: the LLaMA block with q, k, v in one matrix (attn_qkv) and gate, up in one
(ffn_up, gate rows first), NeoX RoPE, and q scaled by 1/sqrt(head_dim) before attention, as
llama.cpp's phi3 graph runs it (it does not apply Phi-3's sliding window, and neither does camelid).

LongRoPE (rope_factors_long/short with their attention factor) is not implemented: a file that
carries those tensors is refused at load.
"""

from __future__ import annotations

import numpy as np

from camelid.errors import CamelidError
from camelid.formats.gguf import GGUFFile
from camelid.model.llama import LlamaModel
from camelid.quant import QTensor


class FusedRows:
    """One weight matrix whose row blocks are separate products, multiplied once; the interface of
    StackedMatrices (prepare, matmul -> parts, matmul_joined -> all)."""

    def __init__(self, w: QTensor, sizes: list[int]):
        self.w = w
        self.bounds = np.cumsum([0, *sizes])  # row offsets of the parts

    def prepare(self) -> None:
        self.w.prepare()

    def matmul(self, x: np.ndarray) -> list[np.ndarray]:
        """(n_tokens, n_in) -> [(n_tokens, size_i) float32], each C-contiguous."""
        y = self.w.matmul(x)  # (n_tokens, sum of sizes)
        return [np.ascontiguousarray(y[:, a:b]) for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def matmul_joined(self, x: np.ndarray) -> np.ndarray:
        """(n_tokens, n_in) -> (n_tokens, sum of sizes) float32."""
        return self.w.matmul(x)


class Phi3Model(LlamaModel):
    """A loaded Phi-3 network (general.architecture "phi3")."""

    def __init__(self, gguf: GGUFFile, show_progress: bool = True):
        if "rope_factors_long.weight" in gguf.tensors or "rope_factors_short.weight" in gguf.tensors:
            raise CamelidError(f"{gguf.path}: this Phi-3 model uses LongRoPE (rope_factors_long/short), which camelid "
                               "does not support yet; Phi-3 models with a 4k context run.")
        super().__init__(gguf, show_progress)

    def _projections(self, p: str, matrix) -> dict:
        c = self.config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        qkv = matrix(p + "attn_qkv.weight", (q_dim + 2 * kv_dim, c.n_embd))  # rows: q, k, v
        gate_up = matrix(p + "ffn_up.weight", (2 * c.n_ff, c.n_embd))  # rows: gate, up
        return dict(attn_q=None, attn_k=None, attn_v=None, ffn_gate=None, ffn_up=None,
                    attn_qkv=FusedRows(qkv, [q_dim, kv_dim, kv_dim]), ffn_gate_up=FusedRows(gate_up, [c.n_ff, c.n_ff]))
