"""Seeded mutations of GGUF files: metadata types and values, arrays, the tensor table, counts and bytes.

`mutate_gguf(seed, rng)` applies one to three structural mutations to the seed's image (a key's value
type, its value, an array's item type or length, a missing, duplicated or added key, a tensor's dims,
type, offset or name, the header's counts and version) and, some of the time, byte-level mutations
aimed at the header's numeric fields. It returns the file's bytes and a description of what changed.
"""

from __future__ import annotations

import copy
import random

from fuzz import byte_ops as B
from fuzz.gguf_image import ARRAY, BOOL, FLOAT_TYPES, INT64, INT_TYPES, KV, SCALAR_FORMATS, STRING, UINT32, GGUFImage

ARCH_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv", "attention.key_length", "attention.value_length",
             "attention.layer_norm_rms_epsilon", "rope.dimension_count", "rope.freq_base", "rope.scaling.type",
             "rope.scaling.factor", "rope.scale_linear", "vocab_size")
TOKENIZER_KEYS = ("model", "pre", "tokens", "scores", "token_type", "merges", "bos_token_id", "eos_token_id",
                  "eot_token_id", "eom_token_id", "unknown_token_id", "padding_token_id", "fim_pre_token_id",
                  "fim_suf_token_id", "fim_mid_token_id", "fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id",
                  "add_bos_token", "add_eos_token", "add_space_prefix")
GENERAL_KEYS = ("general.architecture", "general.alignment", "general.name", "general.file_type",
                "general.quantization_version", "tokenizer.chat_template")
# ggml type ids: valid ones (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, K-quants, I8.., BF16) and not
TYPE_IDS = (0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 25, 26, 27, 28, 30, 4, 5, 31, 39, 40, 255,
            1 << 31, (1 << 32) - 1)


def known_keys(arch: str) -> list[str]:
    return [f"{arch}.{k}" for k in ARCH_KEYS] + [f"tokenizer.ggml.{k}" for k in TOKENIZER_KEYS] + list(GENERAL_KEYS)


def random_value(rng: random.Random, vtype: int, depth: int = 0) -> tuple[object, int | None]:
    """A value of GGUF type vtype (and its array item type)."""
    if vtype in INT_TYPES:
        return B.interesting_int(rng), None
    if vtype in FLOAT_TYPES:
        return B.interesting_float(rng), None
    if vtype == BOOL:
        return rng.choice((0, 1, 2, 255)), None
    if vtype == STRING:
        return B.interesting_string(rng), None
    if vtype == ARRAY:
        item_type = rng.choice((STRING, UINT32, INT64, 6, BOOL, ARRAY) if depth < 2 else (STRING, UINT32))
        n = rng.choice((0, 1, 2, 5, 265, 266, 267, 300) if depth == 0 else (0, 1, 3))
        return [random_value(rng, item_type, depth + 1)[0] for _ in range(n)], item_type
    return 0, None


def _arch(image: GGUFImage) -> str:
    for kv in image.kvs:
        if kv.key == "general.architecture" and isinstance(kv.value, str):
            return kv.value
    return "llama"


def retype_kv(image: GGUFImage, rng: random.Random) -> str:
    kv = rng.choice(image.kvs)
    vtype = rng.choice(tuple(SCALAR_FORMATS) + (STRING, ARRAY, ARRAY, 13, 1 << 31))
    old = kv.vtype
    if vtype == ARRAY and old != ARRAY and rng.random() < 0.5:
        kv.value, kv.item_type = [kv.value], old  # the right value, wrapped in an array
    elif old == ARRAY and vtype != ARRAY and kv.value and rng.random() < 0.5:
        kv.value, kv.item_type = kv.value[0], None  # an array's first item, as a scalar
    elif vtype in INT_TYPES and old in INT_TYPES + FLOAT_TYPES and rng.random() < 0.5:
        kv.value = int(kv.value) if kv.value == kv.value and abs(kv.value) != float("inf") else 0
    elif vtype in INT_TYPES + FLOAT_TYPES and old == STRING and rng.random() < 0.3:
        kv.value = len(kv.value)
    elif vtype == STRING and old != ARRAY and rng.random() < 0.5:
        kv.value = str(kv.value)  # "16" where 16 belongs
    else:
        kv.value, kv.item_type = random_value(rng, vtype)
    kv.vtype = vtype
    return f"retype {kv.key}: {old}->{vtype}"


def revalue_kv(image: GGUFImage, rng: random.Random) -> str:
    kv = rng.choice(image.kvs)
    if kv.vtype == ARRAY:
        return reshape_array(kv, rng)
    kv.value, _ = random_value(rng, kv.vtype)
    return f"value {kv.key}={str(kv.value)[:40]!r}"


def reshape_array(kv: KV, rng: random.Random) -> str:
    items = list(kv.value)
    op = rng.choice(("truncate", "extend", "item", "item_type", "nest", "empty"))
    if op == "truncate" and items:
        items = items[:rng.randrange(len(items))]
    elif op == "extend":
        items += [random_value(rng, kv.item_type if kv.item_type is not None else STRING)[0] for _ in range(rng.choice((1, 5, 40)))]
    elif op == "item" and items:
        at = rng.randrange(len(items))
        items[at] = random_value(rng, kv.item_type if kv.item_type is not None else STRING)[0]
    elif op == "item_type":
        new = rng.choice(tuple(SCALAR_FORMATS) + (STRING, ARRAY))
        if new == STRING:
            items = [str(v) for v in items]
        elif new == ARRAY:
            items = [[v] for v in items]
        elif new != BOOL:
            items = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else len(str(v)) for v in items]
        else:
            items = [1 if v else 0 for v in items]
        kv.item_type = new
    elif op == "nest":
        items = [items]
        kv.item_type = ARRAY
    else:
        items = []
    kv.value = items
    return f"array {kv.key} {op} -> {len(items)} x {kv.item_type}"


def drop_kv(image: GGUFImage, rng: random.Random) -> str:
    kv = image.kvs.pop(rng.randrange(len(image.kvs)))
    return f"drop {kv.key}"


def duplicate_kv(image: GGUFImage, rng: random.Random) -> str:
    kv = copy.deepcopy(rng.choice(image.kvs))
    if rng.random() < 0.5:
        kv.vtype = rng.choice(tuple(SCALAR_FORMATS) + (STRING,))
        kv.value, kv.item_type = random_value(rng, kv.vtype)
    image.kvs.insert(rng.randrange(len(image.kvs) + 1), kv)
    return f"duplicate {kv.key} as {kv.vtype}"


def add_kv(image: GGUFImage, rng: random.Random) -> str:
    key = rng.choice(known_keys(_arch(image)))
    vtype = rng.choice(tuple(SCALAR_FORMATS) + (STRING, ARRAY, UINT32, UINT32, STRING))
    value, item_type = random_value(rng, vtype)
    image.kvs = [kv for kv in image.kvs if kv.key != key] + [KV(key, vtype, value, item_type)]
    return f"set {key} as {vtype}={str(value)[:40]!r}"


def change_arch(image: GGUFImage, rng: random.Random) -> str:
    """Another architecture name; each of the old architecture's keys moves to the new name half the time."""
    old, new = _arch(image), rng.choice(("qwen2", "llama", "gemma", "", "qwen3", "gemma3", "phi3"))
    for kv in image.kvs:
        if kv.key == "general.architecture":
            kv.value = new
        elif isinstance(kv.key, str) and kv.key.startswith(f"{old}.") and rng.random() < 0.5:
            kv.key = new + kv.key[len(old):]
    return f"architecture {old!r} -> {new!r}"


def tensor_dims(image: GGUFImage, rng: random.Random) -> str:
    t = rng.choice(image.tensors)
    op = rng.choice(("n_dims", "dim", "dim", "swap"))
    if op == "n_dims":
        n = rng.choice((0, 1, 2, 3, 4, 5, 8))
        t.ne = (t.ne + [1] * 8)[:n] if n > len(t.ne) or rng.random() < 0.5 else t.ne[:n]
    elif op == "dim" and t.ne:
        t.ne[rng.randrange(len(t.ne))] = B.interesting_int(rng)
    else:
        t.ne = t.ne[::-1]
    return f"tensor {t.name} ne={t.ne}"


def tensor_type(image: GGUFImage, rng: random.Random) -> str:
    t = rng.choice(image.tensors)
    t.ggml_type = rng.choice(TYPE_IDS)
    return f"tensor {t.name} type={t.ggml_type}"


def tensor_offset(image: GGUFImage, rng: random.Random) -> str:
    t = rng.choice(image.tensors)
    choice = rng.random()
    if choice < 0.3:
        t.offset = len(image.data) + rng.choice((-1, 0, 32, 1 << 20))
    elif choice < 0.5:
        t.offset += rng.choice((1, 31, -32))
    elif choice < 0.7:
        t.offset = rng.choice(image.tensors).offset
    else:
        t.offset = B.interesting_int(rng)
    return f"tensor {t.name} offset={t.offset}"


def tensor_name(image: GGUFImage, rng: random.Random) -> str:
    t = rng.choice(image.tensors)
    t.name = rng.choice(("", rng.choice(image.tensors).name, "token_embd.weight", "blk.7.attn_q.weight", "a\nb",
                         "blk.-1.attn_q.weight", "output.weight", "rope_freqs.weight", b"\xff\xfe", "x" * 5000))
    return f"tensor renamed {str(t.name)[:40]!r}"


def tensor_set(image: GGUFImage, rng: random.Random) -> str:
    if rng.random() < 0.5 and image.tensors:
        t = image.tensors.pop(rng.randrange(len(image.tensors)))
        return f"drop tensor {t.name}"
    t = copy.deepcopy(rng.choice(image.tensors))
    image.tensors.insert(rng.randrange(len(image.tensors) + 1), t)
    return f"duplicate tensor {t.name}"


def counts(image: GGUFImage, rng: random.Random) -> str:
    which = rng.choice(("n_kv", "n_tensors", "version", "data", "magic"))
    if which == "n_kv":
        image.n_kv = len(image.kvs) + rng.choice((-1, 1, 2, 1 << 20, (1 << 64) - 1))
        return f"n_kv={image.n_kv}"
    if which == "n_tensors":
        image.n_tensors = max(0, len(image.tensors) + rng.choice((-1, 1, 5, 1 << 30, (1 << 64) - 1)))
        return f"n_tensors={image.n_tensors}"
    if which == "version":
        image.version = rng.choice((0, 1, 2, 3, 4, 1 << 31))
        return f"version={image.version}"
    if which == "data":
        image.data = image.data[:rng.randrange(len(image.data) + 1)]
        return f"data cut to {len(image.data)}"
    image.magic = rng.choice((b"GGUF", b"GGUf", b"\0\0\0\0", b"tjgg"))
    return f"magic={image.magic!r}"


STRUCTURAL = ((retype_kv, 6), (revalue_kv, 6), (drop_kv, 2), (duplicate_kv, 1), (add_kv, 4), (change_arch, 1),
              (tensor_dims, 3), (tensor_type, 2), (tensor_offset, 2), (tensor_name, 1), (tensor_set, 1), (counts, 2))


def mutate_image(image: GGUFImage, rng: random.Random) -> list[str]:
    """One to three structural mutations of image, in place; returns what was done."""
    steps = []
    functions, weights = zip(*STRUCTURAL)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        fn = rng.choices(functions, weights)[0]
        if (fn.__name__.startswith("tensor") and not image.tensors) or (fn.__name__.endswith("kv") and not image.kvs):
            continue
        steps.append(fn(image, rng))
    return steps


def mutate_gguf(seed: GGUFImage, rng: random.Random) -> tuple[bytes, str]:
    """A mutated copy of the seed image as file bytes, and a description of the mutations."""
    image = seed.copy()
    r = rng.random()
    steps = mutate_image(image, rng) if r < 0.85 else []
    data = image.to_bytes()
    if r >= 0.7:
        header_end = len(data) - len(image.data)
        data, what = B.mutate_bytes(data, image.fields, rng, header_end)
        steps.append(what)
    return data, "; ".join(steps)
