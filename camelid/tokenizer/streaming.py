"""Incremental detokenization: text safe to print after each generated token.

A token can end in the middle of a UTF-8 character (byte-fallback tokens, byte-level BPE pieces of
Chinese or emoji), so the bytes of an incomplete trailing character are held back until the token
that completes them arrives. Everything returned, concatenated, equals `Tokenizer.decode(ids)`.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from camelid.tokenizer import Tokenizer


class StreamingDetokenizer:
    """Turns a stream of token ids into text pieces, never splitting a UTF-8 character.

    skip_special has the meaning it has in Tokenizer.decode. The leading-space rule of decode (SPM
    vocabularies drop one space from the first token) applies to the first token after creation,
    reset() or finalize(), unless `continuation` is set: then the tokens continue a text that came
    before (a prompt), and their first space is kept, as llama.cpp prints generated tokens.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True, continuation: bool = False):
        self._tokenizer = tokenizer
        self.skip_special = skip_special
        self.continuation = continuation
        self.reset()

    def reset(self) -> None:
        """Forget all state and start a new text."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = not self.continuation

    def add_token(self, token_id: int) -> str:
        """Add one token; return the text that is now complete (possibly "")."""
        piece = self._tokenizer.token_to_bytes(token_id, special=not self.skip_special)
        if self._first:
            self._first = False
            if self._tokenizer.add_space_prefix and piece.startswith(b" "):
                piece = piece[1:]
        return self._decoder.decode(piece)

    def finalize(self, drop_incomplete: bool = False) -> str:
        """Flush held-back bytes and reset for a new text.

        An incomplete trailing character becomes U+FFFD, or is dropped with drop_incomplete (for a
        generation cut off by its token limit in the middle of a character).
        """
        rest = "" if drop_incomplete else self._decoder.decode(b"", final=True)
        self.reset()
        return rest
