"""Saving a chat to a JSON file and continuing it later.

The file is one JSON object, UTF-8, written to a temporary name beside the target and renamed into
place, so a crash never leaves half a file:

    {"camelid_chat": 1, "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "system": "..." or null,
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...],
     "sampling": {"temperature": 0.8, "top_k": 40, ..., "seed": null}, "max_tokens": 1024,
     "dropped_turns": 0}

`model` is the model file's name, for information: a chat loads into any model (with a warning when
the name differs). Loading checks everything before it changes the session, so a wrong file leaves
the current conversation as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from camelid.errors import CamelidError
from camelid.sampling import SamplingParams

FORMAT_KEY = "camelid_chat"
FORMAT_VERSION = 1
MAX_CHAT_BYTES = 32 << 20  # far more than any context holds; keeps /load's memory within a small multiple of this


def chat_to_dict(session) -> dict[str, Any]:
    """The JSON-ready state of a ChatSession: system prompt, messages, sampling settings, model name."""
    return {
        FORMAT_KEY: FORMAT_VERSION,
        "model": os.path.basename(str(session.model.path)),
        "system": session.system,
        "messages": [{"role": m["role"], "content": m["content"]} for m in session.messages],
        "sampling": dataclasses.asdict(SamplingParams(**session.sampling)),
        "max_tokens": session.max_tokens,
        "dropped_turns": session.dropped_turns,
    }


def save_chat(session, path: str | os.PathLike) -> Path:
    """Write the session to `path` as JSON, atomically (temporary file, then rename); returns the path."""
    target = Path(path).expanduser()
    text = json.dumps(chat_to_dict(session), ensure_ascii=False, indent=1) + "\n"
    if target.is_dir():
        raise CamelidError(f"cannot save the chat to {target}: it is a directory; give a file name such as chat.json.")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise CamelidError(f"cannot save the chat to {target}: {e.strerror or e}.") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bad(path: Path, what: str) -> CamelidError:
    return CamelidError(f"{path} is not a usable camelid chat file: {what}. Nothing was changed.")


def read_chat(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a saved chat; returns its fields (messages, system, sampling, max_tokens, ...)."""
    source = Path(path).expanduser()
    try:
        if source.is_file() and source.stat().st_size > MAX_CHAT_BYTES:
            raise _bad(source, f"it is {source.stat().st_size >> 20} MiB, more than the {MAX_CHAT_BYTES >> 20} MiB a saved chat can be")
        raw = source.read_bytes()
    except OSError as e:
        raise CamelidError(f"cannot read the chat file {source}: {e.strerror or e}.") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad(source, "it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _bad(source, f"invalid JSON at line {e.lineno}, column {e.colno}") from None
    except ValueError:  # an integer of more than 4300 digits (sys.get_int_max_str_digits)
        raise _bad(source, "a number in it is too long") from None
    except RecursionError:
        raise _bad(source, "its JSON is nested too deeply") from None
    if not isinstance(data, dict) or FORMAT_KEY not in data:
        raise _bad(source, f"no {FORMAT_KEY!r} key (files written by /save have one)")
    if data[FORMAT_KEY] != FORMAT_VERSION:
        raise _bad(source, f"format version {data[FORMAT_KEY]!r}, this camelid reads version {FORMAT_VERSION}")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise _bad(source, "'system' must be a string or null")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise _bad(source, "'messages' must be a list")
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != expected or not isinstance(m.get("content"), str):
            raise _bad(source, f"message {i} must be {{\"role\": \"{expected}\", \"content\": \"...\"}} (user and assistant alternate)")
    if len(messages) % 2:
        raise _bad(source, "the last message must be an assistant reply")
    sampling = data.get("sampling", {})
    if not isinstance(sampling, dict):
        raise _bad(source, "'sampling' must be an object")
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(sampling) - fields)
    if unknown:
        raise _bad(source, f"unknown sampling setting {unknown[0]!r}")
    try:
        SamplingParams(**sampling)
    except CamelidError as e:
        raise _bad(source, str(e).rstrip(".")) from None
    max_tokens = data.get("max_tokens", 1024)
    dropped = data.get("dropped_turns", 0)
    for name, value in (("max_tokens", max_tokens), ("dropped_turns", dropped)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(source, f"{name!r} must be an integer")
    model = data.get("model")
    return {
        "model": model if isinstance(model, str) else None, "system": system, "sampling": sampling,
        "max_tokens": max_tokens, "dropped_turns": dropped,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
    }


def load_chat(session, path: str | os.PathLike) -> str | None:
    """Replace the session's conversation and settings with a saved chat.

    Returns a warning when the chat was saved with a differently named model file, else None.
    A missing, malformed or wrong file raises CamelidError before anything changes.
    """
    saved = read_chat(path)
    session.system = saved["system"]
    session.messages = saved["messages"]
    session.sampling = {**session.sampling, **saved["sampling"]}
    session.max_tokens = saved["max_tokens"]
    session.dropped_turns = saved["dropped_turns"]
    session.last_dropped = 0
    ours = os.path.basename(str(session.model.path))
    if saved["model"] and saved["model"] != ours:
        return f"the chat was saved with {saved['model']}; it continues with {ours}."
    return None
