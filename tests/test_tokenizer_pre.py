"""Every BPE pre-tokenizer llama.cpp knows, against llama.cpp.

Oracles:
- llama.cpp's tokenizer test vectors for the BPE vocabularies of its suite (tests/data/vocab, MIT
  licensed, see LICENSE-llama.cpp there; test_tokenizer.py checks gpt-2, llama-bpe and qwen2).
- llama.cpp itself (llama-cpp-python, vocab_only) on those vocabularies and on every tokenizer.ggml.pre
  name it knows, each written into a copy of a real vocabulary (qwen2's byte-level one; Gemma 4's for
  the names that merge raw text), over the multilingual corpus tests/data/multilingual.txt and seeded
  random strings of hard characters: token ids, BOS, end-of-generation ids and detokenized bytes.
- The oracle's own src/llama-vocab.cpp (tests/oracle/source.py): names, regexes and flags.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import pytest
import regex

import oracle
from camelid.formats.gguf import read_metadata
from camelid.tokenizer import Tokenizer, load_tokenizer
from camelid.tokenizer.llama_unicode import UNASSIGNED_15_1
from camelid.tokenizer.pretokenize import PRE_TOKENIZERS, PreTokenizer, Splitter
from vocab_variants import with_strings

DATA = Path(__file__).resolve().parent / "data"
VOCAB_DIR = DATA / "vocab"
SEPARATOR = "\n__ggml_vocab_test__\n"

# Every tokenizer.ggml.pre of the llama.cpp in llama-cpp-python 0.3.36, in the order of its
# llama_vocab::impl::load chain. A name llama.cpp adds goes here, and then into camelid's table.
LLAMA_CPP_PRE_NAMES = (
    "default", "minicpm5", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
    "lfm2", "jina-v5-nano", "deepseek-llm", "deepseek-coder", "deepseek-v3", "spark2_5", "youtu", "falcon",
    "mpt", "starcoder", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
    "a.x-4.0", "mellum", "modern-bert", "jais-2", "gemma4", "granite-embed-multi-311m", "sarvam-moe",
    "jina-v1-en", "jina-v2-code", "roberta-bpe", "whitespace", "refact", "command-r", "qwen2",
    "deepseek-r1-qwen", "kormo", "f2llmv2", "qwen35", "stablelm2", "olmo", "dbrx", "smaug-bpe", "poro-chat",
    "chatglm-bpe", "glm4", "glm5", "viking", "jais", "tekken", "smollm", "codeshell", "bloom", "gpt3-finnish",
    "exaone", "exaone4", "exaone-moe", "chameleon", "minerva-7b", "megrez", "gpt-4o", "llama4", "kanana2",
    "talkie", "granite-embed-multi-97m", "tiny_aya", "cohere2moe", "superbpe", "trillion", "granite-docling",
    "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan", "hunyuan-dense", "hy_v4", "joyai-llm",
    "kimi-k2", "ufakzeka", "grok-2", "afmoe", "laguna", "minimax-m2", "solar-open", "mellum2",
)

# llama.cpp's BPE vocabularies with test vectors that test_tokenizer.py does not already check.
FIXTURES = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "mpt", "qwen35", "refact", "starcoder"]

_ESCAPE = re.compile(r"\\(n|r|t|\\|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})")


def _unescape(line: str) -> str:
    def sub(m: re.Match) -> str:
        e = m.group(1)
        return {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}.get(e) or chr(int(e[1:], 16))
    return _ESCAPE.sub(sub, line)


def read_corpus() -> list[str]:
    """The multilingual corpus: one case per line, with \\n \\r \\t \\\\ \\uXXXX \\UXXXXXXXX escapes."""
    lines = (DATA / "multilingual.txt").read_text(encoding="utf-8").split("\n")
    return [_unescape(line) for line in lines if line and not line.startswith("## ")]


CORPUS = read_corpus()

# Characters for random strings: every class the pre-tokenizer regexes tell apart, and their edges.
_POOL = list(
    "aZq sStTmMdDrReEvVlL'’" "0123456789" "!?.,;:-_/\\|`~^$+<=>()[]{}#%&*@\"" " \t\n\r"
    "\u00a0\u3000\u2009\u0085\u000b\u000c\u001c\u200b\u200d\ufe0f\u00ad"
    "éßİıǅʰÆ\u0301\u0308\u20dd" "中文字豈\U00020000" "あアｱ・ー" "한ᄀㄱ" "กำ๑" "ក្ម១" "ع\u064e٣" "अि्१"
    "ÅΩΣЖж" "Ａａ１！。，、「」" "—…“”‘’«»" "€£¥©®™°±" "²½Ⅻ①" "🦙👍🏽🫩\U0001faf8" "Ᲊ\U0001e5d0\ue000"
)


def random_strings(seed: int, n: int = 120) -> list[str]:
    """n strings of 1-16 runs, each a pool character repeated 1-5 times (runs of spaces and digits)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(_POOL) * rng.choice((1, 1, 1, 2, 3, 5)) for _ in range(rng.randint(1, 16)))
            for _ in range(n)]


def read_cases(name: str) -> list[tuple[str, list[int]]]:
    """(input, expected ids) pairs of a fixture, split exactly as llama.cpp's test-tokenizer-0 does."""
    raw = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    inputs, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEPARATOR, pos)
        if nxt < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:nxt])
        pos = nxt + len(SEPARATOR)
    lines = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(lines) == len(inputs) + 1 and lines[-1] == "", f"{name}: .inp and .out disagree on the number of tests"
    return list(zip(inputs, [[int(t) for t in line.split()] for line in lines[:-1]]))


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's detokenizer clean-up (llama_vocab::impl::detokenize with clean_spaces), in place as it does it."""
    t = bytearray(text)
    total = len(t)
    for step in range(3):
        n, total = total, 1 if total else 0
        i = 1
        while i < n:
            x = t[i]
            if step == 0 and t[i - 1] == 32 and x in b"?!.,":
                total -= 1
            elif step == 1 and x == 39 and i + 1 < n and t[i - 1] == 32 and t[i + 1] == 32:
                total -= 1
                i += 1
                t[i] = 0
            elif step == 2 and t[i - 1] == 32 and x == 39 and i + 1 < n:
                x1 = t[i + 1]
                if x1 in b"sm" or (x1 not in b"td" and i + 2 < n and (x1, t[i + 2]) in ((114, 101), (118, 101))):
                    total -= 1
            t[total] = x
            total += 1
            i += 1
    return bytes(t[:total])


ALL_MODES = [(False, False), (False, True), (True, False), (True, True)]  # (add_special, parse_special)


def compare(tok: Tokenizer, vocab: oracle.Llama, texts: list[str], modes=ALL_MODES) -> list[tuple]:
    """(text, add_special, parse_special, camelid ids, llama.cpp ids) for every disagreement."""
    mismatches = []
    for text in texts:
        for add_special, parse_special in modes:
            expected = vocab.tokenize(text, add_bos=add_special, special=parse_special)
            got = tok.encode(text, add_special=add_special, parse_special=parse_special)
            if got != expected:
                mismatches.append((text, add_special, parse_special, got, expected))
    return mismatches


def compare_decode(tok: Tokenizer, vocab: oracle.Llama, pre: PreTokenizer, texts: list[str]) -> list[tuple]:
    """(text, special, camelid bytes, llama.cpp bytes) where llama_detokenize differs from decode
    (after llama.cpp's space clean-up where the pre-tokenizer has it)."""
    mismatches = []
    for text in texts:
        ids = tok.encode(text, add_special=True, parse_special=True)
        for special in (False, True):
            got = tok.decode_bytes(ids, skip_special=not special)
            expected = vocab.detokenize(ids, unparse_special=special)
            if (clean_spaces(got) if pre.clean_spaces else got) != expected:
                mismatches.append((text, special, got, expected))
    return mismatches


def _first(mismatches: list) -> str:
    return f"{len(mismatches)} mismatches, first: {mismatches[0]!r}" if mismatches else ""


# -- the name table ----------------------------------------------------------------------------------


def test_camelid_knows_every_llama_cpp_pre_tokenizer():
    assert sorted(set(LLAMA_CPP_PRE_NAMES) - set(PRE_TOKENIZERS)) == []
    assert sorted(set(PRE_TOKENIZERS) - set(LLAMA_CPP_PRE_NAMES)) == []


def test_table_matches_llama_cpp_source():
    from llama_cpp_source import pre_tokenizers
    from oracle.source import llama_cpp_text

    source = pre_tokenizers(llama_cpp_text("src/llama-vocab.cpp"))
    assert sorted(source) == sorted(LLAMA_CPP_PRE_NAMES)
    for name, entry in source.items():
        pre = PRE_TOKENIZERS[name]
        gemma4 = entry["type"] == "GEMMA4"
        assert (pre.patterns, pre.byte_encode, pre.has_bos, pre.ignore_merges, pre.add_bos, pre.clean_spaces,
                pre.escape_whitespaces, pre.always_add_bos, pre.newline_tokens) == (
            entry["regexes"], entry["byte_encode"], entry["has_bos"], entry["ignore_merges"], entry["add_bos"],
            entry["clean_spaces"], entry["escape_whitespaces"], gemma4, gemma4), name


def test_unknown_name_does_not_load_in_llama_cpp(tmp_path):
    path = with_strings(VOCAB_DIR / "corpus-llama-bpe.gguf", tmp_path / "v.gguf", {"tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(oracle.OracleError, match="Failed to load"):
        oracle.Llama(path, vocab_only=True).load()


def test_vocab_variant_reproduces_llama_cpp_fixture(tmp_path):
    # ggml-vocab-qwen35.gguf is llama.cpp's qwen2 vocabulary with tokenizer.ggml.pre = "qwen35".
    path = with_strings(VOCAB_DIR / "ggml-vocab-qwen2.gguf", tmp_path / "v.gguf", {"tokenizer.ggml.pre": "qwen35"})
    assert path.read_bytes() == (VOCAB_DIR / "ggml-vocab-qwen35.gguf").read_bytes()


# -- llama.cpp's vocabularies -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def fixture_tokenizer(name: str) -> Tokenizer:
    return load_tokenizer(VOCAB_DIR / f"ggml-vocab-{name}.gguf")


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_vectors(name):
    tok = fixture_tokenizer(name)
    mismatches = [(i, text, got, expected) for i, (text, expected) in enumerate(read_cases(name))
                  if (got := tok.encode(text, add_special=False, parse_special=False)) != expected]
    assert not mismatches, _first(mismatches)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_corpus_matches_llama_cpp(name):
    tok = fixture_tokenizer(name)
    vocab = oracle.Llama(VOCAB_DIR / f"ggml-vocab-{name}.gguf", vocab_only=True)
    assert not (m := compare(tok, vocab, CORPUS)), _first(m)
    assert not (m := compare_decode(tok, vocab, PRE_TOKENIZERS[tok.pre], CORPUS)), _first(m)
    assert (tok.add_bos, set(tok.eog_ids)) == (vocab.add_bos, vocab.eog_ids)


# -- every name, in a borrowed vocabulary --------------------------------------------------------------------


def _base(pre: PreTokenizer) -> tuple[str, dict[str, str]]:
    """The vocabulary a name is tested in and the keys changed there: byte-level names in llama-bpe's
    vocabulary, raw-text names in Gemma 4's (as a "gpt2" vocabulary, so that the name decides), each
    cut down to what the test texts need (tests/make_corpus_vocab.py)."""
    return ("corpus-llama-bpe", {}) if pre.byte_encode else ("corpus-gemma-4", {"tokenizer.ggml.model": "gpt2"})


@functools.lru_cache(maxsize=None)
def _base_metadata(vocab: str) -> dict:
    return read_metadata(VOCAB_DIR / f"{vocab}.gguf")


_FAMILY_TOKENIZERS: dict[PreTokenizer, Tokenizer] = {}


def family_tokenizer(name: str) -> Tokenizer:
    """camelid's tokenizer for the name in its borrowed vocabulary. Tokenizer.from_metadata depends on
    the name only through PRE_TOKENIZERS[name], so names of one family share one tokenizer."""
    pre = PRE_TOKENIZERS[name]
    if pre not in _FAMILY_TOKENIZERS:
        vocab, keys = _base(pre)
        meta = dict(_base_metadata(vocab), **keys)
        meta["tokenizer.ggml.pre"] = name
        _FAMILY_TOKENIZERS[pre] = Tokenizer.from_metadata(meta)
    return _FAMILY_TOKENIZERS[pre]


def _tokenizable(name: str, texts: list[str]) -> list[str]:
    """The texts llama.cpp can tokenize with the name: with "whitespace" in a BPE vocabulary it aborts
    (find_bpe_rank asserts symbols have no space) on a whitespace run of two or more with a space."""
    if name != "whitespace":
        return texts
    return [t for t in texts if not any(len(run) > 1 and " " in run for run in re.findall(r"\s+", t))]


@pytest.mark.parametrize("name", LLAMA_CPP_PRE_NAMES)
def test_pre_tokenizer_matches_llama_cpp(name, tmp_path):
    # The first name of each family (in llama.cpp's order) is checked on the corpus in every mode and
    # on random strings; the others, which share its regexes, on the corpus with and without specials.
    pre = PRE_TOKENIZERS[name]
    vocab_name, keys = _base(pre)
    path = with_strings(VOCAB_DIR / f"{vocab_name}.gguf", tmp_path / "vocab.gguf", {**keys, "tokenizer.ggml.pre": name})
    vocab = oracle.Llama(path, vocab_only=True)
    vocab.load()  # a name llama.cpp does not know fails here ("unknown pre-tokenizer type")
    tok = family_tokenizer(name)
    first = next(n for n in LLAMA_CPP_PRE_NAMES if PRE_TOKENIZERS[n] == pre) == name
    corpus = _tokenizable(name, CORPUS)
    assert not (m := compare(tok, vocab, corpus, ALL_MODES if first else [(False, False), (True, True)])), _first(m)
    if first:
        randoms = _tokenizable(name, random_strings(LLAMA_CPP_PRE_NAMES.index(name)))
        assert not (m := compare(tok, vocab, randoms, [(False, False)])), _first(m)
    assert (tok.add_bos, set(tok.eog_ids)) == (vocab.add_bos, vocab.eog_ids)
    if name != "whitespace":  # llama.cpp decodes this raw-text vocabulary's tokens as byte-level text
        assert not (m := compare_decode(tok, vocab, pre, corpus)), _first(m)


def test_decode_round_trips_every_name():
    for name in LLAMA_CPP_PRE_NAMES:
        tok = family_tokenizer(name)
        for text in CORPUS:
            assert tok.decode(tok.encode(text, add_special=False)) == text, (name, text)


@pytest.mark.parametrize("fixture, keys, names", [
    ("llama-bpe", {}, ["llama-bpe", "deepseek-v3", "kimi-k2"]),
    ("gemma-4", {}, ["gemma4"]),
])
def test_cut_down_vocabulary_tokenizes_corpus_as_full_one(fixture, keys, names, tmp_path):
    # The ids differ between the two vocabularies; the token texts llama.cpp chooses must not.
    full_tok, cut_tok = fixture_tokenizer(fixture), load_tokenizer(VOCAB_DIR / f"corpus-{fixture}.gguf")
    for name in names:
        files = [with_strings(VOCAB_DIR / f"{v}.gguf", tmp_path / f"{v}-{name}.gguf", {**keys, "tokenizer.ggml.pre": name})
                 for v in (f"ggml-vocab-{fixture}", f"corpus-{fixture}")]
        full, cut = (oracle.Llama(f, vocab_only=True) for f in files)
        for text in CORPUS:
            assert ([full_tok.tokens[i] for i in full.tokenize(text, add_bos=False, special=False)]
                    == [cut_tok.tokens[i] for i in cut.tokenize(text, add_bos=False, special=False)]), (name, text)


# -- details of llama.cpp's splitting --------------------------------------------------------------------


def _split(name: str, text: str) -> list[str]:
    return Splitter(PRE_TOKENIZERS[name])(text)


def test_unicode_16_characters_are_unassigned_as_in_llama_cpp():
    # U+1FAE9 (Unicode 16) is a symbol to the regex package but unassigned in llama.cpp's tables: it is
    # neither punctuation nor symbol for DeepSeek V3, so it stands alone.
    assert _split("deepseek-v3", "hi\U0001fae9!") == ["hi", "\U0001fae9", "!"]
    assert _split("deepseek-v3", "hi\u20ac!") == ["hi", "\u20ac!"]


def test_regex_package_knows_unicode_15_1():
    # Characters assigned after Unicode 15.1 are written as an unassigned one; that is exact only if the
    # regex package assigns every character Unicode 15.1 does (regex 2023.10 or newer).
    assigned, start = [], 0
    for item in UNASSIGNED_15_1:
        first, _, last = item.partition("-")
        assigned.append(range(start, int(first, 16)))
        start = int(last or first, 16) + 1
    text = "".join(chr(c) for r in assigned for c in r if not 0xD800 <= c < 0xE000)
    assert regex.search(r"\p{Cn}", text) is None


def test_letter_subcategories_are_letters_as_in_llama_cpp():
    # llama.cpp reads \p{Lu} and \p{Ll} as \p{L}, so Tiny Aya keeps camelCase words whole.
    assert _split("tiny_aya", "camelCase HTTPServer") == ["camelCase", " HTTPServer"]


def test_digit_groups_as_in_llama_cpp():
    # AFMoE's splitter: groups of three from the end of each run; the text before a run joins its first group.
    digits = Splitter(PreTokenizer(("\\p{AFMoE_digits}",)))
    assert digits("ab1234567cd89 x") == ["ab1", "234", "567", "cd89", " x"]
    assert _split("afmoe", "ab1234567cd89 x") == ["ab", "1", "234", "567", "cd", "89", " x"]
    assert _split("superbpe", "1234567") == ["1", "234", "567"]


def test_kimi_k2_han_runs():
    assert _split("kimi-k2", "我想在apple工作's") == ["我想在", "apple", "工作", "'s"]


def test_wregex_digits_are_ascii():
    # A regex without Unicode classes runs in std::wregex, where \d is [0-9].
    assert _split("superbpe", "\u0661\u0662\u0663\u0664 1234") == ["\u0661\u0662\u0663\u0664", " ", "1", "234"]
