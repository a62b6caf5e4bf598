"""Which Host and Origin headers the server answers: its defence against DNS rebinding.

A web page on a foreign name that its owner makes resolve to 127.0.0.1 reaches a local server with
its own name in the Host header; refusing unknown names keeps the page from reading the chat store
or using the model. A state-changing request from a page of another origin is refused too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

from camelid.errors import CamelidError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]/@\s]+)(?::(\d{1,5}))?")  # host[:port] of a Host or Origin


def _split_authority(value: str) -> tuple[str, int | None] | None:
    """'name:port', '[v6]:port' or 'name' -> (lower-case name, port or None); None if malformed."""
    match = _AUTHORITY.fullmatch(value)
    if match is None:
        return None
    return match.group(1).lower(), None if match.group(2) is None else int(match.group(2))


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostCheck:
    """The Host headers the server answers, against DNS rebinding: a page on a foreign name that
    resolves to this machine sends its own name as Host and is refused.

    pairs holds (name, port) and (name, None) for a name on any port; with any_ip_port, any IP
    address on that port is accepted too (a server bound to every address: an address by number
    cannot be rebound). disabled (--allowed-host '*') turns the check off.
    """

    pairs: frozenset[tuple[str, int | None]]
    any_ip_port: int | None = None
    disabled: bool = False

    @classmethod
    def for_address(cls, bind_host: str, port: int | None, allowed: Iterable[str] = ()) -> "HostCheck":
        """The check for a server listening on bind_host:port (port None: any port), plus the
        names of --allowed-host ('name' on any port, 'name:port', or '*' for no check).

        Bound to loopback it answers 127.0.0.1, localhost and [::1]; bound to every address, those
        and any IP address; otherwise the bound address. Raises CamelidError for a malformed name.
        """
        try:
            address = ipaddress.ip_address(bind_host.strip("[]"))
        except ValueError:
            address = None
        names = {bind_host.lower() if address is None else f"[{address}]" if address.version == 6 else str(address)}
        if address is not None and (address.is_loopback or address.is_unspecified):
            names = (names - {"0.0.0.0", "[::]"}) | set(LOOPBACK_NAMES)
        pairs = {(name, port) for name in names}
        disabled = False
        for entry in allowed:
            if entry == "*":
                disabled = True
                continue
            split = _split_authority(entry.strip())
            if split is None:
                raise CamelidError(f"--allowed-host {entry!r} is not a host name; give a name like myserver.lan or myserver.lan:8080.")
            pairs.add(split)
        any_ip_port = port if address is not None and address.is_unspecified else None
        return cls(frozenset(pairs), any_ip_port, disabled)

    def _allows(self, name: str, port: int) -> bool:
        return (name, port) in self.pairs or (name, None) in self.pairs or (
            port == self.any_ip_port and _is_ip_literal(name))

    def allows_host(self, host: str) -> bool:
        """Whether a request with this Host header is answered."""
        if self.disabled:
            return True
        split = _split_authority(host)
        return split is not None and self._allows(split[0], 80 if split[1] is None else split[1])

    def allows_origin(self, origin: str, host: str) -> bool:
        """Whether a state-changing request from a page of this Origin is served: the origin must
        be the one the request was sent to (its Host), or a name the server answers."""
        scheme, sep, authority = origin.partition("://")
        default_port = {"http": 80, "https": 443}.get(scheme.lower())
        theirs = _split_authority(authority) if sep and default_port else None
        if theirs is None:
            return False
        name, port = theirs[0], default_port if theirs[1] is None else theirs[1]
        ours = _split_authority(host)
        if ours is not None and ours[0] == name and (default_port if ours[1] is None else ours[1]) == port:
            return True
        return self._allows(name, port)

    def names(self) -> str:
        """The accepted hosts, for an error message."""
        shown = sorted(name if port is None else f"{name}:{port}" for name, port in self.pairs)
        return ", ".join(shown) + (" and any address by number" if self.any_ip_port is not None else "")
