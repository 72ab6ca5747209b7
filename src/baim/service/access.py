"""Who may use an edge service, and how often: user tokens (when the operator turned them
on), a request rate per client, and toolbox administration only from the edge machine."""

import hashlib
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import Response

from .http import error
from .limits import RateLimit

LOOPBACK = ("127.0.0.1", "::1", "localhost", "testclient")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_operator(request: Request) -> bool:
    """A request from the edge machine itself (loopback)."""
    return (request.client.host if request.client else "") in LOOPBACK


def local_only(request: Request) -> Response | None:
    """403 unless from the edge machine: toolbox administration is for the edge's operator."""
    if not is_operator(request):
        return error(403, "toolbox administration is only allowed from the edge machine itself (loopback)")
    return None


class Access:
    """``user_tokens`` gives the sha256 of the tokens users must present (called on each
    request, so a changed token file takes effect); None serves anyone. Each client (its
    token, else its address) may make ``rate_per_s`` requests a second, in bursts of ``burst``."""

    def __init__(self, user_tokens: Callable[[], frozenset[str]] | None, rate_per_s: float, burst: float):
        self.user_tokens, self.rate_per_s = user_tokens, rate_per_s
        self.limiter = RateLimit(rate_per_s, burst)

    def admit(self, request: Request) -> Response | None:
        """401 without a valid user token (when tokens are on), 429 past the client's rate."""
        token = bearer(request)
        who = request.client.host if request.client else "?"
        if self.user_tokens is not None:
            if token is None or token_hash(token) not in self.user_tokens():
                return error(401, "this edge needs a user token (Authorization: Bearer TOKEN); ask its operator")
            who = "token:" + token_hash(token)
        wait = self.limiter.wait_s(who)
        if wait > 0:
            resp = error(429, f"too many requests from this client; the limit is {self.rate_per_s:g} per second")
            resp.headers["Retry-After"] = str(max(1, round(wait)))
            return resp
        return None
