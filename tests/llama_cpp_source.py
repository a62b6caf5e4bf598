"""The pre-tokenizer table of llama.cpp, read from the text of its src/llama-vocab.cpp.

Used by the check that camelid's table names every tokenizer.ggml.pre of the oracle's llama.cpp with
the same regexes and flags. `pre_tokenizers(src)` maps each name to its LLAMA_VOCAB_PRE_TYPE_*, the
flags the name sets and the type's regex_exprs.
"""

from __future__ import annotations

import re

_ESCAPES = {"\\": "\\", '"': '"', "r": "\r", "n": "\n", "t": "\t", "'": "'"}
_FLAGS = ("ignore_merges", "add_bos", "clean_spaces", "escape_whitespaces")


def _c_string(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES[m.group(1)], body)


def _type_regexes(src: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    """LLAMA_VOCAB_PRE_TYPE_* suffix -> (regex_exprs, byte_encode), "DEFAULT" for the default branch."""
    start = src.index("llm_tokenizer_bpe(const llama_vocab & vocab) {")
    body = src[start:src.index("std::vector<std::string> regex_exprs;", start)]
    types = {}
    for chunk in re.split(r"\n\s*break;", body):
        cases = re.findall(r"case LLAMA_VOCAB_PRE_TYPE_(\w+):", chunk) or (["DEFAULT"] if "default:" in chunk else [])
        block = re.search(r"regex_exprs = \{(.*?)\n\s*\};", chunk, re.S)
        if not block:
            continue
        exprs = tuple(_c_string(m.group(1)) for line in block.group(1).split("\n")
                      if (m := re.match(r'\s*"((?:[^"\\]|\\.)*)"', line)))
        for case in cases:
            types[case] = (exprs, "byte_encode = false" not in chunk)
    return types


def pre_tokenizers(src: str) -> dict[str, dict]:
    """src/llama-vocab.cpp's text -> {tokenizer.ggml.pre name: {"type", "regexes", "byte_encode",
    "has_bos", and each of _FLAGS}}."""
    types = _type_regexes(src)
    start = src.index('} else if (tokenizer_pre == "default") {')
    chain = src[start:src.index("unknown pre-tokenizer type", start)]
    names = {}
    for block in re.split(r"\} else if \(", chain)[1:]:
        pre_type = re.search(r"pre_type = LLAMA_VOCAB_PRE_TYPE_(\w+);", block).group(1)
        flags = dict(re.findall(r"\n\s*(\w+) = (true|false);", block))
        regexes, byte_encode = types[pre_type]
        entry = {"type": pre_type, "regexes": regexes, "byte_encode": byte_encode,
                 "has_bos": "special_bos_id = LLAMA_TOKEN_NULL" not in block}
        entry.update({f: flags.get(f, "true" if f == "clean_spaces" else "false") == "true" for f in _FLAGS})
        for name in re.findall(r'tokenizer_pre == "([^"]+)"', block):
            names[name] = entry
    return names
