"""The LLaMA-family transformer (llama, qwen2): weights named as in GGUF, and the forward pass.

Other architectures (model/qwen3.py, model/gemma3.py) subclass LlamaModel: they name the extra
per-layer norms they load (`extra_norms`), and the forward pass applies whatever a Block carries
(q/k norms, post-attention and post-FFN norms) and the Config asks for (embedding scale, GeGLU,
sliding-window layers with their own RoPE, final logit soft-capping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from camelid.errors import CamelidError
from camelid.formats.gguf import GGUFFile
from camelid.model.cache import KVCache
from camelid.model.kv_pool import KVPool
from camelid.model.config import Config
from camelid.model.ops import Rope, attention, gelu_mul, rms_norm, silu_mul
from camelid.quant import QTensor, check_supported, load_vector
from camelid.quant.qtensor import StackedMatrices
from camelid.quant.kernels import kernels_compiled

# Tokens per forward pass, as llama.cpp's default n_ubatch (and llama-cpp-python's n_batch).
UBATCH = 512


@dataclass
class Block:
    """One transformer layer. Matrices are (n_out, n_in); vectors float32."""

    attn_norm: np.ndarray  # (n_embd,)
    attn_q: QTensor | None  # (n_head * head_dim, n_embd); None where attn_qkv is given fused (phi3)
    attn_k: QTensor | None  # (n_head_kv * head_dim, n_embd)
    attn_v: QTensor | None  # (n_head_kv * head_dim, n_embd)
    attn_q_bias: np.ndarray | None  # (n_head * head_dim,): qwen2 only
    attn_k_bias: np.ndarray | None  # (n_head_kv * head_dim,)
    attn_v_bias: np.ndarray | None  # (n_head_kv * head_dim,)
    attn_output: QTensor  # (n_embd, n_head * head_dim)
    ffn_norm: np.ndarray  # (n_embd,)
    ffn_gate: QTensor | None  # (n_ff, n_embd); None where ffn_gate_up is given fused (phi3)
    ffn_up: QTensor | None  # (n_ff, n_embd)
    ffn_down: QTensor  # (n_embd, n_ff)
    attn_q_norm: np.ndarray | None = None  # (head_dim,): RMSNorm of each query head before RoPE (qwen3, gemma3)
    attn_k_norm: np.ndarray | None = None  # (head_dim,): the same for each key head
    attn_post_norm: np.ndarray | None = None  # (n_embd,): RMSNorm of the attention output (gemma3)
    ffn_post_norm: np.ndarray | None = None  # (n_embd,): RMSNorm of the FFN output (gemma3)
    attn_qkv: StackedMatrices | None = None  # q, k, v in one product; built from attn_q/k/v when not given
    ffn_gate_up: StackedMatrices | None = None  # gate then up in one product; built from ffn_gate/up when not given

    def __post_init__(self):
        if self.attn_qkv is None:
            self.attn_qkv = StackedMatrices([self.attn_q, self.attn_k, self.attn_v])
        if self.ffn_gate_up is None:
            self.ffn_gate_up = StackedMatrices([self.ffn_gate, self.ffn_up])


class LlamaModel:
    """A loaded network: config, weights in their file types, and forward()."""

    # Block field -> (GGUF tensor suffix, "head" for (head_dim,) or "embd" for (n_embd,)): the
    # norms an architecture's layers carry besides attn_norm and ffn_norm; all required.
    extra_norms: dict[str, tuple[str, str]] = {}

    def __init__(self, gguf: GGUFFile, show_progress: bool = True):
        tensors = gguf.tensors
        for info in tensors.values():  # a type camelid cannot run is the first thing the user should hear
            check_supported(info.ggml_type, info.name)
        self.config = config = Config.from_metadata(gguf.metadata, {name: t.shape for name, t in tensors.items()}, gguf.path)
        self._path = gguf.path

        def matrix(name: str, shape: tuple[int, int]) -> QTensor:
            info = self._tensor(tensors, name, shape)
            return QTensor.from_info(info)

        def vector(name: str, size: int, optional: bool = False) -> np.ndarray | None:
            if optional and name not in tensors:
                return None
            return load_vector(self._tensor(tensors, name, (size,)))

        c = config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        n_vocab = self.n_vocab = c.n_vocab
        self.token_embd = matrix("token_embd.weight", (n_vocab, c.n_embd))
        self.output_norm = vector("output_norm.weight", c.n_embd)
        self.output = self.token_embd if c.tied_output else matrix("output.weight", (n_vocab, c.n_embd))
        self.blocks: list[Block] = []
        for i in range(c.n_layer):
            p = f"blk.{i}."
            self.blocks.append(Block(
                attn_norm=vector(p + "attn_norm.weight", c.n_embd),
                **self._projections(p, matrix),
                attn_q_bias=vector(p + "attn_q.bias", q_dim, optional=True),
                attn_k_bias=vector(p + "attn_k.bias", kv_dim, optional=True),
                attn_v_bias=vector(p + "attn_v.bias", kv_dim, optional=True),
                attn_output=matrix(p + "attn_output.weight", (c.n_embd, q_dim)),
                ffn_norm=vector(p + "ffn_norm.weight", c.n_embd),
                ffn_down=matrix(p + "ffn_down.weight", (c.n_embd, c.n_ff)),
                **{field: vector(p + suffix + ".weight", c.head_dim if size == "head" else c.n_embd)
                   for field, (suffix, size) in self.extra_norms.items()},
            ))
            b = self.blocks[-1]
            if len({b.attn_q_bias is None, b.attn_k_bias is None, b.attn_v_bias is None}) > 1:
                raise CamelidError(f"{gguf.path}: layer {i} has some of the attn_q/attn_k/attn_v biases but not all; the file is inconsistent.")
        self._load_ropes(vector)
        self._prepare_weights(show_progress)

    def _load_ropes(self, vector) -> None:
        """Each layer's RoPE (self.ropes), with the Llama 3.1 factors of rope_freqs.weight where given."""
        c = self.config
        freq_factors = vector("rope_freqs.weight", c.rope_dim // 2, optional=True)
        rope = Rope(c.head_dim, c.rope_dim, c.rope_base, c.rope_scale, c.rope_neox, freq_factors, c.rope_attn_factor)
        # windowed layers rotate with their own base and no scaling (llama.cpp's *_train_swa)
        rope_swa = Rope(c.head_dim, c.rope_dim, c.rope_base_swa, 1.0, c.rope_neox, None, c.rope_attn_factor) if any(c.swa_layers) else None
        self.ropes = [rope_swa if c.swa_layers and c.swa_layers[i] else rope for i in range(c.n_layer)]

    def ropes_for(self, n_ctx: int) -> list[Rope]:
        """Each layer's RoPE in a context (KV cache) of n_ctx positions: self.ropes, whatever n_ctx,
        except for Phi-3's LongRoPE (model/phi3.py), whose factors depend on the context size."""
        return self.ropes

    def _projections(self, p: str, matrix) -> dict:
        """Block fields of the q/k/v and gate/up matrices of the layer whose tensors start with p."""
        c = self.config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        return dict(attn_q=matrix(p + "attn_q.weight", (q_dim, c.n_embd)), attn_k=matrix(p + "attn_k.weight", (kv_dim, c.n_embd)),
                    attn_v=matrix(p + "attn_v.weight", (kv_dim, c.n_embd)),
                    ffn_gate=matrix(p + "ffn_gate.weight", (c.n_ff, c.n_embd)), ffn_up=matrix(p + "ffn_up.weight", (c.n_ff, c.n_embd)))

    def _tensor(self, tensors, name: str, shape: tuple[int, ...]):
        info = tensors.get(name)
        if info is None:
            raise CamelidError(f"{self._path}: tensor {name} is missing; the file is incomplete or not a LLaMA-family model.")
        if tuple(info.shape) != tuple(shape):
            raise CamelidError(f"{self._path}: tensor {name} has shape {info.shape}, expected {shape} from the metadata; the file is inconsistent.")
        return info

    def _products(self) -> list[QTensor | StackedMatrices]:
        """What forward() multiplies by: each layer's stacked q/k/v and gate/up, and the rest."""
        mats = [self.token_embd] if self.output is self.token_embd else [self.token_embd, self.output]
        for b in self.blocks:
            mats += [b.attn_qkv, b.attn_output, b.ffn_gate_up, b.ffn_down]
        return mats

    def _prepare_weights(self, show_progress: bool) -> None:
        """Lay out each weight matrix once for its kernel, then run a 2-token and a 1-token step, so
        that the kernels are compiled (first run) or loaded from Numba's cache now, under the
        progress bar, rather than in the middle of the first reply."""
        mats = self._products()
        desc = "preparing weights" if kernels_compiled() else "compiling kernels (first run only)"
        with tqdm(total=len(mats) + 2, desc=desc, unit="step", disable=None if show_progress else True, leave=False) as bar:
            for m in mats:
                m.prepare()
                bar.update()
            cache = self.new_cache(3)
            for tokens in ([0, 0], [0]):
                self.forward(tokens, cache, last_only=True)
                bar.update()

    def batch_rules(self) -> set[str]:
        """The union of the products' QTensor.batch_rules: how batch sizes change rows' arithmetic."""
        return set().union(*(m.batch_rules() for m in self._products()))

    def new_cache(self, n_ctx: int) -> KVCache:
        """An empty KV cache for n_ctx positions."""
        c = self.config
        return KVCache(c.n_layer, n_ctx, c.n_head_kv, c.head_dim)

    def new_pool(self, n_cells: int) -> KVPool:
        """A KV pool of n_cells positions, shared by the sequences it hands out (camelid.model.kv_pool)."""
        c = self.config
        return KVPool(c.n_layer, n_cells, c.n_head_kv, c.head_dim)

    def forward(self, tokens, cache: KVCache, last_only: bool = False) -> np.ndarray:
        """Run tokens (n,) at positions cache.n_past.. and append them to the cache.

        Returns logits (n, n_vocab) float32, or (1, n_vocab) for the last token when last_only.
        """
        tokens = self._check_tokens(tokens)
        n = len(tokens)
        if cache.n_past + n > cache.n_ctx:
            raise CamelidError(f"{cache.n_past + n} tokens do not fit in the context of {cache.n_ctx}; use a larger context (-c) or a shorter prompt.")
        if n > UBATCH:
            # llama.cpp evaluates a long prompt in batches of n_ubatch tokens, and its kernels round
            # differently for different batch sizes (tinyBLAS or vec_dot, tiled or not, gemm or gemv)
            parts = [self.forward(tokens[i:i + UBATCH], cache, last_only=last_only)
                     for i in range(0, n, UBATCH)]
            return parts[-1] if last_only else np.concatenate(parts)
        return self._run(tokens, [cache], last_only=last_only, single_rows=False)

    def hidden_states(self, tokens, cache: KVCache) -> np.ndarray:
        """The last layer's output of every token, after the output norm, (n, n_embd) float32: what
        llama.cpp pools into embeddings. Runs tokens at positions cache.n_past.. and appends them to
        the cache, in batches of UBATCH as `forward`."""
        tokens = self._check_tokens(tokens)
        if cache.n_past + len(tokens) > cache.n_ctx:
            raise CamelidError(f"{cache.n_past + len(tokens)} tokens do not fit in the context of {cache.n_ctx}; use a larger context (-c) or a shorter text.")
        parts = [self._run(tokens[i:i + UBATCH], [cache], last_only=False, single_rows=False, head=False)
                 for i in range(0, len(tokens), UBATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, self.config.n_embd), np.float32)

    def decode(self, tokens, caches: list[KVCache]) -> np.ndarray:
        """One step of several sequences in one pass: tokens[i] (one per sequence) at position
        caches[i].n_past, appended to caches[i]. Returns logits (n_seq, n_vocab) float32.

        Row i equals forward([tokens[i]], caches[i]) bit for bit, whatever the other rows: every
        product computes each row as llama.cpp computes a one-token batch (QTensor.matmul's
        single_rows), and each sequence attends to its own cache. The weights are read once for all
        rows, which is what makes a step of eight sequences cost little more than a step of one.
        """
        tokens = self._check_tokens(tokens)
        if len(tokens) != len(caches) or len({id(c) for c in caches}) != len(caches):
            raise ValueError(f"decode: {len(tokens)} tokens for {len(caches)} caches; give one token per distinct cache")
        if len({c.n_ctx for c in caches}) > 1:
            raise ValueError("decode: the caches differ in size (their RoPE may differ); give caches of one size")
        for cache in caches:
            if cache.n_free < 1:
                raise CamelidError(f"{cache.n_past + 1} tokens do not fit in the context of {cache.n_ctx}; use a larger context (-c).")
        return self._run(tokens, caches, last_only=False, single_rows=True)

    def _check_tokens(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.n_vocab):
            raise CamelidError(f"token id out of range 0..{self.n_vocab - 1}.")
        return tokens

    def _run(self, tokens: np.ndarray, caches: list[KVCache], last_only: bool, single_rows: bool, head: bool = True) -> np.ndarray:
        """The forward pass of `tokens`: all of them for caches[0] (one cache), or one for each cache
        (several). Appends each cache's tokens to it; returns logits (n, n_vocab), or the last row's;
        without head, the output-normed hidden states (n, n_embd) instead of logits."""
        c = self.config
        n = len(tokens)
        # the rows of each cache: (cache, first row, position of the first row)
        spans = [(caches[0], 0, caches[0].n_past)] if len(caches) == 1 else [(cache, i, cache.n_past) for i, cache in enumerate(caches)]
        rows_per = n if len(caches) == 1 else 1
        for cache, _, _ in spans:
            cache.prepare(rows_per)
        positions = np.concatenate([np.arange(start, start + rows_per) for _, _, start in spans])  # (n,)
        x = self.token_embd.get_rows(tokens)  # (n, n_embd)
        if c.embd_scale != 1.0:
            x = x * np.float32(c.embd_scale)
        activation = gelu_mul if c.ffn_gelu else silu_mul
        ropes = self.ropes_for(caches[0].n_ctx)
        for layer, b in enumerate(self.blocks):
            h = rms_norm(x, b.attn_norm, c.rms_eps)
            q, k, v = b.attn_qkv.matmul(h, single_rows)  # (n, n_head * head_dim), (n, n_head_kv * head_dim) x 2
            if b.attn_q_bias is not None:
                q += b.attn_q_bias
                k += b.attn_k_bias
                v += b.attn_v_bias
            if b.attn_q_norm is not None:  # per head: rows of head_dim
                q = rms_norm(q.reshape(n * c.n_head, c.head_dim), b.attn_q_norm, c.rms_eps)
                k = rms_norm(k.reshape(n * c.n_head_kv, c.head_dim), b.attn_k_norm, c.rms_eps)
            rope = ropes[layer]
            q = rope.apply(q.reshape(n, c.n_head, c.head_dim), positions)
            k = rope.apply(k.reshape(n, c.n_head_kv, c.head_dim), positions)
            if c.q_scale:
                q *= np.float32(c.q_scale)
            v = v.reshape(n, c.n_head_kv, c.head_dim)
            window = c.sliding_window if c.swa_layers and c.swa_layers[layer] else 0
            att = np.empty((n, c.n_head * c.head_dim), np.float32)
            for cache, row, start in spans:
                rows = slice(row, row + rows_per)
                cache.store(layer, start, k[rows], v[rows])
                keys, values, cells = cache.view(layer, start + rows_per)
                att[rows] = attention(q[rows], keys, values, start, scale=1.0 if c.q_scale else None, window=window,
                                      rows=cells)  # (rows, n_head * head_dim)
            y = b.attn_output.matmul(att, single_rows)  # (n, n_embd)
            if b.attn_post_norm is not None:
                y = rms_norm(y, b.attn_post_norm, c.rms_eps)
            x = x + y
            if last_only and layer == c.n_layer - 1:
                x = x[-1:]  # as llama.cpp: the last feed-forward runs on the output rows only
            h = rms_norm(x, b.ffn_norm, c.rms_eps)
            y = b.ffn_down.matmul(activation(b.ffn_gate_up.matmul_joined(h, single_rows)), single_rows)
            if b.ffn_post_norm is not None:
                y = rms_norm(y, b.ffn_post_norm, c.rms_eps)
            x = x + y
        for cache, row, _ in spans:
            cache.commit(tokens[row:row + rows_per])
        x = rms_norm(x, self.output_norm, c.rms_eps)
        if not head:
            return x
        logits = self.output.matmul(x, single_rows)  # (n, n_vocab)
        if c.logit_softcap:
            cap = np.float32(c.logit_softcap)
            logits = np.tanh(logits * (np.float32(1.0) / cap)) * cap
        return logits
