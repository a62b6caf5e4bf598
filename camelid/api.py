"""The Python API: `camelid.load()` returns a Model that completes text and chats."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from camelid.chat.template import ChatTemplate, template_for
from camelid.default_model import default_model_path
from camelid.errors import CamelidError
from camelid.formats.model_file import open_model_file
from camelid.hub import resolve_model
from camelid.threads import set_threads
from camelid.generate import GenerationChunk, stream_generate
from camelid.model.cache import KVCache
from camelid.model.architectures import load_network
from camelid.sampling import SamplingParams
from camelid.tokenizer import Tokenizer

DEFAULT_CONTEXT = 4096


class Model:
    """A model ready to generate: the network, its tokenizer and its chat template.

    The model keeps one KV cache of n_ctx positions for `stream`/`complete`, and reuses the longest
    common prefix of consecutive prompts, so a growing prompt only processes its new tokens.
    """

    def __init__(self, path: str, n_ctx: int | None = None, chat_template: str | None = None, show_progress: bool = True):
        gguf = open_model_file(path, show_progress=show_progress)
        self.path = gguf.path
        self.metadata = gguf.metadata
        # tokenizer and template first: a file they refuse is refused before any kernel is compiled
        self.tokenizer = Tokenizer.from_metadata(gguf.metadata, gguf.path)
        self.template: ChatTemplate = template_for(gguf.metadata, self.tokenizer.tokens, chat_template, origin=Path(path).name)
        if n_ctx is not None and n_ctx < 8:
            raise CamelidError(f"a context of {n_ctx} tokens is too small; use at least a few hundred (-c 2048).")
        self.network = load_network(gguf, show_progress=show_progress)
        self.config = self.network.config
        if self.tokenizer.n_vocab > self.network.n_vocab:
            raise CamelidError(
                f"{path}: the tokenizer has {self.tokenizer.n_vocab} tokens but token_embd only {self.network.n_vocab} rows; the file is inconsistent."
            )
        self.n_ctx = n_ctx or min(DEFAULT_CONTEXT, self.config.n_ctx_train)
        self._cache: KVCache | None = None

    @property
    def cache(self) -> KVCache:
        """The model's own KV cache (allocated on first use)."""
        if self._cache is None:
            self._cache = self.new_cache()
        return self._cache

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        """A fresh KV cache of n_ctx positions (default: the model's context size)."""
        return self.network.new_cache(n_ctx or self.n_ctx)

    def forward(self, tokens, cache: KVCache, last_only: bool = False) -> np.ndarray:
        """Logits (n, n_vocab) for tokens at positions cache.n_past..; see LlamaModel.forward."""
        return self.network.forward(tokens, cache, last_only)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def tokenize_chat(self, text: str) -> list[int]:
        """Token ids of a prompt the chat template rendered: special tokens parsed, and BOS added
        unless the template wrote it already."""
        tok = self.tokenizer
        bos_text = tok.tokens[tok.bos_id] if tok.bos_id is not None and 0 <= tok.bos_id < tok.n_vocab else None
        return tok.encode(text, add_special=not (bos_text and text.startswith(bos_text)), parse_special=True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def stream_tokens(
        self,
        prompt_tokens: Sequence[int],
        *,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        cache: KVCache | None = None,
        ignore_eos: bool = False,
        **sampling,
    ) -> Iterator[GenerationChunk]:
        """Stream a continuation of token ids; sampling keywords are SamplingParams fields."""
        return stream_generate(
            self.network, self.tokenizer, prompt_tokens, cache or self.cache,
            max_tokens=max_tokens, sampling=SamplingParams(**sampling), stop=stop, ignore_eos=ignore_eos,
        )

    def stream(self, prompt: str, *, max_tokens: int = 256, stop: Sequence[str] = (), **sampling) -> Iterator[GenerationChunk]:
        """Stream a completion of `prompt` as GenerationChunk objects (print chunk.text as it comes).

        Sampling keywords: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
        presence_penalty, frequency_penalty, seed (see camelid.sampling.SamplingParams).
        """
        tokens = self.tokenize(prompt, add_special=True, parse_special=True)
        return self.stream_tokens(tokens, max_tokens=max_tokens, stop=stop, **sampling)

    def complete(self, prompt: str, **kwargs) -> str:
        """The whole completion of `prompt` as one string; keywords as for stream()."""
        return "".join(chunk.text for chunk in self.stream(prompt, **kwargs))

    def embed(self, texts: str | Sequence[str], *, pooling: str | None = None, normalize: bool = True) -> np.ndarray:
        """Embeddings of one text (n_embd,) or of several (n_texts, n_embd), float32.

        pooling: "mean", "cls", "last" or "none" (every token's vector: a list of (n_tokens, n_embd)
        arrays); default: what the file says, else mean, as llama-server --embeddings. normalize
        divides each vector by its Euclidean norm. Each text runs alone, with BOS (and EOS where the
        tokenizer adds one), and must fit in the context.
        """
        from camelid.embeddings import check_pooling, embed_tokens, file_pooling

        pooling = check_pooling(file_pooling(self.metadata) if pooling is None else pooling)
        one = isinstance(texts, str)
        token_lists = [self.tokenize(t, add_special=True, parse_special=True) for t in ([texts] if one else texts)]
        for i, tokens in enumerate(token_lists):
            if len(tokens) > self.n_ctx:
                raise CamelidError(f"text {i} is {len(tokens)} tokens, more than the context of {self.n_ctx}; shorten it or load with a larger n_ctx.")
        vectors = [embed_tokens(self.network, tokens, pooling, normalize) for tokens in token_lists]
        if one:
            return vectors[0]
        return vectors if pooling == "none" else np.stack(vectors) if vectors else np.zeros((0, self.config.n_embd), np.float32)

    def chat(self, system: str | None = None, **kwargs):
        """A ChatSession on this model: call .send(text) to stream a reply, .reply(text) for a string."""
        from camelid.chat.session import ChatSession

        return ChatSession(self, system=system, **kwargs)


def load(
    path: str | os.PathLike | None = None,
    *,
    n_ctx: int | None = None,
    chat_template: str | None = None,
    n_threads: int | None = None,
    show_progress: bool = True,
) -> Model:
    """Load a GGUF model (memory-mapped); with no path, the default SmolLM2-135M-Instruct model.

    path may also name a model to pull (qwen2.5:0.5b, hf.co/USER/REPO:Q4_K_M, modelscope.cn/USER/REPO):
    the local copy loads, downloaded first if it is missing (see camelid.hub).

    n_ctx is the context size in tokens (default: min(4096, the model's training context));
    chat_template overrides the file's template: "chatml", "llama2", "alpaca" or a Jinja source;
    n_threads is the number of threads for the kernels (default: the physical cores).
    """
    set_threads(n_threads)
    path = default_model_path() if path is None else resolve_model(path)
    return Model(path, n_ctx=n_ctx, chat_template=chat_template, show_progress=show_progress)
