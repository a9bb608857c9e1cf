"""Prometheus metrics, one registry per app (two apps in one process never share counters).

The names are a contract: the alerts and Grafana panels under deploy/ query exactly these.

| metric | type | labels |
|---|---|---|
| ragtune_http_requests_total | counter | route (the template, e.g. /v1/documents/{id}), method, status |
| ragtune_http_request_duration_seconds | histogram | route, method |
| ragtune_retrieval_duration_seconds | histogram | mode |
| ragtune_embedding_duration_seconds | histogram | |
| ragtune_vectorstore_query_duration_seconds | histogram | operation |
| ragtune_generation_duration_seconds | histogram | generator |
| ragtune_generation_tokens_total | counter | generator |
| ragtune_ingest_jobs | gauge | state (queued, running, done, failed) |
| ragtune_documents | gauge | status (pending, indexed, failed) |
| ragtune_chunks_indexed | gauge | |
| ragtune_ready | gauge | |
| ragtune_serving_info | gauge (1) | embedder, embedder_backend, embedder_promoted, generator, adapter, adapter_promoted |

Embedding and vector-store calls are timed by wrapping the embedder and the store
(`TimedEmbedder`, `ragtune.store.timed.TimedStore` reporting to `observe_store_call`) before
the system is built, so ingestion inside the server is measured too. The gauges
are read from the catalog when Prometheus scrapes.

    >>> from ragtune.api.metrics import ServiceMetrics
    >>> metrics = ServiceMetrics()
    >>> metrics.retrieval.labels(mode="hybrid").observe(0.012)
    >>> b"ragtune_retrieval_duration_seconds_count{mode=\\"hybrid\\"} 1.0" in metrics.render()
    True
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragtune.embed import Embedder

# Seconds. Requests span a health check (<1 ms) to an upload or a generated answer (seconds).
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Retrieval, embedding of a question and vector-store searches are milliseconds; inserts and
# batch embeddings during ingestion reach seconds.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Generation by an LLM takes seconds; the extractive answerer milliseconds.
_GENERATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED_ROUTE = "unmatched"


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "ragtune_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "ragtune_http_request_duration_seconds",
            "HTTP request latency until the last byte.",
            ["route", "method"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.retrieval = Histogram(
            "ragtune_retrieval_duration_seconds",
            "Retrieval (embed, search, fuse) per question.",
            ["mode"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.embedding = Histogram(
            "ragtune_embedding_duration_seconds",
            "One embedding call (a question, with its wait to join a batch, or a batch of chunks).",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.vectorstore = Histogram(
            "ragtune_vectorstore_query_duration_seconds",
            "One vector-store call.",
            ["operation"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.generation = Histogram(
            "ragtune_generation_duration_seconds",
            "Answer generation per question.",
            ["generator"],
            buckets=_GENERATION_BUCKETS,
            registry=r,
        )
        self.generation_tokens = Counter(
            "ragtune_generation_tokens",
            "Answer tokens generated (words for the extractive answerer).",
            ["generator"],
            registry=r,
        )
        self.ingest_jobs = Gauge("ragtune_ingest_jobs", "Ingestion jobs by state.", ["state"], registry=r)
        self.documents = Gauge("ragtune_documents", "Documents in the catalog by status.", ["status"], registry=r)
        self.chunks = Gauge("ragtune_chunks_indexed", "Chunks of indexed documents.", registry=r)
        self.ready = Gauge("ragtune_ready", "1 when the readiness checks pass, else 0.", registry=r)
        self.serving = Gauge(
            "ragtune_serving_info",
            "The models served (value 1): the embedder, the generator and its LoRA adapter, and which were promoted.",
            ["embedder", "embedder_backend", "embedder_promoted", "generator", "adapter", "adapter_promoted"],
            registry=r,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route=route, method=method, status=str(status)).inc()
        self.http_duration.labels(route=route, method=method).observe(seconds)

    def observe_store_call(self, operation: str, seconds: float) -> None:
        self.vectorstore.labels(operation=operation).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedEmbedder:
    """An Embedder that records each call in ragtune_embedding_duration_seconds."""

    def __init__(self, inner: Embedder, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.backend = inner.backend
        self.dimension = inner.dimension
        self._histogram = metrics.embedding

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts, show_progress)
        finally:
            self._histogram.observe(time.perf_counter() - started)


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The matched route's path template; never the raw path (its ids would explode the label set)."""
    route = scope.get("route")
    if isinstance(route, (Route, Mount)):
        return _template(route)
    # Not routed (refused by auth or limits before routing, or no route): match it here; a
    # path matched only by another method's route (405) is labelled with that route.
    partial = UNMATCHED_ROUTE
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return _template(candidate)
        if match is Match.PARTIAL and partial == UNMATCHED_ROUTE:
            partial = _template(candidate)
    return partial


def _template(route: BaseRoute) -> str:
    return f"{route.path}/{{path}}" if isinstance(route, Mount) else getattr(route, "path", UNMATCHED_ROUTE)


class MetricsMiddleware:
    """Counts and times every HTTP request, including those refused by auth or limits."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # every endpoint, for requests answered before routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before responding, the server answers 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe_request(
                route_template(scope, self.routes), scope["method"], status, time.perf_counter() - started
            )
