"""Probes for the orchestrator and the scrape endpoint for Prometheus."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ragtune.api.deps import ServicesDep
from ragtune.api.readiness import readiness
from ragtune.api.schemas import HealthResponse, ReadinessResponse, ServingOut

router = APIRouter(tags=["probes"])


@router.get("/health", response_model=HealthResponse, summary="Liveness: the process answers")
async def health() -> HealthResponse:
    # No dependencies on purpose: a store outage must not get healthy pods restarted.
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "A dependency is down; `error` says which."}},
    summary="Readiness: store, catalog and embedding model usable; which models are served",
)
def ready(services: ServicesDep) -> JSONResponse:
    result = readiness(services.system, services.probe)
    result.serving = ServingOut(**asdict(services.serving))
    services.metrics.ready.set(1 if result.ready else 0)
    return JSONResponse(result.model_dump(mode="json"), status_code=200 if result.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)")
def metrics(services: ServicesDep) -> Response:
    m = services.metrics
    for state, n in services.queue.counts().items():
        m.ingest_jobs.labels(state=state).set(n)
    counts = services.system.catalog.counts()
    for status in ("pending", "indexed", "failed"):
        m.documents.labels(status=status).set(counts[status])
    m.chunks.set(counts["chunks"])
    # /ready's last verdict, so a scrape does not wait on a frozen store; checked once (bounded) before any probe
    ready = services.probe.last_ready
    if ready is None:
        ready = readiness(services.system, services.probe).ready
    m.ready.set(1 if ready else 0)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
