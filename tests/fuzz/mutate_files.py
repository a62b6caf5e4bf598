"""Seeded mutations of legacy ggml/ggjt files, safetensors files, PyTorch zip checkpoints and /load chat JSON.

Each `mutate_*(seed, rng)` returns the mutated file's bytes and a description of what changed. Structural
mutations edit the parsed seed (hyperparameters, vocabulary, tensor headers; safetensors' JSON header;
the pickle's opcodes and the zip's entries; the chat's fields); byte-level ones follow some of the time.
"""

from __future__ import annotations

import copy
import io
import json
import math
import pickletools
import random
import struct
import warnings
import zipfile

from fuzz import byte_ops as B
from fuzz.legacy_image import MAGICS, LegacyImage

def _pick(rng: random.Random, values: tuple):
    """rng.choice of a fresh copy: a value put into one case's file must never be edited by a later case."""
    return copy.deepcopy(rng.choice(values))


# ---- legacy ggml / ggmf / ggjt -------------------------------------------------------------------

LEGACY_TYPE_IDS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 30, 255, (1 << 32) - 1)
LEGACY_NAMES = (b"tok_embeddings.weight", b"norm.weight", b"output.weight", b"layers.0.attention.wq.weight",
                b"layers.1.attention.wq.weight", b"layers.99999999999.attention.wq.weight", b"layers.x.attention.wq.weight",
                b"rope.freqs", b"", b"\xff\xfe", b"layers.0.feed_forward.w1.weight", b"a\nb")


def _legacy_structural(image: LegacyImage, rng: random.Random) -> str:
    op = rng.choices(("hparam", "format", "vocab", "n_dims", "ne", "type", "name", "tensors", "data"),
                     (5, 1, 2, 1, 3, 2, 2, 1, 1))[0]
    if op == "hparam":
        i = rng.randrange(7)
        image.hparams[i] = rng.choice((image.hparams[i] + rng.choice((-1, 1)), B.interesting_int(rng)))
        return f"hparam {i}={image.hparams[i]}"
    if op == "format":
        image.fmt = rng.choice(tuple(MAGICS))
        image.version = rng.choice((0, 1, 2, 3, 4, 1 << 31))
        return f"format {image.fmt} v{image.version}"
    if op == "vocab" and image.vocab:
        i = rng.randrange(len(image.vocab))
        text, score = image.vocab[i]
        choice = rng.random()
        if choice < 0.3:
            del image.vocab[i:]
        elif choice < 0.6:
            image.vocab[i] = (rng.choice((b"", b"\xff", b" \xe2\x81\x87 ", b"\xe2\x96", b"x" * 70000)), score)
        else:
            image.vocab[i] = (text, B.interesting_float(rng))
        return f"vocab {i}"
    if not image.tensors:
        return "no tensors"
    t = rng.choice(image.tensors)
    if op == "n_dims":
        t.n_dims = rng.choice((0, 1, 2, 3, 4, 5, 1 << 31))
        return f"tensor {t.name!r} n_dims={t.n_dims}"
    if op == "ne":
        t.ne[rng.randrange(len(t.ne))] = B.interesting_int(rng)
        return f"tensor {t.name!r} ne={t.ne}"
    if op == "type":
        t.ggml_type = rng.choice(LEGACY_TYPE_IDS)
        return f"tensor {t.name!r} type={t.ggml_type}"
    if op == "name":
        if rng.random() < 0.2:
            t.name_len = B.interesting_int(rng)
            return f"tensor {t.name!r} name_len={t.name_len}"
        t.name = rng.choice(LEGACY_NAMES)
        return f"tensor renamed {t.name!r}"
    if op == "tensors":
        if rng.random() < 0.5:
            image.tensors.remove(t)
            return f"drop tensor {t.name!r}"
        image.tensors.insert(rng.randrange(len(image.tensors) + 1), copy.deepcopy(t))
        return f"duplicate tensor {t.name!r}"
    t.data = t.data[:rng.randrange(len(t.data) + 1)]
    return f"tensor {t.name!r} data cut to {len(t.data)}"


def mutate_legacy(seed: LegacyImage, rng: random.Random) -> tuple[bytes, str]:
    """A mutated copy of a legacy file image as bytes, and a description."""
    image = seed.copy()
    r = rng.random()
    steps = [_legacy_structural(image, rng) for _ in range(rng.choice((1, 1, 2, 3)))] if r < 0.85 else []
    data = image.to_bytes()
    if r >= 0.7:
        data, what = B.mutate_bytes(data, image.fields, rng, header_end=len(data))
        steps.append(what)
    return data, "; ".join(steps)


# ---- safetensors ---------------------------------------------------------------------------------

SAFETENSORS_DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "Q4", "",
                      "f32", None, 5, ["F32"])
_ODD_JSON = (None, True, 2.5, "4", [], {}, [[4]], -1, 1 << 64, 1e400, math.nan, "x" * 200)


def _odd_shape(rng: random.Random, shape: list) -> object:
    choice = rng.random()
    if choice < 0.4 and isinstance(shape, list) and shape:
        shape = list(shape)
        shape[rng.randrange(len(shape))] = rng.choice((0, -1, -4, 1 << 31, 1 << 40, (1 << 63) - 1, 1 << 64, 2.0, "4", None))
        return shape
    if choice < 0.6:
        return _pick(rng, ([], [0], [1 << 32, 1 << 32], [1] * 40, [1 << 62, 4], [2, 2, 2, 2, 2, 2]))
    return _pick(rng, _ODD_JSON)


def _safetensors_structural(header: dict, rng: random.Random) -> str:
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names) if names else None
    op = rng.choices(("dtype", "shape", "offsets", "entry", "metadata", "header", "add"), (3, 4, 4, 2, 1, 1, 1))[0]
    info = header.get(name) if name is not None else None
    if op in ("dtype", "shape", "offsets", "entry") and not isinstance(info, dict):
        op = "header"
    if op == "dtype":
        info["dtype"] = rng.choice(SAFETENSORS_DTYPES)
        return f"{name} dtype={info['dtype']!r}"
    if op == "shape":
        info["shape"] = _odd_shape(rng, info.get("shape", []))
        return f"{name} shape={str(info['shape'])[:60]}"
    if op == "offsets":
        offsets = info.get("data_offsets")
        begin, end = offsets if isinstance(offsets, list) and len(offsets) == 2 and all(type(x) is int for x in offsets) else (0, 16)
        info["data_offsets"] = rng.choice(([end, begin], [begin, end + 1], [begin - 1, end], [begin, 1 << 40],
                                           [-8, end], [begin], [begin, end, end], [float(begin), float(end)],
                                           [str(begin), end], [begin + (1 << 64), end + (1 << 64)], None,
                                           [0, end - begin], [B.interesting_int(rng), B.interesting_int(rng)]))
        return f"{name} data_offsets={str(info['data_offsets'])[:60]}"
    if op == "entry":
        if rng.random() < 0.5:
            key = rng.choice(("dtype", "shape", "data_offsets"))
            info.pop(key, None)
            return f"{name} without {key}"
        header[name] = _pick(rng, _ODD_JSON)
        return f"{name} entry={str(header[name])[:40]}"
    if op == "metadata":
        header["__metadata__"] = rng.choice(({"format": 5}, {"format": ["pt"]}, [], "pt", None, {"a": {"b": 1}}))
        return f"__metadata__={header['__metadata__']!r}"
    if op == "add":
        header[rng.choice(("extra", name or "x", "model.layers.0.self_attn.q_proj.weight", "a\nb"))] = {
            "dtype": "F32", "shape": _odd_shape(rng, [2, 2]), "data_offsets": [0, 16]}
        return "added an entry"
    if rng.random() < 0.3:
        header.clear()
        return "header emptied"
    header.update({"": {}, "\u0000": []})
    return "header with odd entries"


def _json_text_mutation(text: bytes, rng: random.Random) -> tuple[bytes, str]:
    op = rng.choice(("nest", "digits", "utf8", "nan", "cut", "bom"))
    if op == "nest":
        depth = rng.choice((100, 5000, 200000))
        return b"[" * depth + b"]" * depth, f"json nested {depth}"
    if op == "digits":
        return text.replace(b"[", b"[" + b"7" * rng.choice((400, 5000, 100000)) + b",", 1), "json long integer"
    if op == "utf8":
        return text[:len(text) // 2] + b"\xff\xfe" + text[len(text) // 2:], "json invalid utf-8"
    if op == "nan":
        return text.replace(b"[", b"[NaN, Infinity, -Infinity, 1e999, ", 1), "json NaN literals"
    if op == "bom":
        return b"\xef\xbb\xbf" + text, "json BOM"
    return text[:rng.randrange(len(text) + 1)], "json cut"


def mutate_safetensors(seed: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A mutated safetensors file: its JSON header edited or replaced, its length field or bytes changed."""
    (n,) = struct.unpack_from("<Q", seed)
    header = json.loads(seed[8:8 + n])
    data = seed[8 + n:]
    r = rng.random()
    steps = []
    if r < 0.7:
        for _ in range(rng.choice((1, 1, 2))):
            steps.append(_safetensors_structural(header, rng))
    text = json.dumps(header, allow_nan=True).encode()
    if 0.7 <= r < 0.8:
        text, what = _json_text_mutation(text, rng)
        steps.append(what)
    out = struct.pack("<Q", len(text)) + text + data
    if r >= 0.8 or rng.random() < 0.1:
        out, what = B.mutate_bytes(out, [B.Field(0, 8, "length")], rng, header_end=8 + len(text))
        steps.append(what)
    return out, "; ".join(steps)


# ---- PyTorch zip checkpoints ---------------------------------------------------------------------

_PICKLE_STRINGS = ("FloatStorage", "HalfStorage", "BFloat16Storage", "QInt8Storage", "LongStorage", "storage",
                   "torch._utils", "_rebuild_tensor_v2", "_rebuild_parameter", "collections", "OrderedDict",
                   "os", "system", "builtins", "eval", "0", "1", "99", "../../etc/passwd", "", "cpu", "cuda:0", "a\nb")


def _mutate_pickle(pkl: bytes, rng: random.Random) -> tuple[bytes, str]:
    try:
        ops = list(pickletools.genops(pkl))
    except ValueError:  # already broken by an earlier mutation of this case
        ops = []
    if not ops:
        out = bytearray(pkl)
        what = B.flip_bits(out, rng)
        return bytes(out), f"pickle {what}"
    op, arg, pos = rng.choice(ops)
    end = next((p for _, _, p in ops if p > pos), len(pkl))
    choice = rng.random()
    if op.name in ("BININT1", "BININT2", "BININT") and choice < 0.7:
        fmt = {"BININT1": "<B", "BININT2": "<H", "BININT": "<i"}[op.name]
        return pkl[:pos + 1] + B.pack_scalar(fmt, B.interesting_int(rng)) + pkl[end:], f"pickle {op.name}@{pos}"
    if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8") and choice < 0.7:
        new = rng.choice(_PICKLE_STRINGS).encode()
        prefix = bytes([pkl[pos]]) + (bytes([len(new)]) if op.name == "SHORT_BINUNICODE" else struct.pack("<I", len(new)))
        return pkl[:pos] + prefix + new + pkl[end:], f"pickle string@{pos}={new!r}"
    if choice < 0.8:
        return pkl[:pos] + pkl[end:], f"pickle dropped {op.name}@{pos}"
    if choice < 0.9:
        return pkl[:pos] + bytes([rng.getrandbits(8)]) + pkl[pos + 1:], f"pickle opcode@{pos}"
    return pkl[:pos] + pkl[pos:end] * 2 + pkl[end:], f"pickle doubled {op.name}@{pos}"


def mutate_pytorch(seed: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A mutated torch.save zip: its data.pkl's opcodes, its entries, or its bytes."""
    with zipfile.ZipFile(io.BytesIO(seed)) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    r = rng.random()
    steps = []
    compress = {}
    if r < 0.7:
        for _ in range(rng.choice((1, 1, 2))):
            i = rng.randrange(len(entries))
            name, data = entries[i]
            if name.endswith("data.pkl") and rng.random() < 0.75:
                data, what = _mutate_pickle(data, rng)
                entries[i] = (name, data)
                steps.append(what)
                continue
            op = rng.choice(("cut", "drop", "rename", "deflate", "duplicate"))
            if op == "cut":
                entries[i] = (name, data[:rng.randrange(len(data) + 1)])
            elif op == "drop":
                del entries[i]
            elif op == "rename":
                entries[i] = (name.rsplit("/", 1)[0] + "/" + rng.choice(("7", "data.pkl", "../x", "byteorder")), data)
            elif op == "deflate":
                compress[name] = zipfile.ZIP_DEFLATED
            else:
                entries.append((name, data))
            steps.append(f"entry {name} {op}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a duplicated entry is the point
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name), data, compress_type=compress.get(name, zipfile.ZIP_STORED))
    out = buf.getvalue()
    if r >= 0.7:
        head = rng.choice((len(out), 200, len(out) - max(1, len(out) // 8)))
        out, what = B.mutate_bytes(out, [], rng, header_end=head)
        steps.append(what)
    return out, "; ".join(steps)


# ---- chat JSON (/load) ---------------------------------------------------------------------------

_CHAT_VALUES = (None, True, False, 0, -1, 1 << 70, 2.5, math.nan, math.inf, -math.inf, "", "0.5", "x" * 20000,
                [], {}, [1, 2], {"role": "user"}, 10 ** 400)


def _chat_structural(chat: dict, rng: random.Random) -> str:
    op = rng.choice(("top", "message", "messages", "sampling", "sampling", "drop", "version"))
    if op == "top":
        key = rng.choice(("system", "model", "max_tokens", "dropped_turns", "sampling", "messages", "extra"))
        chat[key] = _pick(rng, _CHAT_VALUES)
        return f"{key}={str(chat[key])[:30]}"
    if op == "message" and isinstance(chat.get("messages"), list) and chat["messages"]:
        m = rng.choice(chat["messages"])
        if isinstance(m, dict):
            key = rng.choice(("role", "content", "tool_calls"))
            m[key] = _pick(rng, _CHAT_VALUES + ("system", "assistant", "user", "tool"))
            return f"message {key}={str(m[key])[:30]}"
    if op == "messages" and isinstance(chat.get("messages"), list):
        ms = chat["messages"]
        choice = rng.random()
        if choice < 0.3 and ms:
            ms.pop(rng.randrange(len(ms)))
        elif choice < 0.6:
            ms.extend(copy.deepcopy(ms[:2]) * rng.choice((1, 10, 1000)))
        else:
            ms.insert(0, _pick(rng, _CHAT_VALUES))
        return f"messages -> {len(ms)}"
    if op == "sampling" and isinstance(chat.get("sampling"), dict):
        key = rng.choice(list(chat["sampling"]) + ["mirostat", "logit_bias"])
        chat["sampling"][key] = _pick(rng, _CHAT_VALUES + (0.0, 1.0, 1e-300, 2, -2, 40))
        return f"sampling {key}={str(chat['sampling'][key])[:30]}"
    if op == "drop":
        key = rng.choice(list(chat) or ["camelid_chat"])
        chat.pop(key, None)
        return f"drop {key}"
    chat["camelid_chat"] = rng.choice((0, 2, "1", 1.0, True, None, [1]))
    return f"camelid_chat={chat['camelid_chat']!r}"


def mutate_chat(seed: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A mutated /save file: fields of the wrong type or range, or broken JSON text."""
    chat = json.loads(seed)
    r = rng.random()
    steps = [_chat_structural(chat, rng) for _ in range(rng.choice((1, 1, 2)))] if r < 0.75 else []
    text = json.dumps(chat, ensure_ascii=rng.random() < 0.5, allow_nan=True).encode()
    if 0.75 <= r < 0.9:
        text, what = _json_text_mutation(text, rng)
        steps.append(what)
    elif r >= 0.9:
        text, what = B.mutate_bytes(text, [], rng)
        steps.append(what)
    return text, "; ".join(steps)
