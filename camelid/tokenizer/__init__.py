"""Tokenizers built from GGUF metadata alone, agreeing with llama.cpp token for token.

Two vocabulary types are supported: SentencePiece-style (`tokenizer.ggml.model = "llama"`: LLaMA 1/2,
Mistral, Gemma) and BPE (`"gpt2"`: Llama 3, Qwen2, SmolLM, GPT-2, ...; `"gemma4"`: Gemma 4). Use
`load_tokenizer(path)` for a .gguf file or `Tokenizer.from_metadata(meta)` for metadata already read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

from camelid.errors import CamelidError
from camelid.formats.metadata import MetadataReader
from camelid.tokenizer.bpe import BpeModel
from camelid.tokenizer.pretokenize import CHAR_TO_BYTE, PRE_TOKENIZERS
from camelid.tokenizer.spm import SPACE, SpmModel
from camelid.tokenizer.streaming import StreamingDetokenizer
from camelid.tokenizer.vocab import (ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED,
                                     Vocab)

__all__ = ["Tokenizer", "load_tokenizer", "StreamingDetokenizer"]

SUPPORTED_MODELS = ("llama", "gpt2", "gemma4")


class Tokenizer:
    """Text <-> token ids for one model's vocabulary.

    Attributes: model ("llama" or "gpt2"), pre (the BPE pre-tokenizer name, None for SPM), n_vocab,
    tokens (token texts by id), bos_id / eos_id / eot_id (None if the vocabulary has none),
    eog_ids (every id that ends generation: eos, eot, eom and tokens like <|im_end|>, <end_of_turn>),
    add_bos / add_eos (added by encode(add_special=True)), add_space_prefix (SPM: a space is put
    before the text, and decode drops it from the first token again).
    """

    def __init__(self, vocab: Vocab, model: str, encoder: SpmModel | BpeModel, *, pre: str | None,
                 add_space_prefix: bool):
        self._vocab = vocab
        self._encoder = encoder
        self._piece_cache: dict[tuple[int, bool], bytes] = {}
        self.model = model
        self.pre = pre
        self.n_vocab: int = vocab.n_vocab
        self.tokens: list[str] = vocab.tokens
        self.bos_id: int | None = vocab.bos_id
        self.eos_id: int | None = vocab.eos_id
        self.eot_id: int | None = vocab.eot_id
        self.eog_ids: frozenset[int] = vocab.eog_ids
        self.add_bos: bool = vocab.add_bos
        self.add_eos: bool = vocab.add_eos
        self.add_space_prefix: bool = add_space_prefix
        # Token texts write spaces as U+2581 (SPM, and SPM-style BPE such as Gemma 4's); other BPE token
        # texts are byte-level, unless the pre-tokenizer merges raw text.
        self._space_marker = model == "llama" or PRE_TOKENIZERS[pre].escape_whitespaces
        self._raw_text = model != "llama" and not PRE_TOKENIZERS[pre].byte_encode

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], path: str = "model") -> Tokenizer:
        """Build the tokenizer from a GGUF metadata dict (as `camelid.formats.gguf.read_metadata` returns).

        Raises CamelidError if the vocabulary type is not supported, the vocabulary is missing, or a
        tokenizer key holds a value of the wrong type (path names the file in the message).
        An unknown BPE pre-tokenizer falls back to llama.cpp's "default" one with a warning.
        """
        read = MetadataReader(meta, path)
        model = read.string("tokenizer.ggml.model", None)
        if model is None:
            raise CamelidError("the GGUF metadata has no tokenizer.ggml.model key, so this file has no tokenizer. "
                               "Use a model file converted with its tokenizer.")
        if model not in SUPPORTED_MODELS:
            raise CamelidError(f"unsupported tokenizer model {model[:40]!r} (tokenizer.ggml.model); camelid supports "
                               f"{', '.join(repr(m) for m in SUPPORTED_MODELS)} (SentencePiece and BPE). "
                               "Use a model with one of those vocabularies.")
        if model == "llama":
            vocab = Vocab(meta, model, add_bos_default=True, path=path)
            add_space_prefix = read.boolean("tokenizer.ggml.add_space_prefix", True)
            return cls(vocab, model, SpmModel(vocab), pre=None, add_space_prefix=add_space_prefix)

        # llama.cpp gives a "gemma4" vocabulary the pre-tokenizer of that name, whatever the key says.
        pre_name = "gemma4" if model == "gemma4" else read.string("tokenizer.ggml.pre", None)
        pre = PRE_TOKENIZERS.get(pre_name) if pre_name is not None else None
        if pre is None:
            supported = ", ".join(sorted(PRE_TOKENIZERS))
            what = "no pre-tokenizer (tokenizer.ggml.pre)" if pre_name is None else \
                f"the unknown pre-tokenizer {pre_name[:40]!r} (tokenizer.ggml.pre)"
            warnings.warn(f"this model names {what}; using 'default', so tokenization may differ from the model's "
                          f"own and generation quality may suffer. Supported pre-tokenizers: {supported}.",
                          stacklevel=2)
            pre_name, pre = "default", PRE_TOKENIZERS["default"]
        merges = read.array("tokenizer.ggml.merges", "text", None)
        if not merges:
            raise CamelidError(f"{path}: this BPE vocabulary has no tokenizer.ggml.merges list; the file is incomplete. "
                               "Convert the model again with its tokenizer.")
        vocab = Vocab(meta, model, add_bos_default=pre.add_bos, has_bos=pre.has_bos, path=path)
        if pre.always_add_bos and vocab.bos_id is not None:
            vocab.add_bos = True
        return cls(vocab, model, BpeModel(vocab, merges, pre), pre=pre_name, add_space_prefix=False)

    # -- lookups ----------------------------------------------------------------------------------

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text`, or None."""
        return self._vocab.token_to_id.get(text)

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.n_vocab:
            raise CamelidError(f"token id {token_id} is outside this vocabulary (0..{self.n_vocab - 1}); "
                               "pass ids produced by this model's tokenizer.")
        return token_id

    def is_control(self, token_id: int) -> bool:
        """Whether the token is a control token (BOS, EOS, <|im_start|>, ...), rendered as nothing by decode."""
        return bool(self._vocab.attrs[self._check_id(token_id)] & ATTR_CONTROL)

    def is_user_defined(self, token_id: int) -> bool:
        """Whether the token is user-defined (an added token such as <think>, always matched whole by encode)."""
        return bool(self._vocab.attrs[self._check_id(token_id)] & ATTR_USER_DEFINED)

    def is_eog(self, token_id: int) -> bool:
        """Whether the token ends generation."""
        return token_id in self.eog_ids

    # -- text -> ids ------------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as llama.cpp's llama_tokenize(text, add_special, parse_special).

        add_special adds BOS/EOS where the model asks for them (add_bos / add_eos). parse_special
        turns text spelling a control token (e.g. "<|im_start|>") into that token; without it such text
        is tokenized as plain characters. User-defined tokens are always matched.
        """
        vocab = self._vocab
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(vocab.bos_id)
        prefix = self.add_space_prefix
        prev_special = True
        for fragment in vocab.split_special(text, parse_special):
            if isinstance(fragment, int):
                out.append(fragment)
                prev_special = True
                continue
            if self.model == "llama":
                if prefix and prev_special:
                    fragment = " " + fragment
                fragment = fragment.replace(" ", SPACE)
            self._encoder.encode(fragment, out)
            prev_special = False
        if add_special and self.add_eos:
            out.append(vocab.eos_id)
        return out

    # -- ids -> text ------------------------------------------------------------------------------

    def token_to_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The raw bytes one token contributes to decoded text (llama.cpp's token_to_piece).

        Byte-fallback tokens give their byte, SPM's U+2581 becomes a space, byte-level BPE characters map
        back to bytes. Control and unknown tokens give b"" unless `special`, then their text.
        """
        key = (token_id, special)
        piece = self._piece_cache.get(key)
        if piece is None:
            piece = self._piece_cache[key] = self._piece(self._check_id(token_id), special)
        return piece

    def _piece(self, token_id: int, special: bool) -> bytes:
        attr = self._vocab.attrs[token_id]
        text = self.tokens[token_id]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return text.encode("utf-8", "surrogatepass") if special else b""
        if attr & ATTR_USER_DEFINED:
            return text.encode("utf-8", "surrogatepass")
        if attr & ATTR_NORMAL:
            if self._space_marker:
                return text.replace(SPACE, " ").encode("utf-8", "surrogatepass")
            if self._raw_text:
                return text.encode("utf-8", "surrogatepass")
            return b"".join(bytes((CHAR_TO_BYTE[c],)) if c in CHAR_TO_BYTE else c.encode("utf-8", "surrogatepass")
                            for c in text)
        if attr & ATTR_BYTE:
            try:
                return bytes((int(text[3:5], 16),))
            except ValueError:
                return text.encode("utf-8", "surrogatepass")
        return b""  # unused and undefined tokens render as nothing

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = True) -> bytes:
        """The bytes of decode(ids) before UTF-8 decoding (may end inside a character)."""
        out = []
        strip_space = self.add_space_prefix
        for token_id in ids:
            piece = self.token_to_bytes(token_id, special=not skip_special)
            if strip_space:
                strip_space = False
                if piece.startswith(b" "):
                    piece = piece[1:]
            out.append(piece)
        return b"".join(out)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of a token sequence, as llama.cpp's llama_detokenize(remove_special=false).

        With skip_special, control tokens (BOS, <|im_end|>, ...) render as nothing; otherwise as their
        text. When add_space_prefix is on (SPM), one leading space is dropped from the first token's
        piece, undoing the space encode added; a literal U+2581 in SPM text comes back as a space.
        Bytes that are not valid UTF-8 become U+FFFD.
        Unlike llama.cpp, no "clean_up_tokenization_spaces" pass runs for BPE vocabularies, so
        decode(encode(text)) == text for byte-level BPE.
        """
        return self.decode_bytes(ids, skip_special).decode("utf-8", "replace")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Build the tokenizer of a GGUF file from its metadata only (works on vocab-only files).

    Raises CamelidError if the file cannot be read or its tokenizer type is not supported.
    """
    from camelid.formats.gguf import read_metadata

    return Tokenizer.from_metadata(read_metadata(path), os.fspath(path))
