"""Pre-tokenizers of BPE vocabularies, selected by the GGUF key `tokenizer.ggml.pre`.

A pre-tokenizer is a list of regexes applied one after another: each regex splits every piece the
previous one produced into its matches and the text between them (nothing is dropped), as llama.cpp's
`unicode_regex_split` does. The regexes are llama.cpp's own (`camelid.tokenizer.pre_regex`), and
`Splitter` runs them with llama.cpp's semantics:

- A regex using Unicode classes (\\p{L}, \\p{N}, \\p{P}, \\p{M}, \\p{S}) sees characters as llama.cpp's
  Unicode 15.1 tables classify them: a character assigned only in a newer Unicode is unassigned (Cn),
  and \\p{Lu}, \\p{Ll}, \\p{Lt}, \\p{Lm}, \\p{Lo} all mean \\p{L}.
- A regex without them is run as std::wregex does: non-ASCII whitespace becomes U+000B first (so
  U+3000 no longer falls in a CJK range), \\d is [0-9] and $ is the end of the piece only.
- The patterns llama.cpp replaces by hand-written splitters get equivalents: Kimi-K2's (Han runs,
  then words of non-Han letters) and AFMoE's digit grouping (each digit run cut into groups of three
  from its end, the text before a run joined to the run's first group).

Byte-level BPE then sees each piece as UTF-8 bytes, each byte written as one printable character
(GPT-2's `bytes_to_unicode` table: printable Latin-1 bytes stand for themselves, the other 68 bytes
map to U+0100 onwards); SPM-style BPE vocabularies (Gemma 4) see the raw text instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import regex

from camelid.tokenizer import pre_regex as R
from camelid.tokenizer.llama_unicode import UNASSIGNED, assigned_since_15_1


@dataclass(frozen=True)
class PreTokenizer:
    """How one family of BPE vocabularies splits and encodes text before merging (llama.cpp's flags).

    patterns: llama.cpp's regexes, applied in order. ignore_merges: a piece that is itself a token
    is emitted whole. add_bos: whether BOS is added when the GGUF has no `tokenizer.ggml.add_bos_token`
    key; always_add_bos: added whatever the key says (Gemma 4). has_bos: False where the family has
    no BOS token by default. byte_encode: pieces are written byte-level (GPT-2) before merging;
    otherwise merged as raw text, with `<0xXX>` tokens for bytes that are not tokens.
    escape_whitespaces: spaces are written as U+2581 before splitting (SPM-style BPE) and decoded back.
    newline_tokens: a piece of only newlines that is a token is emitted whole (Gemma 4).
    clean_spaces: llama.cpp's detokenizer removes spaces before punctuation (camelid's decode never does).
    """

    patterns: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False
    always_add_bos: bool = False
    has_bos: bool = True
    byte_encode: bool = True
    escape_whitespaces: bool = False
    newline_tokens: bool = False
    clean_spaces: bool = True


_QUIET = {"clean_spaces": False}  # the families whose llama.cpp detokenizer leaves spaces alone
_FAMILIES: list[tuple[tuple[str, ...], PreTokenizer]] = [
    # GPT-2's pattern behind runs of punctuation and digits split in threes; also a file with no pre name.
    (("default",), PreTokenizer(R.DEFAULT)),
    # Llama 3: digits in threes, case-insensitive contractions; a piece that is a token stays whole.
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     PreTokenizer(R.TYPE_LLAMA3, ignore_merges=True, add_bos=True)),
    # Llama 3's pattern without its flags.
    (("dbrx", "smaug-bpe"), PreTokenizer(R.TYPE_LLAMA3)),
    # ChatGLM 4 / GLM 4-5: Llama 3's pattern and no BOS token; GLM 4-5 keep whole-token pieces.
    (("chatglm-bpe",), PreTokenizer(R.TYPE_LLAMA3, has_bos=False)),
    (("glm4", "glm5"), PreTokenizer(R.TYPE_LLAMA3, ignore_merges=True, has_bos=False)),
    # Jais 2: Llama 3's pattern with runs of whitespace cut into 512, 256, ..., 4, 1-2 and 1.
    (("jais-2",), PreTokenizer(R.TYPE_JAIS2)),
    # MiniCPM 5: digits in threes first, then Llama 3's pattern with whole digit runs.
    (("minicpm5",), PreTokenizer(R.TYPE_MINICPM5, ignore_merges=True)),
    # DeepSeek LLM (v1, v2): newlines, Latin/Greek/Cyrillic words, ASCII and CJK punctuation, CJK and Hangul runs.
    (("deepseek-llm",), PreTokenizer(R.TYPE_DEEPSEEK_LLM, **_QUIET)),
    # DeepSeek Coder: newlines, words, punctuation, CJK and Hangul runs, single digits.
    (("deepseek-coder",), PreTokenizer(R.TYPE_DEEPSEEK_CODER, **_QUIET)),
    # DeepSeek V3 and R1: digits in threes, Han and kana runs, words keeping their combining marks.
    (("deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"), PreTokenizer(R.TYPE_DEEPSEEK3_LLM, **_QUIET)),
    # Spark 2.5: DeepSeek V3's pattern with single newlines and single digits.
    (("spark2_5",), PreTokenizer(R.TYPE_SPARK2_5, **_QUIET)),
    # Youtu: Hangul, CJK punctuation, bopomofo and Han/kana runs, then cased words.
    (("youtu",), PreTokenizer(R.TYPE_YOUTU, ignore_merges=True, **_QUIET)),
    # Falcon: punctuation runs, GPT-2's pattern, then digits in threes.
    (("falcon",), PreTokenizer(R.TYPE_FALCON)),
    # GPT-2's pattern: contractions, letter runs, digit runs and other runs, each after an optional space.
    (("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "jina-es", "jina-de", "jina-v1-en", "jina-v2-es",
      "jina-v2-de", "jina-v2-code", "roberta-bpe", "gigachat", "a.x-4.0", "mellum", "modern-bert"),
     PreTokenizer(R.TYPE_GPT2)),
    (("trillion", "granite-docling"), PreTokenizer(R.TYPE_GPT2, **_QUIET)),
    # StarCoder: every digit alone, then GPT-2's pattern.
    (("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"), PreTokenizer(R.TYPE_STARCODER)),
    (("smollm", "command-r"), PreTokenizer(R.TYPE_STARCODER, **_QUIET)),
    # Qwen 2 / 3: Llama 3's pattern with single digits.
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"),
     PreTokenizer(R.TYPE_QWEN2, **_QUIET)),
    (("stablelm2", "megrez"), PreTokenizer(R.TYPE_QWEN2)),
    # Qwen 3.5: Qwen 2's pattern with combining marks kept in words.
    (("qwen35",), PreTokenizer(R.TYPE_QWEN35, **_QUIET)),
    # Laguna: lines and runs of newlines, then Qwen 2's pattern.
    (("laguna",), PreTokenizer(R.TYPE_LAGUNA, **_QUIET)),
    # Ufakzeka: Qwen 2's pattern without contractions (Turkish suffixes after an apostrophe stay attached).
    (("ufakzeka",), PreTokenizer(R.TYPE_UFAKZEKA, **_QUIET)),
    # Ling / LLaDA-MoE: Qwen 2's pattern with one newline per whitespace piece.
    (("bailingmoe", "bailingmoe2", "llada-moe"), PreTokenizer(R.TYPE_BAILINGMOE, **_QUIET)),
    # Seed-Coder: single digits; newlines never join punctuation.
    (("seed-coder",), PreTokenizer(R.TYPE_SEED_CODER, **_QUIET)),
    # EXAONE MoE: words joined across single spaces, marks kept.
    (("exaone-moe",), PreTokenizer(R.TYPE_EXAONE_MOE)),
    # Tekken (Mistral): cased words, single digits; whole-token pieces kept, BOS added.
    (("tekken",), PreTokenizer(R.TYPE_TEKKEN, ignore_merges=True, add_bos=True, **_QUIET)),
    # GPT-4o / Llama 4: cased words with contractions, digits in threes.
    (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), PreTokenizer(R.TYPE_GPT4O, **_QUIET)),
    # Granite embedding (97M): GPT-4o's pattern with combining marks counted as letters.
    (("granite-embed-multi-97m",), PreTokenizer(R.TYPE_GRANITE_EMB_MULTI, ignore_merges=True, **_QUIET)),
    # Tiny Aya / Cohere 2 MoE: digits grouped in threes from the right, then cased words.
    (("tiny_aya", "cohere2moe"), PreTokenizer(R.TYPE_TINY_AYA, **_QUIET)),
    # Kimi K2: Han runs, then words of other letters (llama.cpp's hand-written splitter).
    (("kimi-k2",), PreTokenizer(R.TYPE_KIMI_K2, **_QUIET)),
    # AFMoE: digits grouped from the right, runs of CJK/Thai/Khmer/... scripts, DeepSeek V3's words.
    (("afmoe",), PreTokenizer(R.TYPE_AFMOE, **_QUIET)),
    # SuperBPE: digit runs cut in threes from the right.
    (("superbpe",), PreTokenizer(R.TYPE_SUPERBPE, **_QUIET)),
    # Chameleon: sentinel and image tokens, tabs/newlines and space pairs, digits, punctuation, GPT-2.
    (("chameleon",), PreTokenizer(R.TYPE_CHAMELEON, add_bos=True, **_QUIET)),
    # BLOOM / Poro / GPT-3 Finnish: words up to whitespace or sentence punctuation; Viking splits digits.
    (("bloom", "gpt3-finnish"), PreTokenizer(R.TYPE_BLOOM)),
    (("poro-chat",), PreTokenizer(R.TYPE_BLOOM, **_QUIET)),
    (("viking",), PreTokenizer(R.TYPE_VIKING, **_QUIET)),
    # Gemma 4: SentencePiece-style BPE over whole lines of raw text, spaces as U+2581, BOS always.
    (("gemma4", "granite-embed-multi-311m"),
     PreTokenizer(R.TYPE_GEMMA4, byte_encode=False, escape_whitespaces=True, always_add_bos=True, newline_tokens=True)),
    (("sarvam-moe",), PreTokenizer(R.TYPE_GEMMA4, byte_encode=False, escape_whitespaces=True, **_QUIET)),
    # Whitespace: runs of non-whitespace as raw text (Jina v2 Chinese).
    (("whitespace",), PreTokenizer(R.TYPE_WHITESPACE, byte_encode=False)),
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


# -- running llama.cpp's regexes ------------------------------------------------------------------

# \s beyond ASCII (Unicode White_Space, llama.cpp's unicode_set_whitespace): U+000B for std::wregex.
_NON_ASCII_WHITESPACE = {c: "\x0b" for c in (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                                               0x205F, 0x3000)}
_CATEGORIES = ("\\p{N}", "\\p{L}", "\\p{P}", "\\p{M}", "\\p{S}", "\\p{Lu}", "\\p{Ll}", "\\p{Lt}", "\\p{Lm}", "\\p{Lo}")
# llama.cpp's unicode_cpt_is_han, the Han test of its Kimi-K2 splitter.
_HAN = ("\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
        "\U0002b820-\U0002ceaf\U0002ceb0-\U0002ebef\uf900-\ufaff\U0002f800-\U0002fa1f")
# Kimi-K2's splitter as a regex: Han runs, words of non-Han letters (marks not included) with an
# optional contraction, digits in threes, then Llama 3's tail.
_KIMI_K2 = (f"[{_HAN}]+|[^\\r\\n\\p{{L}}\\p{{N}}]?[^\\P{{L}}{_HAN}]+{R.CONTRACTIONS}?|\\p{{N}}{{1,3}}"
            "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_DIGIT_GROUPS = ("\\p{AFMoE_digits}", "\\d{1,3}(?=(?:\\d{3})*\\b)")  # llama.cpp's unicode_regex_split_custom_afmoe
_DIGIT_RUN = regex.compile(r"\p{N}+")

# Which text a step's regex runs on: as llama.cpp's Unicode tables see it, as std::wregex sees it,
# or (Kimi-K2) as its tables see it but with its Han ranges intact.
_UNICODE, _WREGEX, _KIMI = "unicode", "wregex", "kimi"


@functools.cache
def _newer_characters() -> tuple[frozenset[str], dict[int, str], dict[int, str]]:
    """The characters assigned after Unicode 15.1 and str.translate tables taking them (all; all but
    those in Kimi-K2's Han ranges) to an unassigned character."""
    newer = assigned_since_15_1()
    han = regex.compile(f"[{_HAN}]")
    return (newer, {ord(c): UNASSIGNED for c in newer}, {ord(c): UNASSIGNED for c in newer if not han.match(c)})


def _compile(pattern: str) -> tuple[str, regex.Pattern | None]:
    """(subject kind, compiled regex) for one llama.cpp pattern; None for the digit-group splitter."""
    if pattern in _DIGIT_GROUPS:
        return _UNICODE, None
    if pattern == R.TYPE_KIMI_K2[0]:
        return _KIMI, regex.compile(_KIMI_K2)
    if any(c in pattern for c in _CATEGORIES):
        return _UNICODE, regex.compile(regex.sub(r"\\p\{L[ultmo]\}", r"\\p{L}", pattern))
    python = pattern.replace("\\d", "[0-9]")
    if python.endswith("$") and not python.endswith("\\$"):
        python = python[:-1] + "\\Z"
    return _WREGEX, regex.compile(python)


def _digit_group_ends(piece: str) -> list[int]:
    """End offsets of AFMoE's pieces: every digit run ends pieces at the points a multiple of three
    digits before its end (after at least one digit); the text before a run goes with its first group."""
    ends = []
    for m in _DIGIT_RUN.finditer(piece):
        start, end = m.span()
        ends.extend(range(start + (end - start - 1) % 3 + 1, end + 1, 3))
    if not ends or ends[-1] < len(piece):
        ends.append(len(piece))
    return ends


class Splitter:
    """Splits text into pre-tokens with a PreTokenizer's regexes, keeping the text between matches."""

    def __init__(self, pre: PreTokenizer):
        self._steps = [_compile(p) for p in pre.patterns]
        self._kinds = {kind for kind, _ in self._steps}

    def _subjects(self, text: str) -> dict[str, str]:
        subjects = dict.fromkeys(self._kinds, text)
        if text.isascii():
            return subjects
        if _WREGEX in subjects:
            subjects[_WREGEX] = text.translate(_NON_ASCII_WHITESPACE)
        newer, table, table_not_han = _newer_characters()
        if not newer.isdisjoint(text):
            if _UNICODE in subjects:
                subjects[_UNICODE] = text.translate(table)
            if _KIMI in subjects:
                subjects[_KIMI] = text.translate(table_not_han)
        return subjects

    def __call__(self, text: str) -> list[str]:
        subjects = self._subjects(text)
        spans = [(0, len(text))]
        for kind, pattern in self._steps:
            subject = subjects[kind]
            out: list[tuple[int, int]] = []
            for begin, end in spans:
                piece = subject[begin:end]
                if pattern is None:
                    start = begin
                    for stop in _digit_group_ends(piece):
                        out.append((start, begin + stop))
                        start = begin + stop
                    continue
                pos = 0                             # each match and the text between matches is a piece
                for m in pattern.finditer(piece):
                    start, stop = m.span()
                    if start > pos:
                        out.append((begin + pos, begin + start))
                    if stop > start:
                        out.append((begin + start, begin + stop))
                    pos = stop
                if pos < len(piece):
                    out.append((begin + pos, end))
            spans = out
        return [text[begin:end] for begin, end in spans]
