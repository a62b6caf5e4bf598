"""Copies of a vocabulary-only GGUF file with some string keys changed, for testing pre-tokenizers.

`with_strings(src, dst, {"tokenizer.ggml.pre": "qwen35"})` copies src byte for byte except for the
named string values (a key the file lacks is added after the others). It walks the key/value section
itself (gguf-py's reader takes minutes on a 150k-token vocabulary) and needs a file without tensors,
which is what llama.cpp's ggml-vocab-*.gguf files are.
"""

from __future__ import annotations

import struct
from pathlib import Path

_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF scalar type -> bytes
_STRING, _ARRAY = 8, 9


def _skip(buf: bytes, pos: int, vtype: int) -> int:
    if vtype == _STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == _ARRAY:
        atype, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if atype in _FIXED:
            return pos + n * _FIXED[atype]
        for _ in range(n):
            pos = _skip(buf, pos, atype)
        return pos
    return pos + _FIXED[vtype]


def _kv_spans(buf: bytes) -> dict[str, tuple[int, int]]:
    """Key -> (start, end) byte span of its whole key/value record."""
    magic, _version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    assert magic == b"GGUF" and n_tensors == 0, "a vocabulary-only GGUF file (no tensors) is expected"
    spans, pos = {}, 24
    for _ in range(n_kv):
        start = pos
        n = struct.unpack_from("<Q", buf, pos)[0]
        key = buf[pos + 8:pos + 8 + n].decode()
        vtype = struct.unpack_from("<I", buf, pos + 8 + n)[0]
        pos = _skip(buf, pos + 12 + n, vtype)
        spans[key] = (start, pos)
    return spans


def _string_kv(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", _STRING, len(v)) + v


def with_strings(src: Path, dst: Path, values: dict[str, str]) -> Path:
    """Write dst: src with the given string keys set (added at the end of the key/value section if absent)."""
    buf = Path(src).read_bytes()
    spans = _kv_spans(buf)
    end = max(stop for _, stop in spans.values())
    pieces, pos, added = [], 0, []
    for key, value in values.items():
        if key not in spans:
            added.append(_string_kv(key, value))
    for start, stop, key in sorted((s, e, k) for k, (s, e) in spans.items() if k in values):
        pieces += [buf[pos:start], _string_kv(key, values[key])]
        pos = stop
    pieces += [buf[pos:end], *added, buf[end:]]
    out = bytearray(b"".join(pieces))
    struct.pack_into("<Q", out, 16, len(spans) + len(added))
    Path(dst).write_bytes(bytes(out))
    return Path(dst)
