"""Readiness: can this process answer questions right now (store, catalog, embedding model)?

`StoreProbe` makes an outage of a Milvus *server* cost milliseconds: while the server does not
accept connections, pymilvus retries a call for minutes before it gives up, so every request
first asks the probe (a TCP connect, well under a millisecond on a LAN) and fails with
`StoreUnavailableError` at once. A failure is remembered for `interval` seconds, so an outage
costs one connect attempt per second, not one per request; a success is not remembered, so a
server that just went away is noticed by the next request. When the server is back the probe
sees it within `interval` and the same client reconnects: the service recovers without a restart.

A server that accepts connections but does not answer (frozen, overloaded) passes the TCP
probe, so readiness also pings the collection, bounded by `ping_timeout` (at most 2 s, less
when ``RAGTUNE_MILVUS_TIMEOUT_SECONDS`` is lower): /ready turns 503 within that bound instead
of waiting out the call's own deadline. While one ping hangs no second one is started.

    >>> from ragtune.api.readiness import StoreProbe
    >>> StoreProbe("http://127.0.0.1:9", interval=0).check()  # nothing listens on port 9
    'Milvus at http://127.0.0.1:9 does not accept connections (Connection refused); check that the server is up'
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from ragtune.api.schemas import CheckResult, ErrorBody, ReadinessResponse
from ragtune.store.base import StoreUnavailableError, is_server_uri
from ragtune.system import System

_CONNECT_TIMEOUT = 1.0
_PING_TIMEOUT = 2.0


def ping_timeout(system: System) -> float:
    """How long readiness waits for the store's ping: min(2 s, the store's call deadline)."""
    return min(_PING_TIMEOUT, system.settings.store.milvus_timeout_seconds)


class _Ping(threading.Thread):
    def __init__(self, ping: Callable[[], None]) -> None:
        super().__init__(name="ragtune-store-ping", daemon=True)
        self._ping = ping
        self.problem: str | None = None

    def run(self) -> None:
        try:
            self._ping()
        except Exception as exc:  # any failure means "not ready"; the reason is reported
            self.problem = str(exc) or type(exc).__name__


class StoreProbe:
    """Whether the Milvus server accepts connections; always reachable for Milvus Lite."""

    def __init__(self, uri: str, interval: float = 1.0) -> None:
        self.uri = uri
        self.interval = interval
        self._address: tuple[str, int] | None = None
        if is_server_uri(uri):
            parts = urlsplit(uri)
            self._address = (parts.hostname or "localhost", parts.port or 19530)
        self._lock = threading.Lock()
        self._failed_at = float("-inf")
        self._problem: str | None = None
        self._ping_lock = threading.Lock()
        self._ping: _Ping | None = None
        self.last_ready: bool | None = None  # the latest readiness verdict, for /metrics to report

    def check(self) -> str | None:
        """None when reachable, else what is wrong."""
        if self._address is None:
            return None
        with self._lock:
            if self._problem is None or time.monotonic() - self._failed_at >= self.interval:
                self._problem = self._connect()
                self._failed_at = time.monotonic()
            return self._problem

    def require(self) -> None:
        problem = self.check()
        if problem:
            raise StoreUnavailableError(problem)

    def ping(self, store_ping: Callable[[], None], timeout: float) -> str | None:
        """None when `store_ping` returns within `timeout` seconds, else what is wrong.

        The ping runs in a thread; one that has not returned is waited on again by the next
        call rather than started anew, so a frozen server costs one hanging call, not one per probe.
        """
        with self._ping_lock:
            if self._ping is None or not self._ping.is_alive():
                self._ping = _Ping(store_ping)
                self._ping.start()
            ping = self._ping
        ping.join(timeout)
        if ping.is_alive():
            return (
                f"Milvus at {self.uri} did not answer within {timeout:g} s; "
                "the server may be frozen or overloaded, check that it is up"
            )
        return ping.problem

    def _connect(self) -> str | None:
        assert self._address is not None
        try:
            socket.create_connection(self._address, timeout=_CONNECT_TIMEOUT).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return f"Milvus at {self.uri} does not accept connections ({reason}); check that the server is up"
        return None


def readiness(system: System, probe: StoreProbe) -> ReadinessResponse:
    checks: dict[str, CheckResult] = {}
    problem = probe.check()
    if problem is None:
        problem = probe.ping(system.store.ping, ping_timeout(system))
    checks["store"] = CheckResult(ok=problem is None, detail=problem or "")
    try:
        system.catalog.ping()
        checks["catalog"] = CheckResult(ok=True)
    except Exception as exc:
        checks["catalog"] = CheckResult(ok=False, detail=f"catalog database unreachable: {exc}")
    try:
        system.embedder.embed(["readiness probe"])
        checks["embedder"] = CheckResult(ok=True, detail=f"{system.embedder.name} ({system.embedder.backend})")
    except Exception as exc:
        checks["embedder"] = CheckResult(ok=False, detail=f"embedding model {system.embedder.name} failed: {exc}")
    failing = [f"{name}: {c.detail}" for name, c in checks.items() if not c.ok]
    probe.last_ready = not failing
    if not failing:
        return ReadinessResponse(ready=True, checks=checks)
    return ReadinessResponse(ready=False, checks=checks, error=ErrorBody(code="not_ready", message="; ".join(failing)))
