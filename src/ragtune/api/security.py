"""API keys, per-key rate limits and request body limits, as ASGI middleware.

Authentication is on as soon as a key exists: one in ``RAGTUNE_API_KEYS`` or one made by
``ragtune keys create`` (stored hashed; a key created or revoked while the server runs
takes effect within `KEY_REFRESH_SECONDS`). Revoked keys count: revoking the last key locks
the API instead of opening it. Then every path except
``RAGTUNE_AUTH_EXEMPT_PATHS`` needs ``Authorization: Bearer <key>``, and each key may make
``RAGTUNE_RATE_LIMIT_PER_MINUTE`` requests a minute (bursts of ``RAGTUNE_RATE_LIMIT_BURST``);
beyond that the answer is 429 with ``Retry-After``. With no keys the same limit applies per
client address. The limit is kept per server process. What a valid key may then do (its role
and collections) is `ragtune.api.access`'s to check: the middleware only finds its scope.

    >>> from ragtune.api.security import RateLimiter
    >>> limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: 0.0)
    >>> [limiter.acquire("k") for _ in range(3)]
    [0.0, 0.0, 1.0]
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragtune.api.access import STATE_KEY, KeyScope
from ragtune.api.errors import ApiError, error_response
from ragtune.store.keys import KeyStore, hash_key

KEY_REFRESH_SECONDS = 2.0


class Authenticator:
    """Which bearer tokens are valid, and each one's scope: the configured keys (admin on
    every collection) and the active stored ones (their role and collections)."""

    def __init__(self, configured: list[str], keys: KeyStore, refresh_seconds: float = KEY_REFRESH_SECONDS) -> None:
        self._configured = {hash_key(k) for k in configured}
        self.keys = keys
        self._refresh_seconds = refresh_seconds
        self._stored: dict[str, KeyScope] = {}
        self._any_stored = False
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def stale(self) -> bool:
        return time.monotonic() - self._loaded_at >= self._refresh_seconds

    def refresh(self) -> None:
        """Reads the active stored keys (a database query: call it off the event loop)."""
        stored = {
            digest: KeyScope(digest, role, frozenset(collections) if collections else None)
            for digest, (role, collections) in self.keys.scopes().items()
        }
        any_stored = self.keys.exist()
        with self._lock:
            self._stored, self._any_stored, self._loaded_at = stored, any_stored, time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self._configured) or self._any_stored

    def identify(self, token: str) -> KeyScope | None:
        """The key's scope when `token` is valid; its `identity` (the key's hash) names it for
        rate limiting and conversations."""
        digest = hash_key(token)
        if digest in self._configured:
            return KeyScope(digest)
        return self._stored.get(digest)


class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `per_minute` a minute."""

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 0 or burst <= 0:
            raise ValueError(f"need per_minute >= 0 and burst > 0; got per_minute={per_minute}, burst={burst}")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """0.0 when the request may proceed, else the seconds until it may."""
        if self.rate == 0:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def path_is_exempt(path: str, patterns: list[str]) -> bool:
    """Exact matches, or prefix matches for patterns ending in *."""
    return any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in patterns)


class AuthMiddleware:
    """Refuses requests without a valid key (401) or over the key's rate (429); with
    authentication off, over the client address's rate (429). Exempt paths are neither."""

    def __init__(
        self, app: ASGIApp, exempt_paths: list[str], get_auth: Callable[[Scope], tuple[Authenticator, RateLimiter]]
    ) -> None:
        self.app = app
        self.exempt_paths = exempt_paths
        self.get_auth = get_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or path_is_exempt(scope["path"], self.exempt_paths):
            await self.app(scope, receive, send)
            return
        authenticator, limiter = self.get_auth(scope)
        if authenticator.stale():
            await anyio.to_thread.run_sync(authenticator.refresh)
        if authenticator.enabled:
            key = authenticator.identify(_bearer_token(scope))
            if key is None:
                response = error_response(
                    401,
                    "unauthorized",
                    "a valid API key is required: send 'Authorization: Bearer <key>' "
                    "(keys come from RAGTUNE_API_KEYS or `ragtune keys create`)",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            state["identity"] = key.identity  # whose conversations (ragtune.api.deps)
            state[STATE_KEY] = key  # what it may do (ragtune.api.access)
            bucket, who = key.identity, "this API key is"
        else:
            # No keys: each client address has its own bucket (behind a proxy, the proxy's).
            address = (scope.get("client") or ("unknown",))[0]
            bucket, who = f"address:{address}", f"the client address {address} is"
        wait = limiter.acquire(bucket)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            response = error_response(
                429,
                "rate_limited",
                f"{who} over its limit of {round(limiter.rate * 60)} requests per minute "
                f"(RAGTUNE_RATE_LIMIT_PER_MINUTE); retry in {seconds} s",
                {"Retry-After": str(seconds)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _path_pattern(path: str) -> re.Pattern[str]:
    return re.compile("/".join("[^/]+" if part == "*" else re.escape(part) for part in path.split("/")))


def _bearer_token(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class BodyLimitMiddleware:
    """413 for a request body over its route's limit: from Content-Length before anything is
    read, or while a body without one streams in."""

    def __init__(self, app: ASGIApp, default_limit: int, limits: dict[tuple[str, str], int]) -> None:
        self.app = app
        self.default_limit = default_limit
        # (method, path) -> bytes; a "*" in a path stands for one path segment
        self.limits = [(method, _path_pattern(path), limit) for (method, path), limit in limits.items()]

    def limit_for(self, method: str, path: str) -> int:
        return next((n for m, p, n in self.limits if m == method and p.fullmatch(path)), self.default_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        message = (
            f"the request body is over the limit of {limit} bytes for {scope['method']} {scope['path']} "
            "(RAGTUNE_MAX_BODY_BYTES for JSON; RAGTUNE_MAX_UPLOAD_BYTES x RAGTUNE_MAX_FILES_PER_REQUEST for uploads)"
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await error_response(413, "payload_too_large", message)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    # An HTTPException passes through FastAPI's body parsing to the JSON error handler.
                    raise ApiError(413, "payload_too_large", message)
            return msg

        await self.app(scope, limited_receive, send)
