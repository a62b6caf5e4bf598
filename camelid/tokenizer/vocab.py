"""The vocabulary both tokenizer models share: token texts, scores, attributes, special ids.

Built from GGUF metadata the way llama.cpp's vocab loader does it, including its text-based
detection of end-of-turn / fill-in-the-middle tokens (which also marks them as control tokens) and the
set of end-of-generation ids. Also splits text around special tokens before a model sees it.
"""

from __future__ import annotations

from typing import Any

from camelid.errors import CamelidError
from camelid.formats.metadata import MetadataReader

# Token attributes, bit flags (llama.cpp's llama_token_attr values).
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5

# GGUF tokenizer.ggml.token_type -> attribute.
_TYPE_TO_ATTR = {0: ATTR_UNDEFINED, 1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL,
                 4: ATTR_USER_DEFINED, 5: ATTR_UNUSED, 6: ATTR_BYTE}

_K = "tokenizer.ggml."

# Token texts that identify a special role when the file has no id for it, in order of preference.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# Tokens that end generation wherever they appear in a vocabulary.
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")


class Vocab:
    """Token table of one model, with the special ids llama.cpp derives from the metadata.

    tokens[i] is the token text; attrs[i] its ATTR_* bits; scores[i] its SPM score (0.0 if absent);
    token_to_id maps text to the first id with that text. Special ids are None when absent. A
    tokenizer key of the wrong type raises CamelidError naming the file (path).
    """

    def __init__(self, meta: dict[str, Any], model: str, *, add_bos_default: bool, has_bos: bool = True,
                 path: str = "model"):
        read = MetadataReader(meta, path, prefix=_K)
        tokens = read.array("tokens", "text", None)
        if not tokens:
            raise CamelidError(f"{path}: the GGUF metadata has no tokenizer.ggml.tokens list; this file carries no vocabulary. "
                               "Use a model file converted with its tokenizer.")
        n = len(tokens)
        for i in [i for i, t in enumerate(tokens) if not t]:
            tokens[i] = f"[EMPTY_{i}]"
        self.tokens: list[str] = tokens
        self.n_vocab = n
        # Reversed so that for a duplicated text the first id wins.
        self.token_to_id: dict[str, int] = dict(zip(reversed(tokens), range(n - 1, -1, -1)))
        scores = read.array("scores", "number", None)
        self.scores: list[float] = [float(v) for v in scores[:n]] if scores is not None and len(scores) >= n else [0.0] * n
        types = read.array("token_type", "integer", None)
        if types is not None and len(types) >= n:
            get = _TYPE_TO_ATTR.get
            self.attrs: list[int] = [get(t, ATTR_UNDEFINED) for t in types[:n]]
        else:
            self.attrs = [ATTR_NORMAL] * n

        spm = model == "llama"
        ids: dict[str, int | None] = {
            "bos": 1 if spm else 11, "eos": 2 if spm else 11, "unk": 0 if spm else None,
            "eot": None, "eom": None, "pad": None,
            "fim_pre": None, "fim_suf": None, "fim_mid": None, "fim_pad": None, "fim_rep": None, "fim_sep": None,
        }
        if not has_bos:
            ids["bos"] = None
        for name in ids:
            if ids[name] is not None and ids[name] >= n:
                ids[name] = None
        keys = {"bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "eom": "eom_token_id",
                "unk": "unknown_token_id", "pad": "padding_token_id"}
        keys.update({f: f"{f}_token_id" for f in _FIM_TEXTS})
        for name, key in keys.items():
            value = read.token_id(key, n)
            if value is not None:
                ids[name] = value
        self._detect_by_text(ids)

        self.bos_id: int | None = ids["bos"]
        self.eos_id: int | None = ids["eos"]
        self.eot_id: int | None = ids["eot"]
        self.eom_id: int | None = ids["eom"]
        self.unk_id: int | None = ids["unk"]
        self.pad_id: int | None = ids["pad"]
        self.fim_ids: dict[str, int | None] = {f: ids[f] for f in _FIM_TEXTS}
        self.eog_ids: frozenset[int] = self._end_of_generation_ids(ids)

        self.add_bos = read.boolean("add_bos_token", add_bos_default)
        self.add_eos = read.boolean("add_eos_token", False)
        if self.add_bos and self.bos_id is None:
            raise CamelidError(f"{path}: the GGUF metadata says to add a BOS token (tokenizer.ggml.add_bos_token) but names "
                               "none (tokenizer.ggml.bos_token_id); the file's tokenizer metadata is incomplete.")
        if self.add_eos and self.eos_id is None:
            raise CamelidError(f"{path}: the GGUF metadata says to add an EOS token (tokenizer.ggml.add_eos_token) but names "
                               "none (tokenizer.ggml.eos_token_id); the file's tokenizer metadata is incomplete.")

        # Special tokens split out of text before tokenizing, longest (in UTF-8 bytes) first.
        special = [i for i, a in enumerate(self.attrs) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        special.sort(key=lambda i: -len(tokens[i].encode("utf-8", "surrogatepass")))
        self._special: list[tuple[int, str, bool]] = [
            (i, tokens[i], not self.attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN)) for i in special]

    def _mark_control(self, token_id: int) -> None:
        self.attrs[token_id] |= ATTR_CONTROL

    def _detect_by_text(self, ids: dict[str, int | None]) -> None:
        """Fill eot/eom/fim ids the file does not give from well-known token texts; mark them control."""
        lookup = self.token_to_id.get
        for name, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), *_FIM_TEXTS.items()):
            if ids[name] is not None:
                continue
            for text in texts:
                token_id = lookup(text)
                if token_id is not None:
                    ids[name] = token_id
                    self._mark_control(token_id)
                    break
        for token_id, attr in enumerate(self.attrs):
            if attr & ATTR_CONTROL and "unused" in self.tokens[token_id]:
                self.attrs[token_id] |= ATTR_UNUSED

    def _end_of_generation_ids(self, ids: dict[str, int | None]) -> frozenset[int]:
        eog = {ids[f] for f in ("fim_pad", "fim_rep", "fim_sep") if ids[f] is not None}
        for text in _EOG_TEXTS:
            token_id = self.token_to_id.get(text)
            if token_id is not None:
                eog.add(token_id)
                self._mark_control(token_id)
        eog.update(ids[f] for f in ("eos", "eot", "eom") if ids[f] is not None)
        texts = {self.tokens[i]: i for i in eog}
        # gpt-oss / solar-open: "<|end|>" ends a message, not the generation, when these exist.
        if "<|end|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts) and (
                "<|return|>" in texts or "<|flush|>" in texts):
            eog.discard(texts["<|end|>"])
            self.attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        if "<|tool_response>" in texts and "</s>" in texts:
            eog.discard(texts["</s>"])
            self.attrs[texts["</s>"]] = ATTR_NORMAL
        return frozenset(eog)

    def split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """Split text into plain-text fragments (str) and special token ids (int).

        User-defined tokens are always split out; control and unknown tokens only with
        parse_special. Longer tokens are matched first, each at every non-overlapping occurrence.
        """
        if not text:
            return []
        fragments: list[str | int] = [text]
        present = set(text)
        for token_id, token_text, always in self._special:
            if not (always or parse_special) or token_text[0] not in present or token_text not in text:
                continue
            out: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or token_text not in fragment:
                    out.append(fragment)
                    continue
                for k, part in enumerate(fragment.split(token_text)):
                    if k:
                        out.append(token_id)
                    if part:
                        out.append(part)
            fragments = out
        return fragments
