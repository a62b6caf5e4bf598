"""The pre-tokenizer regexes of llama.cpp, verbatim, one tuple per LLAMA_VOCAB_PRE_TYPE_*.

Each tuple is a type's `regex_exprs` from llama.cpp's llm_tokenizer_bpe (src/llama-vocab.cpp, as
vendored in llama-cpp-python 0.3.36), copied character for character so the two can be compared
(non-ASCII characters are written as escapes). They are llama.cpp's patterns, not Python's:
`camelid.tokenizer.pretokenize.Splitter` runs them the way llama.cpp's unicode_regex_split does,
including the few patterns llama.cpp replaces by hand-written splitters.
"""

from __future__ import annotations

CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
# Upper/lower-case runs: (?=[\p{L}])([^a-z]) is "a letter that is not a-z", llama.cpp's stand-in for \p{Lu}.
_UPPER = "((?=[\\p{L}])([^a-z]))"
_LOWER = "((?=[\\p{L}])([^A-Z]))"
_TAIL = "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
_TAIL_SLASH = "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
# DeepSeek-V3 / AFMoE word pattern: punctuation glued to a following ASCII word, letters with their marks.
_PUNCT_WORD = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
# Cohere-style words: \p{Lu}-like runs then \p{Ll}-like runs (llama.cpp reads \p{Lu} etc. as \p{L}).
_CASED_WORDS = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+" + CONTRACTIONS
                + "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
                + CONTRACTIONS + "?|\\p{N}")
_CJK_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
_NEWLINE_RUNS = "[^\\n]+|[\\n]+"

GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
LLAMA3 = CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" + _TAIL
QWEN2 = CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" + _TAIL

DEFAULT = ("[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2, "\\p{N}+", "[0-9][0-9][0-9]")
TYPE_LLAMA3 = (LLAMA3,)
TYPE_JAIS2 = (CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
              "|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)"
              "|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}",)
TYPE_DEEPSEEK_LLM = (
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    _CJK_HANGUL,
    "\\p{N}+",
)
TYPE_DEEPSEEK3_LLM = ("\\p{N}{1,3}", _CJK_KANA, _PUNCT_WORD + "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
TYPE_SPARK2_5 = ("\\p{N}{1,3}", _CJK_KANA, _PUNCT_WORD + "| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+", "\\p{N}")
TYPE_YOUTU = (
    "[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f"
    "\ufe30-\ufe4f]+|[\u3105-\u312f]+|" + _CJK_KANA,
    _CASED_WORDS + _TAIL_SLASH,
)
TYPE_DEEPSEEK_CODER = ("[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", _CJK_HANGUL, "\\p{N}")
TYPE_FALCON = ("[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2, "[0-9][0-9][0-9]")
TYPE_STARCODER = ("\\p{N}", GPT2)
TYPE_GPT2 = (GPT2,)
TYPE_QWEN2 = (QWEN2,)
TYPE_QWEN35 = (CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",)
TYPE_BLOOM = (_BLOOM,)
TYPE_VIKING = (_BLOOM, "\\p{N}")
TYPE_TEKKEN = ("[^\\r\\n\\p{L}\\p{N}]?" + _UPPER + "*" + _LOWER + "+|[^\\r\\n\\p{L}\\p{N}]?" + _UPPER + "+" + _LOWER
               + "*|\\p{N}" + _TAIL_SLASH,)
TYPE_CHAMELEON = ("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
                  "[\\p{P}!-/:-@\\[-`{-~]", GPT2)
TYPE_GPT4O = ("[^\\r\\n\\p{L}\\p{N}]?" + _UPPER + "*" + _LOWER + "+" + CONTRACTIONS + "?|[^\\r\\n\\p{L}\\p{N}]?" + _UPPER
              + "+" + _LOWER + "*" + CONTRACTIONS + "?|\\p{N}{1,3}" + _TAIL_SLASH,)
TYPE_GRANITE_EMB_MULTI = (
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))*((?=[\\p{L}\\p{M}])([^A-Z]))+" + CONTRACTIONS
    + "?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))+((?=[\\p{L}\\p{M}])([^A-Z]))*" + CONTRACTIONS
    + "?|\\p{N}{1,3}" + _TAIL_SLASH,)
TYPE_TINY_AYA = ("\\d{1,3}(?=(?:\\d{3})*\\b)", _CASED_WORDS.replace("|\\p{N}", "|\\p{N}{1,3}") + _TAIL_SLASH)
TYPE_KIMI_K2 = ("\\p{Han}+",)
TYPE_SUPERBPE = ("\\p{N}+", "(?=(\\d{3})+(?!\\d))")
TYPE_BAILINGMOE = ("'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
                   "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",)
TYPE_SEED_CODER = (CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+"
                   "|\\s+(?!\\S)|\\s+",)
TYPE_UFAKZEKA = ("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" + _TAIL,)
TYPE_AFMOE = (
    "\\p{AFMoE_digits}",
    "[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf\u0e40-\u0e7f"
    "\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+",
    _PUNCT_WORD.replace("\r\n", "\\r\\n") + "| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
TYPE_LAGUNA = (_NEWLINE_RUNS, QWEN2)
TYPE_EXAONE_MOE = (CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}"
                   "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",)
TYPE_GEMMA4 = (_NEWLINE_RUNS,)
TYPE_MINICPM5 = ("\\p{N}{1,3}", CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+" + _TAIL)
TYPE_WHITESPACE = ("\\S+",)
