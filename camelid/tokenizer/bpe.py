"""BPE tokenization from a GGUF vocabulary (`tokenizer.ggml.model = "gpt2"` or `"gemma4"`).

The algorithm of llama.cpp's llm_tokenizer_bpe: the pre-tokenizer splits text into words; each word,
written byte-level (one printable character per UTF-8 byte) or, for SPM-style vocabularies, as raw
text with spaces written as U+2581, starts as one symbol per character; the adjacent pair with the
lowest merge rank is merged (ties: leftmost first) until no pair has a rank. A final symbol that is
not a token is emitted byte by byte where those are tokens (the byte's own character if ASCII for
byte-level vocabularies, its `<0xXX>` token otherwise). Results are cached per word.
"""

from __future__ import annotations

import heapq

from camelid.tokenizer.pretokenize import PreTokenizer, Splitter, byte_level
from camelid.tokenizer.spm import SPACE
from camelid.tokenizer.vocab import Vocab

_CACHE_LIMIT = 200_000  # words; the cache is dropped and restarted when it grows past this


class BpeModel:
    """Encodes one plain-text fragment: pre-tokenize, then merge by rank within each word."""

    def __init__(self, vocab: Vocab, merges: list[str], pre: PreTokenizer):
        self._ids = vocab.token_to_id
        # "left right" -> rank; reversed so that a repeated merge keeps its first (lowest) rank.
        self._ranks: dict[str, int] = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        self._split = Splitter(pre)
        self._ignore_merges = pre.ignore_merges
        self._byte_encode = pre.byte_encode
        self._escape_whitespaces = pre.escape_whitespaces
        self._newline_tokens = pre.newline_tokens
        self._byte_ids = [self._ids.get(f"<0x{b:02X}>") for b in range(256)]
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` to `out`."""
        cache = self._cache
        if self._escape_whitespaces:
            text = text.replace(" ", SPACE)
        for word in self._split(text):
            ids = cache.get(word)
            if ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                ids = cache[word] = self._encode_word(byte_level(word) if self._byte_encode else word)
            out.extend(ids)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        ids = self._ids
        if (self._ignore_merges or self._newline_tokens and not word.strip("\n")) and word in ids:
            return (ids[word],)
        symbols = self._merge(word) if len(word) > 1 else [word]
        out: list[int] = []
        for s in symbols:
            token_id = ids.get(s)
            if token_id is not None:
                out.append(token_id)
            elif self._byte_encode:  # llama.cpp looks each UTF-8 byte up as a one-byte token: only ASCII can match
                out.extend(ids[c] for c in s if c < "\x80" and c in ids)
            else:
                byte_ids = self._byte_ids
                out.extend(byte_ids[b] for b in s.encode("utf-8", "surrogatepass") if byte_ids[b] is not None)
        return tuple(out)

    def _merge(self, word: str) -> list[str]:
        ranks = self._ranks
        sym = list(word)                  # text of each symbol, "" once merged into its left neighbour
        n = len(sym)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []                         # (rank, left, right, merged text)
        for i in range(n - 1):
            rank = ranks.get(sym[i] + " " + sym[i + 1])
            if rank is not None:
                heap.append((rank, i, i + 1, sym[i] + sym[i + 1]))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, text = pop(heap)
            a, b = sym[left], sym[right]
            if not a or not b or a + b != text:
                continue                  # stale: one side merged since this pair was queued
            sym[left], sym[right] = text, ""
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
                rank = ranks.get(text + " " + sym[after])
                if rank is not None:
                    push(heap, (rank, left, after, text + sym[after]))
            before = prv[left]
            if before >= 0:
                rank = ranks.get(sym[before] + " " + text)
                if rank is not None:
                    push(heap, (rank, before, left, sym[before] + text))
        return [s for s in sym if s]
