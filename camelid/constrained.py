"""Constrained decoding: output that follows a JSON schema, any JSON object, or a GBNF grammar.

A grammar compiles once per request with llguidance (the grammar engine llama.cpp also links; a Rust
wheel, no compiler at install), against a view of the model's vocabulary built once per tokenizer.
`GrammarMask` is an engine token mask (camelid.engine.Request.token_mask): before each sample it
feeds the matcher the tokens generated since the last call and returns the tokens the grammar allows
next; once the grammar is complete only end-of-generation tokens are allowed, so the reply ends there.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from camelid.errors import CamelidError

# between JSON tokens: nothing, a space, or a new line and up to 20 spaces or tabs of indent, as
# llama.cpp's json-schema-to-grammar allows; bounded, so that a weak model cannot pad forever
JSON_WHITESPACE = r"(?: |\n[ \t]{0,20})?"


def _llguidance():
    try:
        import llguidance
    except ImportError:  # a runtime dependency; only a broken install lacks it
        raise CamelidError("structured output needs the llguidance package: pip install llguidance") from None
    return llguidance


class _Vocabulary:
    """The model's tokens as llguidance's TokenizerWrapper reads them."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.eog_ids, default=0)
        self.bos_token_id = tokenizer.bos_id
        self.tokens = [self._bytes(i) for i in range(tokenizer.n_vocab)]
        self.special_token_ids = [i for i in range(tokenizer.n_vocab) if tokenizer.is_control(i)]

    def _bytes(self, i: int) -> bytes:
        """A token's bytes; control tokens (and <...> user-defined ones) marked with 0xff, as llguidance expects."""
        raw = self._tokenizer.token_to_bytes(i, True)
        if self._tokenizer.is_control(i) or (self._tokenizer.is_user_defined(i) and raw.startswith(b"<") and raw.endswith(b">")):
            return b"\xff" + raw
        return raw

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


_TOKENIZERS: dict[int, tuple[Any, Any]] = {}


def grammar_tokenizer(tokenizer, n_vocab: int):
    """llguidance's LLTokenizer for a camelid Tokenizer (built once, about a second for 150k tokens)."""
    key = id(tokenizer)
    cached = _TOKENIZERS.get(key)
    if cached is None or cached[0] is not tokenizer:
        llg = _llguidance()
        lltok = llg.LLTokenizer(llg.TokenizerWrapper(_Vocabulary(tokenizer)), n_vocab=n_vocab,
                                eos_token=sorted(tokenizer.eog_ids) or None)
        cached = _TOKENIZERS[key] = (tokenizer, lltok)
    return cached[1]


def json_schema_grammar(schema: Any) -> str:
    """The grammar of JSON values that validate against `schema` (a dict, or True for any JSON object)."""
    llg = _llguidance()
    if schema is True:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise CamelidError(f"a JSON schema must be a JSON object, not {type(schema).__name__}.")
    try:
        return llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides={"whitespace_pattern": JSON_WHITESPACE})
    except ValueError as exc:
        raise CamelidError(f"the JSON schema cannot be used: {exc}") from None


def gbnf_grammar(text: str) -> str:
    """The grammar of a GBNF text (llama.cpp's grammar format; Lark is accepted too)."""
    if not isinstance(text, str) or not text.strip():
        raise CamelidError("the grammar is empty; give GBNF rules, starting with root ::= ...")
    try:
        return _llguidance().grammar_from("gbnf", text)
    except ValueError as exc:
        raise CamelidError(f"the grammar cannot be used: {exc}") from None


def lark_grammar(text: str) -> str:
    """The grammar of a llguidance Lark text (camelid.tools writes these for forced tool calls)."""
    return _llguidance().LLMatcher.grammar_from_lark(text)


class GrammarMask:
    """A token mask that keeps generation inside a grammar (see the module docstring).

    Compiling happens here: a grammar llguidance cannot compile raises CamelidError with its reason
    (`what` names it: "grammar", "JSON schema").
    """

    def __init__(self, grammar: str, tokenizer, n_vocab: int, what: str = "grammar"):
        llg = _llguidance()
        lltok = grammar_tokenizer(tokenizer, n_vocab)
        error = llg.LLMatcher.validate_grammar(grammar, lltok)
        if error:
            raise CamelidError(f"the {what} cannot be compiled: {error}")
        self._matcher = llg.LLMatcher(lltok, grammar, log_level=0)
        self._n_vocab = n_vocab
        self._fed = 0
        self._eog = np.zeros(n_vocab, bool)
        self._eog[sorted(t for t in tokenizer.eog_ids if t < n_vocab)] = True

    def __call__(self, generated: list[int]) -> np.ndarray:
        """(n_vocab,) bool: the tokens the grammar allows after `generated`."""
        m = self._matcher
        for token in generated[self._fed:]:
            m.consume_token(token)
        self._fed = len(generated)
        if m.is_error():
            raise CamelidError(f"constrained decoding failed: {m.get_error()}")
        if m.is_stopped():
            return self._eog
        words = np.frombuffer(m.compute_bitmask(), np.uint8)  # 32-token words, little-endian bits
        return np.unpackbits(words, bitorder="little")[:self._n_vocab].astype(bool)
