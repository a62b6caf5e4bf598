"""Tokenizer files of a Hugging Face / Meta checkpoint -> GGUF tokenizer metadata, as llama.cpp expects it.

- `tokenizer.model` (SentencePiece): read with a small protobuf parser (no sentencepiece package
  needed); tokenizer.ggml.model "llama" with each piece's score and type (NORMAL, UNKNOWN, CONTROL,
  USER_DEFINED, UNUSED, BYTE), plus added_tokens.json and tokenizer_config.json's added tokens.
- `tokenizer.json` (byte-level BPE): tokenizer.ggml.model "gpt2" with merges, and tokenizer.ggml.pre
  recognised from the pre-tokenizer's structure (LLaMA-3, Qwen2, SmolLM/StarCoder, GPT-2).
- Special token ids, add_bos/add_eos and the chat template from tokenizer_config.json,
  special_tokens_map.json, config.json and chat_template.jinja.
The vocabulary is padded with [PADi] tokens up to the embedding's row count, as llama.cpp does.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf.constants import GGUFValueType as V

from camelid.errors import CamelidError
from camelid.formats.gguf_writer import MetadataValue

# Split regexes of tokenizer.json pre-tokenizers, as Hugging Face writes them -> llama.cpp's tokenizer.ggml.pre.
_SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}

# GGUF tokenizer.ggml.token_type values (the same numbers as SentencePiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class SpmModel:
    """What llama.cpp needs from a SentencePiece ModelProto."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (text, score, type)
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    add_dummy_prefix: bool = True


def _fields(buf: bytes, what: str):
    """Yield (field number, wire type, value) of one protobuf message; value is int or bytes."""
    pos, n = 0, len(buf)

    def varint():
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= n:
                raise CamelidError(f"{what} is truncated or not a SentencePiece model.")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while pos < n:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length = varint()
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise CamelidError(f"{what} is not a SentencePiece model (protobuf wire type {wire}).")
        if pos > n:
            raise CamelidError(f"{what} is truncated or not a SentencePiece model.")
        yield number, wire, value


def _int32(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def read_sentencepiece(path: Path) -> SpmModel:
    """Parse tokenizer.model: ModelProto {1: pieces {1: piece, 2: score, 3: type}, 2: trainer_spec, 3: normalizer_spec}."""
    model = SpmModel()
    buf = path.read_bytes()
    for number, wire, value in _fields(buf, str(path)):
        if number == 1 and wire == 2:
            text, score, kind = "", 0.0, NORMAL
            for n, w, v in _fields(value, str(path)):
                if n == 1 and w == 2:
                    text = v.decode("utf-8", "replace")
                elif n == 2 and w == 5:
                    (score,) = struct.unpack("<f", v)
                elif n == 3 and w == 0:
                    kind = v
            model.pieces.append((text, score, kind))
        elif number == 2 and wire == 2:  # TrainerSpec: unk_id 40, bos_id 41, eos_id 42, pad_id 43
            for n, w, v in _fields(value, str(path)):
                if w == 0 and n in (40, 41, 42, 43):
                    setattr(model, {40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}[n], _int32(v))
        elif number == 3 and wire == 2:  # NormalizerSpec: add_dummy_prefix 3
            for n, w, v in _fields(value, str(path)):
                if n == 3 and w == 0:
                    model.add_dummy_prefix = bool(v)
    if not model.pieces:
        raise CamelidError(f"{path} has no pieces; it is not a SentencePiece model.")
    return model


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CamelidError(f"{path} is not valid JSON ({exc}).") from None
    return data if isinstance(data, dict) else {}


def _pad(tokens: list[str], scores: list[float], types: list[int], n_vocab: int) -> None:
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(UNUSED)


def _spm_vocab(d: Path, n_vocab: int, tok_config: dict) -> tuple[dict[str, MetadataValue], dict[str, int]]:
    spm = read_sentencepiece(d / "tokenizer.model")
    if len(spm.pieces) > n_vocab:
        raise CamelidError(f"{d / 'tokenizer.model'} has {len(spm.pieces)} pieces but the model's embedding has only "
                           f"{n_vocab} rows; the tokenizer belongs to another model.")
    tokens = [p[0] for p in spm.pieces]
    scores = [p[1] for p in spm.pieces]
    types = [p[2] for p in spm.pieces]
    _pad(tokens, scores, types, n_vocab)
    added: dict[int, tuple[str, int]] = {}
    for text, i in _read_json(d / "added_tokens.json").items():
        if isinstance(i, int) and 0 <= i < n_vocab:
            added[i] = (text, USER_DEFINED)
    for i, info in (tok_config.get("added_tokens_decoder") or {}).items():
        i = int(i)
        if 0 <= i < n_vocab and isinstance(info, dict) and "content" in info:
            special = info.get("special") or (info["content"].startswith("<") and info["content"].endswith(">"))
            added[i] = (info["content"] if special else info["content"].replace("\u2581", " "), CONTROL if special else USER_DEFINED)
    for i, (text, kind) in added.items():
        if i < len(spm.pieces) and tokens[i] == text:
            continue  # a piece of the model itself keeps its score and type
        tokens[i], scores[i], types[i] = text, -1000.0, kind
    md = {
        "tokenizer.ggml.model": MetadataValue("llama", V.STRING),
        "tokenizer.ggml.pre": MetadataValue("default", V.STRING),
        "tokenizer.ggml.tokens": MetadataValue(tokens, V.ARRAY, V.STRING),
        "tokenizer.ggml.scores": MetadataValue(scores, V.ARRAY, V.FLOAT32),
        "tokenizer.ggml.token_type": MetadataValue(types, V.ARRAY, V.INT32),
        "tokenizer.ggml.add_space_prefix": MetadataValue(bool(tok_config.get("add_prefix_space", spm.add_dummy_prefix)), V.BOOL),
    }
    ids = {name: i for name, i in (("unk", spm.unk_id), ("bos", spm.bos_id), ("eos", spm.eos_id), ("pad", spm.pad_id))
           if 0 <= i < n_vocab}
    return md, ids


def _split_regex(pre: dict) -> str | None:
    pattern = pre.get("pattern") or {}
    return pattern.get("Regex") if isinstance(pattern, dict) else None


def detect_bpe_pre(tokenizer: dict) -> str:
    """llama.cpp's tokenizer.ggml.pre name for a tokenizer.json's pre-tokenizer, or CamelidError."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and _split_regex(steps[0]) in _SPLIT_REGEXES:
        return _SPLIT_REGEXES[_split_regex(steps[0])]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    raise CamelidError(f"tokenizer.json uses a pre-tokenizer camelid does not recognise ({' + '.join(map(str, kinds))}); "
                       "supported: LLaMA-3, Qwen2, SmolLM/StarCoder and GPT-2 style byte-level BPE.")


def _bpe_vocab(d: Path, n_vocab: int) -> tuple[dict[str, MetadataValue], dict[str, int], dict]:
    tokenizer = _read_json(d / "tokenizer.json")
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise CamelidError(f"{d / 'tokenizer.json'} is a {model.get('type')} tokenizer; camelid converts BPE "
                           "tokenizer.json files or SentencePiece tokenizer.model files.")
    vocab: dict[str, int] = model.get("vocab") or {}
    added = {t["id"]: t for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict) and "id" in t}
    top = max([*vocab.values(), *added]) + 1 if vocab or added else 0
    if top > n_vocab:
        raise CamelidError(f"{d / 'tokenizer.json'} has token ids up to {top - 1} but the model's embedding has only "
                           f"{n_vocab} rows; the tokenizer belongs to another model.")
    tokens: list[str | None] = [None] * n_vocab
    types = [NORMAL] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = CONTROL if t.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    md = {
        "tokenizer.ggml.model": MetadataValue("gpt2", V.STRING),
        "tokenizer.ggml.pre": MetadataValue(detect_bpe_pre(tokenizer), V.STRING),
        "tokenizer.ggml.tokens": MetadataValue(tokens, V.ARRAY, V.STRING),
        "tokenizer.ggml.token_type": MetadataValue(types, V.ARRAY, V.INT32),
        "tokenizer.ggml.merges": MetadataValue(merges, V.ARRAY, V.STRING),
    }
    return md, {}, tokenizer


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(d: Path, tok_config: dict) -> str | None:
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def vocab_metadata(tokenizer_dir: Path, n_vocab: int, config: dict) -> dict[str, MetadataValue]:
    """GGUF tokenizer.* metadata for the tokenizer files in `tokenizer_dir`, padded to `n_vocab` tokens.

    Prefers tokenizer.model (SentencePiece) when present, else tokenizer.json (BPE). Raises
    CamelidError when there is neither or they do not fit a model with `n_vocab` embedding rows.
    """
    d = Path(tokenizer_dir)
    tok_config = _read_json(d / "tokenizer_config.json")
    tokenizer_json: dict = {}
    if (d / "tokenizer.model").is_file():
        md, ids = _spm_vocab(d, n_vocab, tok_config)
    elif (d / "tokenizer.json").is_file():
        md, ids, tokenizer_json = _bpe_vocab(d, n_vocab)
    else:
        raise CamelidError(f"no tokenizer in {d}: expected tokenizer.model (SentencePiece) or tokenizer.json (BPE).")
    tokens: list[str] = md["tokenizer.ggml.tokens"].value
    first_id = {}
    for i, t in enumerate(tokens):
        first_id.setdefault(t, i)
    for name in ("bos", "eos", "unk", "pad"):
        value = config.get(f"{name}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < n_vocab:
            ids[name] = value
    special_map = _read_json(d / "special_tokens_map.json")
    for name in ("bos", "eos", "unk", "pad"):
        text = _token_text(tok_config.get(f"{name}_token")) or _token_text(special_map.get(f"{name}_token"))
        if text is not None and text in first_id:
            ids[name] = first_id[text]
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    for name, i in ids.items():
        md[f"tokenizer.ggml.{keys[name]}"] = MetadataValue(i, V.UINT32)
    add_bos = tok_config.get("add_bos_token")
    if add_bos is None and tokenizer_json:
        single = ((tokenizer_json.get("post_processor") or {}).get("single") or [])
        first = single[0].get("SpecialToken", {}).get("id") if single and isinstance(single[0], dict) else None
        if first is not None:
            add_bos = first_id.get(first) == ids.get("bos")
    if isinstance(add_bos, bool):
        md["tokenizer.ggml.add_bos_token"] = MetadataValue(add_bos, V.BOOL)
    if isinstance(tok_config.get("add_eos_token"), bool):
        md["tokenizer.ggml.add_eos_token"] = MetadataValue(tok_config["add_eos_token"], V.BOOL)
    template = _chat_template(d, tok_config)
    if template:
        md["tokenizer.chat_template"] = MetadataValue(template, V.STRING)
    return md
