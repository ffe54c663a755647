"""The HTTP side of the agents that reach outside (sensor, api): one httpx2 client per VSM, made
on its first request, and httpx2's errors translated into vsmd's at this edge.

The client is made lazily because one made at VSM start costs every VSM several MiB whether it
ever calls or not (and httpx2 itself is imported then, not when the fork server loads the
agent types). It follows no redirects (a redirect could lead off the allow-list: the caller
gets the 3xx), keeps no cookies (they would leak from one caller to the next), and ignores
proxy variables in the environment (the allow-list names where requests go).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from http.cookiejar import CookieJar, CookiePolicy
from typing import TYPE_CHECKING, Any

from vsmd.errors import AgentError, ProtocolError, Timeout, Unauthorized

if TYPE_CHECKING:
    import httpx2


class ConnectFailed(AgentError):
    """No connection was made: the request was never sent, so any method may be retried."""


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes  # at most max_body bytes, after content decoding
    truncated: bool  # the body went on beyond max_body
    elapsed: float  # seconds, connection included


def holds(ctx: object, capability: str) -> bool:
    """Whether the VSM was granted ``capability`` (``ctx.capabilities``). The context enforces
    only what it mediates itself, so agents that reach outside check http here; a context that
    records no grant (an embedding's own) refuses nothing."""
    granted = getattr(ctx, "capabilities", None)
    return granted is None or capability in granted


def require_http(ctx: object, path: str) -> None:
    if not holds(ctx, "http"):
        raise Unauthorized(f"VSM {path} was not granted the http capability")


class _NoCookies(CookiePolicy):
    """Neither keep nor send cookies: the client is shared by every caller of the VSM."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


class LazyHttp:
    """One client per VSM, made on the first request; ``aclose`` at the VSM's stop."""

    def __init__(self) -> None:
        self._client: httpx2.AsyncClient | None = None

    @property
    def made(self) -> bool:
        return self._client is not None

    def client(self) -> httpx2.AsyncClient:
        if self._client is None:
            import httpx2

            self._client = httpx2.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                cookies=CookieJar(policy=_NoCookies()),
                limits=httpx2.Limits(max_connections=32, max_keepalive_connections=8),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        max_body: int,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> Fetched:
        """One request. ``timeout`` bounds each phase (connect, each read) and the whole;
        errors: ConnectFailed, Timeout, AgentError (the connection broke), ProtocolError."""
        import httpx2

        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                return await self._send(method, url, timeout, max_body, headers, content, started)
        except (TimeoutError, httpx2.TimeoutException) as exc:
            if isinstance(exc, httpx2.ConnectTimeout):
                raise ConnectFailed(
                    f"cannot connect to {_origin(url)} within {timeout:g} s"
                ) from None
            raise Timeout(f"no answer from {_origin(url)} within {timeout:g} s") from None
        except httpx2.ConnectError as exc:
            raise ConnectFailed(f"cannot connect to {_origin(url)}: {_reason(exc)}") from None
        except (httpx2.InvalidURL, httpx2.UnsupportedProtocol) as exc:
            raise ProtocolError(f"bad URL {url[:200]!r}: {exc}") from None
        except httpx2.TransportError as exc:
            raise AgentError(
                f"{_origin(url)} broke off: {type(exc).__name__}: {_reason(exc)}"
            ) from None

    async def _send(
        self,
        method: str,
        url: str,
        timeout: float,
        max_body: int,
        headers: dict[str, str] | None,
        content: bytes | None,
        started: float,
    ) -> Fetched:
        client = self.client()
        async with client.stream(
            method, url, headers=headers, content=content, timeout=timeout
        ) as resp:
            body = bytearray()
            truncated = False
            async for chunk in resp.aiter_bytes():
                room = max_body - len(body)
                body += chunk[:room]
                if len(chunk) > room:
                    truncated = True  # leaving the stream closes the connection: no more is read
                    break
            out: dict[str, str] = {}
            for name, value in resp.headers.multi_items():
                key = name.lower()
                out[key] = f"{out[key]}, {value}" if key in out else value
            return Fetched(
                resp.status_code, out, bytes(body), truncated, time.monotonic() - started
            )


def _origin(url: str) -> str:
    """The URL up to its path: messages and state never show a query (it may hold a key)."""
    head, sep, _rest = url.partition("://")
    if not sep:
        return url[:100]
    netloc = _rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]  # no user:password
    return f"{head}://{netloc[:200]}"


def _reason(exc: BaseException) -> str:
    return str(exc)[:300] or type(exc).__name__
