"""What one request may take from the server, and the checks that hold clients to it.

Limits gathers the caps `camelid serve` sets from its flags: body size, prompt and generated tokens,
the queue of requests waiting for a slot, the time one request may run, and how long a client may
leave a response unread. The model-dependent checks live in camelid.server.app; here are the ones
that are not: lone UTF-16 surrogates in a JSON body (Python's json module accepts "\\ud800" and
raw surrogate bytes, which then cannot be encoded as UTF-8 anywhere downstream), and a uvicorn
protocol that drops a connection whose client has stopped reading.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("camelid.server")

MIB = 1024 * 1024
RETRY_AFTER_SECONDS = 1  # the Retry-After of a 429 (queue full) or 503 (no slot within --timeout)
# Bytes the kernel may hold for one connection's unread responses (Linux doubles it); without a cap
# its autotuning lets a client that never reads take megabytes before the server notices.
SEND_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-request caps of the server (each one a `camelid serve` flag)."""

    max_body_bytes: int = 4 * MIB  # --max-body-bytes: a larger request body is answered 413
    max_prompt_tokens: int | None = None  # --max-prompt-tokens: longer prompts are a 400 (None: the context size)
    max_tokens: int = 4096  # --max-tokens-limit: a larger max_tokens is a 400; a request without one stops here
    max_queue: int = 64  # --max-queue: requests waiting for a free slot; one more is answered 429
    timeout: float = 600.0  # --timeout: seconds from a request's arrival to its last token
    stall_timeout: float = 30.0  # --stall-timeout: seconds a client may leave sent data unread

    def check(self) -> None:
        """Raise CamelidError naming the flag of a value that cannot work."""
        from camelid.errors import CamelidError

        for flag, value, low in (("--max-body-bytes", self.max_body_bytes, 1), ("--max-tokens-limit", self.max_tokens, 1),
                                 ("--max-queue", self.max_queue, 0), ("--max-prompt-tokens", self.max_prompt_tokens, 1)):
            if value is not None and value < low:
                raise CamelidError(f"{flag} must be at least {low}, got {value}.")
        for flag, value in (("--timeout", self.timeout), ("--stall-timeout", self.stall_timeout)):
            if not value > 0:
                raise CamelidError(f"{flag} must be a positive number of seconds, got {value}.")


def describe_bytes(n: int) -> str:
    """'4 MB', '512 KB' or '100 bytes': a body limit as a person reads it."""
    for unit, size in (("MB", MIB), ("KB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


# "\ud800".."\udfff" escapes, and UTF-8-style bytes of a surrogate (ED A0..BF xx), which json.loads
# decodes with 'surrogatepass'. Only a body with one of them is parsed again to find a lone one.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_path(body: bytes) -> str | None:
    """Where a JSON body holds a lone UTF-16 surrogate, as a dotted path ("messages.0.content"; "body"
    for the top level); None when it holds none, or is not JSON (the route reports that itself)."""
    utf8 = not body.startswith((b"\xff\xfe", b"\xfe\xff")) and b"\x00" not in body[:4]
    if utf8 and not _SURROGATE_HINT.search(body):
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[object, tuple[str, ...]]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return ".".join(path) or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return ".".join(path) or "body"
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))
    return None


def stall_guarded(protocol: type[asyncio.Protocol], stall_timeout: float,
                  on_drop: Callable[[], None] | None = None) -> type[asyncio.Protocol]:
    """A subclass of a uvicorn HTTP protocol (uvicorn.Config(http=...)) that aborts a connection whose
    client has left the server's data unread for stall_timeout seconds: the transport's buffer stayed
    over its high-water mark that long. The app then sees a disconnect, so a streamed generation is
    cancelled and its slot freed. Each connection's kernel send buffer is capped (SEND_BUFFER_BYTES)
    so the stall shows after about a hundred kilobytes; on_drop is called for each dropped connection."""

    class StallGuardedProtocol(protocol):
        _stall_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            super().connection_made(transport)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall_timer is None:
                self._stall_timer = asyncio.get_running_loop().call_later(stall_timeout, self._drop_stalled)

        def resume_writing(self) -> None:
            self._cancel_stall_timer()
            super().resume_writing()

        def connection_lost(self, exc) -> None:
            self._cancel_stall_timer()
            super().connection_lost(exc)

        def _cancel_stall_timer(self) -> None:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None

        def _drop_stalled(self) -> None:
            self._stall_timer = None
            peer = self.transport.get_extra_info("peername")
            log.warning("dropping the connection of %s: it left the response unread for %g s (--stall-timeout)",
                        peer, stall_timeout)
            if on_drop is not None:
                on_drop()
            self.transport.abort()

    StallGuardedProtocol.__name__ = StallGuardedProtocol.__qualname__ = f"StallGuarded{protocol.__name__}"
    return StallGuardedProtocol
