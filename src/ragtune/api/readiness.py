"""Readiness: can this process answer questions right now (store, catalog, embedding model)?

`StoreProbe` makes an outage of a Milvus *server* cost milliseconds: while the server does not
accept connections, pymilvus retries a call for minutes before it gives up, so every request
first asks the probe (a TCP connect, well under a millisecond on a LAN) and fails with
`StoreUnavailableError` at once. A failure is remembered for `interval` seconds, so an outage
costs one connect attempt per second, not one per request; a success is not remembered, so a
server that just went away is noticed by the next request. When the server is back the probe
sees it within `interval` and the same client reconnects: the service recovers without a restart.

    >>> from ragtune.api.readiness import StoreProbe
    >>> StoreProbe("http://127.0.0.1:9", interval=0).check()  # nothing listens on port 9
    'Milvus at http://127.0.0.1:9 does not accept connections (Connection refused); check that the server is up'
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

from ragtune.api.schemas import CheckResult, ErrorBody, ReadinessResponse
from ragtune.store.base import StoreUnavailableError, is_server_uri
from ragtune.system import System

_CONNECT_TIMEOUT = 1.0


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
        try:
            system.store.ping()
        except Exception as exc:  # any failure means "not ready"; the reason is reported
            problem = str(exc)
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
    if not failing:
        return ReadinessResponse(ready=True, checks=checks)
    return ReadinessResponse(ready=False, checks=checks, error=ErrorBody(code="not_ready", message="; ".join(failing)))
