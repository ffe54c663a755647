"""Which hosts an agent may call: checked on the URL as the HTTP client itself parses it, before
any connection is made.

Entries: ``example.com`` (any port), ``example.com:8443`` (that port only), ``*.example.com``
(every subdomain, not the domain itself), ``[::1]`` and ``[::1]:8080`` for IPv6. Names compare
case-insensitively and without a trailing dot. A name is matched as written: no DNS lookup, so
``localhost`` does not allow ``127.0.0.1`` nor the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vsmd.errors import ProtocolError, Unauthorized

# What the agents' config schemas accept as an entry (the same shapes as parse_entry).
ENTRY_PATTERN = (
    r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,252})?(:[0-9]{1,5})?$"
    r"|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$"
)
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    """A URL that passed: its scheme, host (lower case) and port (the default filled in)."""

    url: str
    scheme: str
    host: str
    port: int

    def origin(self) -> str:
        """The URL without path and query, for state and messages (a query may hold secrets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Entry:
    host: str
    port: int | None
    wildcard: bool

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def _norm(host: str) -> str:
    return host.lower().rstrip(".")


def parse_entry(text: str) -> Entry:
    if not re.fullmatch(ENTRY_PATTERN, text):
        raise ProtocolError(f"allow-list entry {text[:80]!r}: a host, host:port or *.domain")
    port: int | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest[1:])
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        port = int(port_text)
    else:
        host = text
    wildcard = host.startswith("*.")
    if port is not None and not 0 < port < 65536:
        raise ProtocolError(f"allow-list entry {text[:80]!r}: port out of range")
    return Entry(_norm(host[2:] if wildcard else host), port, wildcard)


class AllowList:
    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        self._parsed = tuple(parse_entry(e) for e in self.entries)

    def check(self, url: str) -> Target:
        """The target of ``url``; ProtocolError for what is no http(s) URL, Unauthorized for a
        host (or port) the list does not name."""
        import httpx2  # the client's own parser: what is checked is what it connects to

        try:
            parsed = httpx2.URL(url)
        except (httpx2.InvalidURL, TypeError) as exc:
            raise ProtocolError(f"bad URL {url[:200]!r}: {exc}") from None
        if parsed.scheme not in DEFAULT_PORTS:
            raise ProtocolError(f"bad URL {url[:200]!r}: only http and https are allowed")
        host = _norm(parsed.host)
        if not host:
            raise ProtocolError(f"bad URL {url[:200]!r}: no host")
        port = parsed.port or DEFAULT_PORTS[parsed.scheme]
        if not any(e.matches(host, port) for e in self._parsed):
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise Unauthorized(
                f"{shown} is not on the allow-list ({', '.join(self.entries)}); nothing was sent"
            )
        return Target(str(parsed), parsed.scheme, host, port)
