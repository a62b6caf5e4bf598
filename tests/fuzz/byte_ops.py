"""Interesting values and byte-level mutations shared by every format's mutators.

Every function takes a `random.Random`, so a case is reproduced from its seed alone.
"""

from __future__ import annotations

import math
import random

from fuzz.gguf_image import Field, pack_scalar

INTERESTING_INTS = (0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 127, 128, 255, 256, 266, 1023, 1024, 4095,
                    4096, 65535, 65536, (1 << 20) + 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40,
                    1 << 48, (1 << 62) + 5, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -1, -2, -16, -(1 << 31))
INTERESTING_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-45, 1e-30, 1e-5, 1e6, 3.4e38, 1e300, -1e300, math.inf,
                      -math.inf, math.nan, 10000.0, 16.0, 4.0)
INTERESTING_STRINGS = ("", "16", "4", "inf", "nan", "-1", "llama", "gpt2", "qwen2", "gemma", "bert", "default",
                       "none", "linear", "yarn", "smollm", "qwen2 ", "LLAMA", "\x00", "a" * 3000, "é" * 40,
                       "<s>", "</s>", "<|im_end|>", "Ġ t", "Ġt", "{{ bos_token }}", "{% for m in messages %}",
                       "{{ messages[0]['content'] * 100000 }}", "{% if %}", "{{ raise_exception('x') }}",
                       "\udcff\udcfe", "\u2581\u2581", "<0xFF>", "<0x", "[INST]", "line\nbreak\r\n")


def interesting_int(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.7:
        return rng.choice(INTERESTING_INTS)
    if r < 0.85:
        return rng.randrange(-8, 600)
    return rng.getrandbits(rng.choice((8, 16, 32, 64)))


def interesting_float(rng: random.Random) -> float:
    if rng.random() < 0.8:
        return rng.choice(INTERESTING_FLOATS)
    return rng.uniform(-1e6, 1e6) * 10.0 ** rng.randrange(-40, 40)


def interesting_string(rng: random.Random) -> str:
    if rng.random() < 0.85:
        return rng.choice(INTERESTING_STRINGS)
    return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0x3000)))) for _ in range(rng.randrange(1, 20)))


def smash_field(buf: bytearray, fields: list[Field], rng: random.Random) -> str:
    """Overwrite one recorded numeric field (chosen by kind first, so rare kinds get hit) with an interesting value."""
    if not fields:
        return flip_bits(buf, rng)
    kinds = sorted({f.kind for f in fields})
    kind = rng.choice(kinds)
    f = rng.choice([f for f in fields if f.kind == kind])
    value = interesting_int(rng)
    buf[f.offset:f.offset + f.size] = pack_scalar({1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[f.size], value)
    return f"{kind}@{f.offset}={value}"


def flip_bits(buf: bytearray, rng: random.Random, end: int | None = None) -> str:
    end = min(len(buf), end or len(buf))
    if end == 0:
        return "flip:empty"
    spots = []
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        at = rng.randrange(end)
        buf[at] ^= 1 << rng.randrange(8)
        spots.append(at)
    return "flip@" + ",".join(map(str, spots))


def set_bytes(buf: bytearray, rng: random.Random, end: int | None = None) -> str:
    end = min(len(buf), end or len(buf))
    if end < 9:
        return "set:short"
    at = rng.randrange(end - 8)
    width = rng.choice((1, 2, 4, 8))
    buf[at:at + width] = pack_scalar({1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[width], interesting_int(rng))
    return f"set{width}@{at}"


def truncate(buf: bytearray, rng: random.Random, end: int | None = None) -> str:
    end = min(len(buf), end or len(buf))
    at = rng.randrange(end + 1) if rng.random() < 0.7 else rng.randrange(len(buf) + 1)
    del buf[at:]
    return f"truncate@{at}"


def splice(buf: bytearray, rng: random.Random, end: int | None = None) -> str:
    """Insert, delete or duplicate a short run of bytes."""
    end = min(len(buf), end or len(buf))
    at = rng.randrange(end + 1)
    n = rng.choice((1, 3, 4, 8, 13))
    op = rng.choice(("insert", "delete", "duplicate"))
    if op == "insert":
        buf[at:at] = bytes(rng.getrandbits(8) for _ in range(n))
    elif op == "delete":
        del buf[at:at + n]
    else:
        buf[at:at] = buf[at:at + n]
    return f"{op}{n}@{at}"


def append_garbage(buf: bytearray, rng: random.Random) -> str:
    n = rng.choice((1, 7, 64, 4096))
    buf += bytes(rng.getrandbits(8) for _ in range(n))
    return f"append{n}"


def mutate_bytes(buf: bytes, fields: list[Field], rng: random.Random, header_end: int | None = None) -> tuple[bytes, str]:
    """One to three byte-level mutations, aimed at the header (before header_end) most of the time."""
    out = bytearray(buf)
    steps = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.choices(("smash", "flip", "set", "truncate", "splice", "append"), (5, 3, 2, 2, 2, 1))[0]
        end = header_end if rng.random() < 0.85 else None
        if op == "smash":
            steps.append(smash_field(out, [f for f in fields if f.offset + f.size <= len(out)], rng))
        elif op == "flip":
            steps.append(flip_bits(out, rng, end))
        elif op == "set":
            steps.append(set_bytes(out, rng, end))
        elif op == "truncate":
            steps.append(truncate(out, rng, end))
        elif op == "splice":
            steps.append(splice(out, rng, end))
        else:
            steps.append(append_garbage(out, rng))
    return bytes(out), "bytes(" + " ".join(steps) + ")"
