"""Typed reads of a model file's metadata: every value camelid uses is checked for type and range here.

A GGUF file's metadata arrives as plain Python values (int, float, bool, str, lists of them) whose types
the file chose. A `MetadataReader` hands each one out only as the type its consumer expects, within the
range it can use, or raises a CamelidError that names the file, the key, what was expected and what the
file holds (long values shortened), e.g.

    model.gguf: metadata key llama.attention.head_count is the number 4.5, not a whole number; the file's
    metadata is corrupt. Convert or download the model again.

Config, tokenizer, chat template and `camelid inspect` read metadata through it; the parsers of the
container formats (GGUF tensor table, legacy headers, safetensors headers) use `describe` for the same
wording of what they found.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NoReturn

from camelid.errors import CamelidError

MISSING: Any = object()  # a key's default when the key is required
MAX_SIZE = (1 << 31) - 1  # the largest count or dimension camelid accepts; keeps every product of sizes in int64
_SHOWN = 60  # characters of a value shown in a message


def describe(value: Any) -> str:
    """What a value is, in words, for an error message: 'the text \\'16\\'', 'a list of 266 whole numbers', ..."""
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, int):
        return f"the whole number {_shorten(str(value))}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, (str, bytes)):
        return f"the text {_shorten(repr(value))}"
    if isinstance(value, (list, tuple)):
        if len(value) <= 8 and len(repr(value)) <= _SHOWN:
            return f"the list {list(value)!r}"
        kinds = {_kind(v) for v in value[:1000]}
        items = kinds.pop() if len(kinds) == 1 else "mixed items"
        return f"a list of {len(value)} {items}" if value else "an empty list"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__} {_shorten(repr(value))}"


def shown(text: str | bytes) -> str:
    """A name from a file (a key, a tensor name) for a message: quoted, escaped (so no newline ends the
    line) and shortened."""
    return _shorten(repr(text))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "booleans"
    if isinstance(value, int):
        return "whole numbers"
    if isinstance(value, float):
        return "numbers"
    if isinstance(value, str):
        return "texts"
    if isinstance(value, (list, tuple)):
        return "lists"
    return "items"


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


def is_integer(value: Any) -> bool:
    """Whether value is a whole number (bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether value is a real number (int or float; bool is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MetadataReader:
    """Typed, range-checked reads of one file's metadata.

    meta: key -> value, as camelid.formats.gguf reads it; path names the file in messages; prefix is put
    before every key asked for (e.g. "llama." for an architecture's keys). Each getter takes the key
    (without the prefix) and a default; without a default the key is required. A present key of the
    wrong type or range raises CamelidError, as does a missing required one.
    """

    def __init__(self, meta: Mapping[str, Any], path: str = "model", prefix: str = ""):
        self.meta, self.path, self.prefix = meta, path, prefix

    def key(self, name: str) -> str:
        """The full metadata key for `name`."""
        return self.prefix + name

    def has(self, name: str) -> bool:
        return self.key(name) in self.meta

    def fail(self, problem: str) -> NoReturn:
        """Raise the CamelidError for a corrupt value: `problem` says which key holds what."""
        raise CamelidError(f"{self.path}: {problem}; the file's metadata is corrupt. Convert or download the model again.")

    def _get(self, name: str, default: Any) -> tuple[bool, Any]:
        """(present, value): the stored value, or (False, default) for an absent key with a default."""
        key = self.key(name)
        if key in self.meta:
            return True, self.meta[key]
        if default is MISSING:
            raise CamelidError(f"{self.path}: metadata key {key} is missing; the file is incomplete. Convert it again.")
        return False, default

    def _wrong(self, name: str, value: Any, expected: str) -> NoReturn:
        self.fail(f"metadata key {self.key(name)} is {describe(value)}, not {expected}")

    def integer(self, name: str, default: Any = MISSING, *, min: int | None = None, max: int | None = None) -> int:
        """A whole number within [min, max] (bounds given are inclusive)."""
        present, value = self._get(name, default)
        if not present:
            return value
        if not is_integer(value):
            self._wrong(name, value, "a whole number")
        if (min is not None and value < min) or (max is not None and value > max):
            lo = "" if min is None else str(min)
            hi = "" if max is None else str(max)
            self.fail(f"metadata key {self.key(name)} is {_shorten(str(value))}, outside {lo}..{hi}")
        return value

    def size(self, name: str, default: Any = MISSING) -> int:
        """A count or dimension: a whole number from 1 to MAX_SIZE."""
        return self.integer(name, default, min=1, max=MAX_SIZE)

    def number(self, name: str, default: Any = MISSING, *, finite: bool = True, low: float | None = None,
               high: float | None = None) -> float:
        """A real number (an int is accepted), finite unless finite=False, within [low, high] when given."""
        present, value = self._get(name, default)
        if not present:
            return value
        try:
            ok = is_number(value) and (not finite or math.isfinite(value))
        except OverflowError:  # an int beyond float's range
            ok = False
        if not ok:
            self._wrong(name, value, "a finite number" if finite else "a number")
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(f"metadata key {self.key(name)} is {value!r}, outside {'' if low is None else low}.."
                      f"{'' if high is None else high}")
        return float(value)

    def string(self, name: str, default: Any = MISSING) -> str:
        """A text."""
        present, value = self._get(name, default)
        if present and not isinstance(value, str):
            self._wrong(name, value, "a text")
        return value

    def boolean(self, name: str, default: Any = MISSING) -> bool:
        """true or false (GGUF's bool type; a number is refused, as llama.cpp does)."""
        present, value = self._get(name, default)
        if present and not isinstance(value, bool):
            self._wrong(name, value, "true or false")
        return value

    def array(self, name: str, item: str, default: Any = MISSING) -> list:
        """A list whose items are all of one kind: "text", "integer" (whole numbers) or "number" (real numbers)."""
        present, value = self._get(name, default)
        if not present:
            return value
        check, what = _ITEM_CHECKS[item]
        if not isinstance(value, (list, tuple)):
            self._wrong(name, value, f"a list of {what}")
        for i, v in enumerate(value):
            if not check(v):
                self.fail(f"metadata key {self.key(name)} should be a list of {what}, but item {i} is {describe(v)}")
        return list(value)

    def token_id(self, name: str, n_vocab: int) -> int | None:
        """A token id: None when the key is absent or the id is outside 0..n_vocab-1 (llama.cpp ignores
        such an id and keeps its default), CamelidError when the value is not a whole number."""
        value = self.integer(name, None)
        return value if value is not None and 0 <= value < n_vocab else None

    def peek(self, name: str, kind: str) -> Any:
        """The value if present and of `kind` ("text", "integer", "number", "boolean", "list"), else None.

        For displaying a file that may be corrupt (`camelid inspect`): never raises.
        """
        value = self.meta.get(self.key(name))
        ok = {"text": lambda v: isinstance(v, str), "integer": is_integer, "number": is_number,
              "boolean": lambda v: isinstance(v, bool), "list": lambda v: isinstance(v, (list, tuple))}[kind]
        return value if ok(value) else None


_ITEM_CHECKS = {"text": (lambda v: isinstance(v, str), "texts"), "integer": (is_integer, "whole numbers"),
                "number": (is_number, "numbers")}
