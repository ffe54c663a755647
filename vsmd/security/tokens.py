"""Short-lived JWTs (HS256) that RabbitMQ's OAuth 2.0 backend accepts as a VSM's password.

Hand-rolled on hmac: one signature per VSM start and refresh, no JWT library in the daemon's
dependencies, and no code path that could sign with another algorithm.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

import orjson

KEY_ID = "vsmd"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenMinter:
    """Signs tokens for one resource server (the broker) and one vhost."""

    key: bytes
    resource_server_id: str
    vhost: str

    def scope(self, perm: str, name: str, pattern: str | None = None) -> str:
        """``<rsid>.<perm>:<vhost>/<name>[/<routing-key pattern>]``."""
        text = f"{self.resource_server_id}.{perm}:{self.vhost}/{name}"
        return text if pattern is None else f"{text}/{pattern}"

    def mint(self, subject: str, scopes: list[str], ttl: float, now: float | None = None) -> str:
        # ``sub`` is always set: without it the broker takes the username the client sends,
        # and a VSM could then forge the user_id its messages carry.
        issued = int(time.time() if now is None else now)
        header = {"alg": "HS256", "typ": "JWT", "kid": KEY_ID}
        claims = {
            "sub": subject,
            "aud": [self.resource_server_id],
            "iat": issued,
            "exp": issued + max(1, int(ttl)),
            "scope": scopes,
        }
        signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
        signature = hmac.new(self.key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"

    def verify(self, token: str) -> dict[str, object]:
        """The claims of a token this minter signed (for tests and `vsmd broker check`)."""
        head, body, sig = token.split(".")
        expected = hmac.new(self.key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64url(sig)):
            raise ValueError("bad signature")
        claims: dict[str, object] = orjson.loads(_unb64url(body))
        return claims
