"""camelid.formats.metadata: typed reads of metadata, and messages that name the key, the expectation and the find."""

from __future__ import annotations

import math

import pytest

from camelid.errors import CamelidError
from camelid.formats.metadata import MAX_SIZE, MetadataReader, describe, shown

META = {"llama.block_count": 2, "llama.rope.freq_base": 10000.0, "llama.flag": True, "general.name": "tiny",
        "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.scores": [0.0, -1], "tokenizer.ggml.bos_token_id": 1}


def refusal(call) -> str:
    with pytest.raises(CamelidError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and message.startswith("model.gguf: ")
    return message


def test_values_of_the_expected_type_are_returned():
    read = MetadataReader(META, "model.gguf", prefix="llama.")
    assert read.size("block_count") == 2
    assert read.number("rope.freq_base") == 10000.0 and read.number("block_count") == 2.0
    assert read.boolean("flag") is True
    plain = MetadataReader(META, "model.gguf")
    assert plain.string("general.name") == "tiny"
    assert plain.array("tokenizer.ggml.tokens", "text") == ["a", "b"]
    assert plain.array("tokenizer.ggml.scores", "number") == [0.0, -1]


def test_absent_keys_give_the_default_or_name_the_missing_key():
    read = MetadataReader(META, "model.gguf", prefix="llama.")
    assert read.size("context_length", 2048) == 2048
    assert read.integer("attention.key_length", None) is None
    assert "metadata key llama.embedding_length is missing" in refusal(lambda: read.size("embedding_length"))


@pytest.mark.parametrize("value, words", [
    (4.5, ("the number 4.5", "not a whole number")),
    ("16", ("the text '16'", "not a whole number")),
    (True, ("the boolean True", "not a whole number")),
    ([1, 2, 3], ("the list [1, 2, 3]", "not a whole number")),
    (list(range(300)), ("a list of 300 whole numbers", "not a whole number")),
    (0, ("is 0, outside 1..2147483647",)),
    (MAX_SIZE + 1, ("2147483648, outside 1..",)),
    (-4, ("is -4, outside",)),
])
def test_a_size_of_the_wrong_type_or_range_is_refused(value, words):
    message = refusal(lambda: MetadataReader({"llama.attention.head_count": value}, "model.gguf", "llama.").size("attention.head_count"))
    assert "llama.attention.head_count" in message and "Convert or download the model again" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "1e-5", None, [1.0]])
def test_a_number_must_be_finite_and_a_number(value):
    message = refusal(lambda: MetadataReader({"k": value}, "model.gguf").number("k"))
    assert "metadata key k is" in message and "not a finite number" in message


def test_strings_booleans_and_arrays_are_checked():
    read = MetadataReader({"s": 5, "b": 1, "a": "x", "t": ["x", 3, "y"]}, "model.gguf")
    assert "not a text" in refusal(lambda: read.string("s"))
    assert "the whole number 1, not true or false" in refusal(lambda: read.boolean("b"))
    assert "the text 'x', not a list of texts" in refusal(lambda: read.array("a", "text"))
    assert "item 1 is the whole number 3" in refusal(lambda: read.array("t", "text"))


def test_token_ids_out_of_range_are_ignored_and_of_the_wrong_type_refused():
    read = MetadataReader({"bos": 1, "eos": 99, "pad": -1, "unk": "0"}, "model.gguf")
    assert read.token_id("bos", 10) == 1
    assert read.token_id("eos", 10) is None and read.token_id("pad", 10) is None and read.token_id("none", 10) is None
    assert "metadata key unk is the text '0', not a whole number" in refusal(lambda: read.token_id("unk", 10))


def test_long_and_multiline_values_are_shortened_and_escaped():
    text = describe("line\n" * 1000)
    assert "\n" not in text and len(text) < 100
    assert describe(list(range(100000))) == "a list of 100000 whole numbers"
    assert describe(["a", 1]) == "the list ['a', 1]" and describe(["a", 1] * 50) == "a list of 100 mixed items"
    assert "\n" not in shown("a\nb") and len(shown("x" * 5000)) < 100
    assert "\n" not in refusal(lambda: MetadataReader({"k": "a\nb"}, "model.gguf").integer("k"))


def test_peek_never_raises():
    read = MetadataReader({"n": "16", "t": 3, "l": "x"})
    assert read.peek("n", "integer") is None and read.peek("t", "text") is None and read.peek("l", "list") is None
    assert read.peek("t", "integer") == 3 and read.peek("missing", "text") is None


def test_quantize_plans_with_typed_counts():
    """camelid quantize reads the layer and head counts through the reader too (int('abc') was a traceback)."""
    from camelid.tools.quantize import parse_file_type, plan_types

    meta = {"general.architecture": "llama", "llama.block_count": "abc"}
    with pytest.raises(CamelidError, match="llama.block_count is the text 'abc', not a whole number"):
        plan_types({}, meta, parse_file_type("q4_0"), "model.gguf")
