"""What the routes depend on, built once per app by its lifespan and injected with `Depends`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from ragtune.api.errors import ApiError
from ragtune.api.metrics import ServiceMetrics
from ragtune.api.query_service import QueryService
from ragtune.api.readiness import StoreProbe
from ragtune.api.security import Authenticator
from ragtune.api.serving import Serving
from ragtune.config import Settings
from ragtune.ingest.worker import Worker
from ragtune.store.conversations import Conversations
from ragtune.store.jobs import JobQueue
from ragtune.system import System


@dataclass
class Services:
    settings: Settings
    system: System
    metrics: ServiceMetrics
    probe: StoreProbe
    queue: JobQueue
    queries: QueryService
    conversations: Conversations
    authenticator: Authenticator
    serving: Serving  # the models served, for /ready and /metrics
    worker: Worker | None = None  # the in-process worker, when RAGTUNE_EMBEDDED_WORKER is on
    worker_stop: threading.Event = field(default_factory=threading.Event)
    worker_thread: threading.Thread | None = None
    started_at: float = field(default_factory=time.time)


def get_services(request: Request) -> Services:
    """The app's services; 503 while it has none: starting, reloading, or after a reload that
    failed to build them (`ragtune.api.reload`, whose reason it gives)."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        unavailable = getattr(request.app.state, "unavailable", None)
        if unavailable:
            raise ApiError(503, "unavailable", unavailable)
        raise ApiError(503, "starting", "the service is still starting; retry in a few seconds")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_owner(request: Request) -> str:
    """Whose conversations a request sees: its API key's hash (set by the auth middleware), "" without keys."""
    return str(request.scope.get("state", {}).get("identity", ""))


OwnerDep = Annotated[str, Depends(get_owner)]
