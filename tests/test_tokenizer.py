"""camelid.tokenizer against llama.cpp.

Oracles: llama.cpp's own tokenizer test vectors (tests/data/vocab, MIT licensed, see
LICENSE-llama.cpp there), which llama.cpp's tests/test-tokenizer-0 checks with
common_tokenize(text, add_special=false, parse_special=false); and, when llama-cpp-python is
installed, llama.cpp itself on the SmolLM2 (BPE) and Gemma 3 (262k-token SPM) model files.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest

from camelid.errors import CamelidError
from camelid.formats.gguf import read_metadata
from camelid.tokenizer import StreamingDetokenizer, Tokenizer, load_tokenizer
import oracle
from model_files import gemma_path, smollm2_path

VOCAB_DIR = Path(__file__).resolve().parent / "data" / "vocab"
VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2"]
SEPARATOR = "\n__ggml_vocab_test__\n"

HARD_STRINGS = [
    "你好，世界",
    "👨‍👩‍👧 family, 🚀🦙 and ✅",
    "😶‍🌫️ (multiple emojis concatenated)",
    "mixed: English, 中文, русский, العربية, हिन्दी, 日本語のテキスト, 한국어",
    "e\u0301 (combining accent) and \u200b zero width",
    "  indented\n\tcode() {}\r\n",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
]


def read_cases(name: str) -> list[tuple[str, list[int]]]:
    """(input, expected ids) pairs, split exactly as test-tokenizer-0 does.

    The .inp file separates inputs by SEPARATOR and also ends with one: the text after the last
    separator is an input only if it is non-empty. The .out file has one line of ids per input.
    """
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
    outputs = [[int(t) for t in line.split()] for line in lines[:len(inputs)]]
    assert len(lines) == len(inputs) + 1 and lines[-1] == "", f"{name}: .inp and .out disagree on the number of tests"
    return list(zip(inputs, outputs))


def _case_id(name: str, i: int, text: str) -> str:
    snippet = "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:20])
    return f"{name}-{i:02d}-{snippet}"


CASES = [pytest.param(name, i, id=_case_id(name, i, text))
         for name in VOCABS for i, (text, _) in enumerate(read_cases(name))]


@functools.lru_cache(maxsize=None)
def fixture_tokenizer(name: str) -> Tokenizer:
    return load_tokenizer(VOCAB_DIR / f"ggml-vocab-{name}.gguf")


@functools.lru_cache(maxsize=None)
def cases(name: str) -> list[tuple[str, list[int]]]:
    return read_cases(name)


def model_tokenizer(which: str) -> Tokenizer:
    return load_tokenizer(smollm2_path() if which == "smollm2" else gemma_path())


def stream(tokenizer: Tokenizer, ids: list[int], skip_special: bool = True) -> list[str]:
    detok = StreamingDetokenizer(tokenizer, skip_special=skip_special)
    return [detok.add_token(i) for i in ids] + [detok.finalize()]


# -- llama.cpp test vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("name, i", CASES)
def test_encode_matches_llama_cpp_vectors(name, i):
    text, expected = cases(name)[i]
    assert fixture_tokenizer(name).encode(text, add_special=False, parse_special=False) == expected


@pytest.mark.parametrize("name, i", CASES)
def test_decode_round_trips(name, i):
    # No vector input is excluded: all of them round-trip. SPM is lossy in exactly two cases, neither
    # present in these inputs (see test_spm_known_lossy_cases): a literal U+2581 in the text (SPM's
    # own space marker, decoded as a space) and a character with neither a token nor a byte token
    # (encoded as <unk>). The one leading space SPM's space prefix adds is dropped again by decode.
    text, expected = cases(name)[i]
    assert fixture_tokenizer(name).decode(expected) == text


@pytest.mark.parametrize("name, i", CASES)
def test_streaming_decode_equals_full_decode(name, i):
    text, expected = cases(name)[i]
    tok = fixture_tokenizer(name)
    pieces = stream(tok, expected)
    assert "".join(pieces) == tok.decode(expected) == text


# -- streaming on hard strings ---------------------------------------------------------------------


@pytest.mark.parametrize("name", VOCABS)
@pytest.mark.parametrize("text", HARD_STRINGS, ids=range(len(HARD_STRINGS)))
def test_streaming_hard_strings(name, text):
    tok = fixture_tokenizer(name)
    for add_special in (False, True):
        ids = tok.encode(text, add_special=add_special)
        pieces = stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids)
        # never half a character: no replacement character is ever emitted for valid text
        assert all("\ufffd" not in p for p in pieces)
    assert tok.decode(tok.encode(text, add_special=False)) == text


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_streaming_hard_strings_model_files(which):
    tok = model_tokenizer(which)
    for text in HARD_STRINGS + ["<|im_start|>user\n你好<|im_end|>\n<start_of_turn>model\n👨‍👩‍👧<end_of_turn>"]:
        ids = tok.encode(text, add_special=True, parse_special=True)
        for skip in (True, False):
            pieces = stream(tok, ids, skip_special=skip)
            assert "".join(pieces) == tok.decode(ids, skip_special=skip)
            assert all("\ufffd" not in p for p in pieces)


def test_streaming_holds_back_partial_characters():
    tok = fixture_tokenizer("llama-spm")
    byte = [tok.token_id(f"<0x{b:02X}>") for b in "你".encode()]  # E4 BD A0
    detok = StreamingDetokenizer(tok)
    assert [detok.add_token(i) for i in byte] == ["", "", "你"]
    # an incomplete character at the end becomes U+FFFD on finalize, as in decode
    assert detok.add_token(byte[0]) == "" and detok.finalize() == "\ufffd" == tok.decode(byte[:1])
    # an invalid sequence in the middle: same replacement as the one-shot decode
    ids = byte[:2] + tok.encode("A", add_special=False)
    assert "".join(stream(tok, ids)) == tok.decode(ids)


def test_streaming_random_byte_tokens_match_decode():
    tok = fixture_tokenizer("llama-spm")
    rng = random.Random(1)
    byte_ids = [tok.token_id(f"<0x{b:02X}>") for b in range(256)]
    pool = byte_ids + tok.encode(" a 你 b", add_special=False)
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        assert "".join(stream(tok, ids)) == tok.decode(ids)


def test_streaming_reset_and_leading_space():
    tok = fixture_tokenizer("llama-spm")
    ids = tok.encode("Hello world", add_special=False)
    detok = StreamingDetokenizer(tok)
    assert detok.add_token(ids[0]) == "Hello"      # the first token loses the added space
    detok.reset()
    assert "".join(detok.add_token(i) for i in ids) + detok.finalize() == "Hello world"
    assert "".join(detok.add_token(i) for i in ids) + detok.finalize() == "Hello world"  # finalize resets too


# -- SPM details ------------------------------------------------------------------------------------


def test_spm_space_prefix_and_bos():
    tok = fixture_tokenizer("llama-spm")
    assert tok.add_bos and not tok.add_eos and tok.add_space_prefix
    ids = tok.encode("Hello world")
    assert ids[0] == tok.bos_id == 1 and ids[1:] == tok.encode("Hello world", add_special=False)
    assert tok.decode(tok.encode("Hello", add_special=False)) == "Hello"
    # llama.cpp strips the space from the first token only: with BOS first, BOS renders as nothing
    # and the space of "▁Hello" stays (llama_detokenize does the same).
    assert tok.decode(ids) == " Hello world"
    assert tok.decode(ids, skip_special=False) == "<s> Hello world"
    assert tok.encode("", add_special=True) == [1] and tok.encode("", add_special=False) == []


def test_spm_known_lossy_cases():
    tok = fixture_tokenizer("llama-spm")
    assert tok.decode(tok.encode("a\u2581b", add_special=False)) == "a b"   # U+2581 is SPM's space
    tiny = Tokenizer.from_metadata(_tiny_meta())
    assert tiny.decode(tiny.encode("ab", add_special=False)) == "a"         # "b" has no token: <unk>, not shown


def test_token_to_bytes():
    spm = fixture_tokenizer("llama-spm")
    assert spm.token_to_bytes(spm.token_id("<0x0A>")) == b"\n"
    assert spm.token_to_bytes(spm.token_id("\u2581")) == b" "
    assert spm.token_to_bytes(spm.token_id("\u2581Hello")) == b" Hello"
    assert spm.token_to_bytes(spm.bos_id) == b"" and spm.token_to_bytes(spm.bos_id, special=True) == b"<s>"
    assert spm.is_control(spm.bos_id) and not spm.is_control(spm.token_id("\u2581Hello"))
    gpt2 = fixture_tokenizer("gpt-2")
    assert gpt2.token_to_bytes(gpt2.token_id("\u0120the")) == b" the"   # Ġ is the byte-level space
    assert gpt2.token_to_bytes(gpt2.token_id("\u010a")) == b"\n"        # Ċ is the byte-level newline
    with pytest.raises(CamelidError, match="outside this vocabulary"):
        gpt2.token_to_bytes(gpt2.n_vocab)


# -- special tokens ---------------------------------------------------------------------------------


def test_special_tokens_smollm2():
    tok = model_tokenizer("smollm2")
    start, end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    assert (start, end) == (1, 2)
    text = "<|im_start|>user\nhi<|im_end|>"
    parsed = tok.encode(text, add_special=False, parse_special=True)
    assert parsed[0] == start and parsed[-1] == end and parsed[1:-1] == tok.encode("user\nhi", add_special=False)
    plain = tok.encode(text, add_special=False, parse_special=False)
    assert start not in plain and end not in plain and len(plain) > len(parsed)
    assert tok.decode(parsed) == "user\nhi" and tok.decode(parsed, skip_special=False) == text
    assert tok.decode(plain) == text
    assert end in tok.eog_ids and tok.eos_id in tok.eog_ids and tok.token_id("<|endoftext|>") in tok.eog_ids
    assert tok.eot_id == end and not tok.add_bos and tok.encode("hi") == tok.encode("hi", add_special=False)


def test_special_tokens_qwen2_vocab():
    tok = fixture_tokenizer("qwen2")
    ids = tok.encode("<|im_start|>system\nYou are helpful<|im_end|>\n", parse_special=True)
    assert ids[0] == tok.token_id("<|im_start|>") == 151644 and tok.token_id("<|im_end|>") in ids
    assert tok.token_id("<|im_end|>") in tok.eog_ids and tok.eos_id in tok.eog_ids
    assert 151644 not in tok.encode("<|im_start|>", parse_special=False)


def test_gemma_tokenizer():
    tok = model_tokenizer("gemma")
    assert tok.n_vocab == 262144 and tok.model == "llama" and tok.add_bos and not tok.add_space_prefix
    assert {tok.eos_id, tok.token_id("<end_of_turn>")} <= tok.eog_ids
    ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>\n", parse_special=True)
    assert ids[:2] == [tok.bos_id, tok.token_id("<start_of_turn>")]
    for text in HARD_STRINGS:
        assert tok.decode(tok.encode(text)) == text


# -- errors -------------------------------------------------------------------------------------------


def _tiny_meta(**overrides):
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "\u2581", "a"],
            "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0], "tokenizer.ggml.token_type": [2, 3, 3, 1, 1]}
    meta.update(overrides)
    return meta


def test_unknown_tokenizer_model_raises():
    with pytest.raises(CamelidError, match="'bert'.*'llama'"):
        Tokenizer.from_metadata(_tiny_meta(**{"tokenizer.ggml.model": "bert"}))
    meta = _tiny_meta()
    del meta["tokenizer.ggml.model"]
    with pytest.raises(CamelidError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata(meta)
    with pytest.raises(CamelidError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_metadata(_tiny_meta(**{"tokenizer.ggml.tokens": []}))
    with pytest.raises(CamelidError):
        load_tokenizer(VOCAB_DIR / "no-such-file.gguf")


def test_tiny_spm_vocab_and_unknown_fallback():
    tok = Tokenizer.from_metadata(_tiny_meta())
    # "b" has neither a token nor a byte token: llama.cpp falls back to the unknown token
    assert tok.encode("a b") == [1, 3, 4, 3, 0]
    assert tok.decode([1, 3, 4]) == " a"


def test_unknown_pre_tokenizer_falls_back_with_warning():
    meta = dict(read_metadata(VOCAB_DIR / "ggml-vocab-gpt-2.gguf"))
    meta["tokenizer.ggml.pre"] = "no-such-pre"
    with pytest.warns(UserWarning, match="no-such-pre"):
        tok = Tokenizer.from_metadata(meta)
    assert tok.pre == "default" and tok.decode(tok.encode("Hello, world 123")) == "Hello, world 123"


# -- llama.cpp itself as the oracle ---------------------------------------------------------------------

ORACLE_STRINGS = HARD_STRINGS + [
    "Hello world", " Hello", "   leading spaces", "trailing   ", "\n\n\nnewlines\n", "\t\ttabs\t", "",
    " ", "  ", "我想在apple工作1314151天～", "1234567890 3.14159 1e-9 2024-01-01", "don't I'll we've THEY'RE",
    "def f(x):\n    return x ** 2  # comment\n", "```python\nprint('hi')\n```\n", "<html><body>&amp;</body></html>",
    "   \n  \r\n \u00a0 \u3000 x", "a" * 200, " " * 40, "\x00\x01\x1f control", "ﬁ ligature Ⅻ ½",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<start_of_turn>user\nhi<end_of_turn>\n",
    "<s>hi</s>", "<bos>text<eos>", "x<|endoftext|>y", "<unused0> [multimodal] <mask>", "a\u2581b \u2581",
]


def _oracle_path(which: str) -> Path:
    return {"smollm2": smollm2_path, "gemma": gemma_path}.get(
        which, lambda: VOCAB_DIR / f"ggml-vocab-{which}.gguf")()


@pytest.mark.parametrize("which", ["smollm2", "gemma", *VOCABS])
def test_encode_matches_llama_cpp(which):
    path = _oracle_path(which)
    tok = model_tokenizer(which) if which in ("smollm2", "gemma") else fixture_tokenizer(which)
    vocab = oracle.Llama(path, vocab_only=True)
    mismatches = []
    for text in ORACLE_STRINGS:
        for add_special in (False, True):
            for parse_special in (False, True):
                expected = vocab.tokenize(text, add_bos=add_special, special=parse_special)
                got = tok.encode(text, add_special=add_special, parse_special=parse_special)
                if got != expected:
                    mismatches.append((text, add_special, parse_special, got, expected))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]}"
    assert set(tok.eog_ids) == vocab.eog_ids
    assert tok.add_bos == vocab.add_bos


@pytest.mark.parametrize("which", ["smollm2", "gemma", "llama-spm", "qwen2"])
def test_decode_matches_llama_cpp(which):
    # llama_detokenize(remove_special=false, unparse_special=special). Vocabularies where llama.cpp
    # also runs its lossy "clean_up_tokenization_spaces" pass (gpt-2, llama-bpe) are not compared:
    # camelid's decode deliberately skips that pass, so decode(encode(text)) == text.
    tok = model_tokenizer(which) if which in ("smollm2", "gemma") else fixture_tokenizer(which)
    vocab = oracle.Llama(_oracle_path(which), vocab_only=True)
    for text in ORACLE_STRINGS:
        ids = tok.encode(text, add_special=True, parse_special=True)
        for special in (False, True):
            assert tok.decode_bytes(ids, skip_special=not special) == vocab.detokenize(ids, unparse_special=special), (text, special)


def test_streaming_continuation_keeps_first_space_and_drops_cut_character():
    # Generated tokens continue a prompt: "▁Paris" after "The capital of France is" prints " Paris",
    # as llama.cpp's token-by-token output does; only a text's very first token loses its space.
    tok = fixture_tokenizer("llama-spm")
    ids = tok.encode(" Paris 你好", add_special=False)
    detok = StreamingDetokenizer(tok, continuation=True)
    assert "".join(detok.add_token(i) for i in ids) + detok.finalize() == " " + tok.decode(ids)
    # A generation cut off inside a character (token limit) ends without a U+FFFD.
    detok = StreamingDetokenizer(tok, continuation=True)
    cut = tok.encode("🦙", add_special=False)
    assert tok.token_to_bytes(cut[-1]) == b"\x99", "the llama is four byte-fallback tokens in this vocabulary"
    assert "".join(detok.add_token(i) for i in cut[:-1]) == " "
    assert detok.finalize(drop_incomplete=True) == ""
