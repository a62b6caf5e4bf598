"""Read a remote GGUF file's architecture from the first bytes of the file, before downloading it.

The header is: magic "GGUF", version u32, n_tensors u64, n_kv u64, then n_kv of (key string, value
type u32, value); a string is a u64 length and UTF-8 bytes. Writers put `general.architecture`
first, so the first few kilobytes are enough; the reader asks for more bytes when they are not.
"""

from __future__ import annotations

import struct
from typing import Callable

# GGUF value type -> size in bytes of a scalar of that type (8 = string, 9 = array are read apart)
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
PROBE_SIZES = (1 << 16, 1 << 20, 1 << 24)  # bytes asked for in turn


class NeedMoreBytes(Exception):
    """The header goes on past the bytes read so far."""


class NotGGUF(Exception):
    """The bytes do not start a GGUF v2/v3 file."""


class _Reader:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise NeedMoreBytes
        value = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value[0] if len(value) == 1 else value

    def string(self) -> bytes:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise NeedMoreBytes
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def skip_value(self, vtype: int) -> None:
        if vtype == _STRING:
            self.string()
        elif vtype == _ARRAY:
            item_type, count = self.take("<IQ")
            if item_type in (_STRING, _ARRAY):
                for _ in range(count):
                    self.skip_value(item_type)
            elif item_type in _SCALAR_SIZES:
                self.pos += _SCALAR_SIZES[item_type] * count
                if self.pos > len(self.buf):
                    raise NeedMoreBytes
            else:
                raise NotGGUF(f"unknown array item type {item_type}")
        elif vtype in _SCALAR_SIZES:
            self.take(f"<{_SCALAR_SIZES[vtype]}s")
        else:
            raise NotGGUF(f"unknown value type {vtype}")


def architecture_from_prefix(buf: bytes) -> str | None:
    """general.architecture from the first bytes of a GGUF file; None if the header has no such key.

    Raises NeedMoreBytes when `buf` ends before the key is found, NotGGUF when it is not GGUF v2/v3.
    """
    r = _Reader(buf)
    magic, version = r.take("<4sI")
    if magic != b"GGUF" or version not in (2, 3):
        raise NotGGUF(f"starts with {magic!r}, version {version}")
    _n_tensors, n_kv = r.take("<QQ")
    for _ in range(n_kv):
        key = r.string()
        vtype = r.take("<I")
        if key == b"general.architecture" and vtype == _STRING:
            return r.string().decode("utf-8", errors="replace")
        r.skip_value(vtype)
    return None


def probe_architecture(read_prefix: Callable[[int], bytes]) -> str | None:
    """general.architecture of a remote file, read_prefix(n) giving its first n bytes (or all, if fewer).

    Returns None when the architecture cannot be told from the first PROBE_SIZES[-1] bytes; raises
    NotGGUF when the file is not GGUF.
    """
    for size in PROBE_SIZES:
        buf = read_prefix(size)
        try:
            return architecture_from_prefix(buf)
        except NeedMoreBytes:
            if len(buf) < size:
                raise NotGGUF("the file ends inside its header") from None
    return None
