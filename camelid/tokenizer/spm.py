"""SentencePiece-style tokenization from a GGUF vocabulary (`tokenizer.ggml.model = "llama"`).

The algorithm of llama.cpp's llm_tokenizer_spm: the text (spaces already written as U+2581) starts as
one symbol per character; the adjacent pair whose concatenation is a token with the highest score is
merged (ties: leftmost first) until no pair is a token. A symbol that is not a token is emitted as
its UTF-8 bytes through the `<0xXX>` byte tokens, or the unknown token if the vocabulary has none.
"""

from __future__ import annotations

import heapq

from camelid.tokenizer.vocab import Vocab

SPACE = "\u2581"  # ▁, SentencePiece's visible space


class SpmModel:
    """Encodes one plain-text fragment with score-ordered bigram merges."""

    def __init__(self, vocab: Vocab):
        self._ids = vocab.token_to_id
        self._scores = vocab.scores
        self._unk = vocab.unk_id
        self._byte_ids: list[int | None] = [self._byte_token(b) for b in range(256)]

    def _byte_token(self, b: int) -> int | None:
        token_id = self._ids.get(f"<0x{b:02X}>")
        if token_id is None and b < 0x80:
            token_id = self._ids.get(chr(b))
        return token_id if token_id is not None else self._unk

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` (whitespace already escaped to U+2581) to `out`."""
        n = len(text)
        if n == 0:
            return
        ids, scores = self._ids, self._scores
        sym = list(text)                  # text of each symbol, "" once merged into its left neighbour
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []                         # (-score, left, right, length of the merged text)
        for i in range(n - 1):
            token_id = ids.get(sym[i] + sym[i + 1])
            if token_id is not None:
                heap.append((-scores[token_id], i, i + 1, 2))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            a, b = sym[left], sym[right]
            if not a or not b or len(a) + len(b) != size:
                continue                  # stale: one side merged since this pair was queued
            merged = a + b
            sym[left], sym[right] = merged, ""
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
                token_id = ids.get(merged + sym[after])
                if token_id is not None:
                    push(heap, (-scores[token_id], left, after, len(merged) + len(sym[after])))
            before = prv[left]
            if before >= 0:
                token_id = ids.get(sym[before] + merged)
                if token_id is not None:
                    push(heap, (-scores[token_id], before, left, len(sym[before]) + len(merged)))
        i = 0
        byte_ids = self._byte_ids
        while i != -1:
            s = sym[i]
            token_id = ids.get(s)
            if token_id is not None:
                out.append(token_id)
            else:
                for byte in s.encode("utf-8", "surrogatepass"):
                    if byte_ids[byte] is not None:
                        out.append(byte_ids[byte])
            i = nxt[i]
