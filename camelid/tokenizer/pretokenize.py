"""Pre-tokenizers of byte-level BPE vocabularies, selected by the GGUF key `tokenizer.ggml.pre`.

A pre-tokenizer is a list of regexes applied one after another: each regex splits every piece the
previous one produced into its matches and the text between them (nothing is dropped), as llama.cpp's
`unicode_regex_split` does. The patterns are the ones the models were trained with (their HF
`tokenizer.json`), in the adapted forms llama.cpp uses; `\\p{L}`, `\\p{N}` and `\\s` come from the
`regex` package, whose Unicode tables llama.cpp's own tables are generated from.

Byte-level BPE then sees each piece as UTF-8 bytes, each byte written as one printable character
(GPT-2's `bytes_to_unicode` table: printable Latin-1 bytes stand for themselves, the other 68 bytes
map to U+0100 onwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

_CONTRACTIONS_CI = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (_CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Upper/lower-case runs: (?=[\p{L}])([^a-z]) is "a letter that is not a-z", llama.cpp's stand-in for \p{Lu}.
_UPPER = r"((?=[\p{L}])([^a-z]))"
_LOWER = r"((?=[\p{L}])([^A-Z]))"
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?" + _UPPER + "*" + _LOWER + r"+|[^\r\n\p{L}\p{N}]?" + _UPPER + "+" + _LOWER + "*"
           + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?" + _UPPER + "*" + _LOWER + "+" + _CONTRACTIONS_CI + "?"
          + r"|[^\r\n\p{L}\p{N}]?" + _UPPER + "+" + _LOWER + "*" + _CONTRACTIONS_CI + "?"
          + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"


@dataclass(frozen=True)
class PreTokenizer:
    """How one family of BPE vocabularies splits text before merging.

    patterns: regexes applied in order; ignore_merges: a piece that is itself a token is emitted
    whole without running the merges (Llama 3, Tekken); add_bos: whether BOS is added when the GGUF
    has no `tokenizer.ggml.add_bos_token` key; has_bos: False where the family has no BOS token.
    """

    patterns: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False
    has_bos: bool = True


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_FAMILIES: list[tuple[tuple[str, ...], PreTokenizer]] = [
    (("default",), _DEFAULT),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
     PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)),
    (("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    (("chatglm-bpe", "glm4"), PreTokenizer((_LLAMA3,), has_bos=False)),
    (("gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de", "jina-v1-en", "jina-v2-es", "jina-v2-de",
      "jina-v2-code", "roberta-bpe", "gigachat", "a.x-4.0", "mellum", "exaone4", "trillion", "granite-docling"),
     PreTokenizer((_GPT2,))),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
     PreTokenizer((r"\p{N}", _GPT2))),
    (("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan", "kormo", "solar-open"),
     PreTokenizer((_QWEN2,))),
    (("falcon",), PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"))),
    (("deepseek-coder",), PreTokenizer((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"))),
    (("tekken",), PreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True)),
    (("gpt-4o", "llama4"), PreTokenizer((_GPT4O,))),
    (("bloom", "poro-chat", "gpt3-finnish"), PreTokenizer((_BLOOM,))),
    (("viking",), PreTokenizer((_BLOOM, r"\p{N}"))),
]
PRE_TOKENIZERS: dict[str, PreTokenizer] = {name: pre for names, pre in _FAMILIES for name in names}


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (index = byte value)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    for b in printable:
        table[b] = chr(b)
    n = 0
    for b in range(256):
        if not table[b]:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_CHAR: list[str] = _bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# str.translate table taking a Latin-1 decoded byte string to its byte-level form.
_LATIN1_TO_BYTE_LEVEL = {b: c for b, c in enumerate(BYTE_TO_CHAR)}


def byte_level(text: str) -> str:
    """The byte-level form of `text`: one printable character per UTF-8 byte."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_BYTE_LEVEL)


# llama.cpp runs a pattern without Unicode classes through std::wregex on text whose non-ASCII
# whitespace is replaced by U+000B (so, e.g., U+3000 no longer falls in a CJK range like [ࠀ-一]).
_NON_ASCII_WHITESPACE = {c: "\x0b" for c in (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                                               0x205F, 0x3000)}  # \s beyond ASCII (Unicode White_Space)
_UNICODE_CLASS = regex.compile(r"\\p\{(?:N|L|P|M|S|Lu|Ll|Lt|Lm|Lo)\}")


class Splitter:
    """Splits text into pre-tokens with a PreTokenizer's regexes, keeping the text between matches."""

    def __init__(self, pre: PreTokenizer):
        self._compiled = [(regex.compile(p), not _UNICODE_CLASS.search(p)) for p in pre.patterns]

    def __call__(self, text: str) -> list[str]:
        pieces = [text]
        for pattern, fold_whitespace in self._compiled:
            out: list[str] = []
            for piece in pieces:
                pos = 0
                subject = piece.translate(_NON_ASCII_WHITESPACE) if fold_whitespace else piece
                for m in pattern.finditer(subject):
                    start, end = m.span()
                    if start > pos:
                        out.append(piece[pos:start])
                    if end > start:
                        out.append(piece[start:end])
                    pos = end
                if pos < len(piece):
                    out.append(piece[pos:])
            pieces = out
        return pieces
