"""The FastAPI application: `create_app(settings)` wires the pipeline, the job queue, the
in-process worker, security and metrics; `ragtune serve` runs it under uvicorn.

    import uvicorn
    from ragtune.api.app import create_app
    from ragtune.config import Settings

    uvicorn.run(create_app(Settings(data_dir="./data")), host="127.0.0.1", port=8000)

Everything that touches the store, the catalog or the model is built in the lifespan (at
startup, off the event loop), so importing or creating the app is cheap and a failing
dependency stops the server at startup with its own message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount, Route
from starlette.types import Scope

from ragtune.api.deps import Services
from ragtune.api.errors import install_error_handlers
from ragtune.api.metrics import MetricsMiddleware, ServiceMetrics, TimedEmbedder
from ragtune.api.query_service import QueryService
from ragtune.api.readiness import StoreProbe
from ragtune.api.reload import Reloader
from ragtune.api.routes import admin, collections, conversations, documents, health, keys, query, tune, ui
from ragtune.api.security import Authenticator, AuthMiddleware, BodyLimitMiddleware, RateLimiter
from ragtune.api.serving import Serving
from ragtune.api.tune_runner import TuneRunner
from ragtune.config import Settings
from ragtune.embed import Embedder, build_embedder
from ragtune.embed.batching import BatchingEmbedder
from ragtune.ingest.worker import Worker
from ragtune.store.conversations import Conversations
from ragtune.store.jobs import JobQueue
from ragtune.store.keys import KeyStore
from ragtune.store.timed import TimedStore
from ragtune.store.tune_jobs import TuneJobStore
from ragtune.system import build, live_settings, open_catalog, open_store

log = logging.getLogger("ragtune.api")

_MULTIPART_OVERHEAD = 1024 * 1024  # part headers and boundaries around the files of one upload
_WORKER_STOP_SECONDS = 30.0  # at shutdown, how long the current file may take to finish
_ROUTES = (health, documents, collections, query, conversations, keys, admin, tune, ui)


def build_services(
    settings: Settings, metrics: ServiceMetrics, authenticator: Authenticator, embedder: Embedder | None = None
) -> Services:
    """The system (its embedder and store timed) and everything the routes use, for `settings`
    with the promoted models (`ragtune.system.live_settings`)."""
    catalog = open_catalog(settings)
    try:
        settings = live_settings(settings, catalog)
    finally:
        catalog.close()
    # Timed outside the batching: a question's embedding time includes its wait to join a batch.
    timed_embedder = TimedEmbedder(
        BatchingEmbedder(embedder or build_embedder(settings.embedding, settings.resolved_embedder_cache())), metrics
    )
    store = TimedStore(open_store(settings, timed_embedder.dimension), metrics.observe_store_call)
    try:
        system = build(settings, embedder=timed_embedder, store=store)
    except BaseException:
        store.close()  # its lock would outlive the failed start
        raise
    assert system.rag is not None  # built with its generator
    probe = StoreProbe(settings.resolved_milvus_uri())
    queue = JobQueue(system.catalog)
    conversation_store = Conversations(system.catalog)
    service = settings.service
    services = Services(
        settings=settings,
        system=system,
        metrics=metrics,
        probe=probe,
        queue=queue,
        queries=QueryService(system.rag, settings.retrieval.mode, metrics, probe, conversation_store, system.catalog),
        conversations=conversation_store,
        authenticator=authenticator,
        serving=Serving.of(system),
    )
    services.serving.publish(metrics)
    if service.embedded_worker:
        services.worker = Worker(system.ingestor, queue, service, store_ready=probe.check)
    return services


def _start_worker(services: Services) -> None:
    if services.worker is not None:
        services.worker_thread = threading.Thread(
            target=services.worker.run, args=(services.worker_stop,), name="ragtune-worker", daemon=True
        )
        services.worker_thread.start()


def create_app(settings: Settings | None = None, embedder: Embedder | None = None) -> FastAPI:
    """The app for `settings` (default: from the environment); `embedder` reuses a loaded model."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What outlives a reload, which closes the services' catalog: the API keys and their rate
        # limits (the auth middleware answers even while a reload rebuilds the services) and the
        # tuning jobs, on the app's own catalog handle. Undone in reverse, on every way out.
        async with AsyncExitStack() as undo:
            app_catalog = open_catalog(settings)
            undo.callback(app_catalog.close)
            service = settings.service
            authenticator = Authenticator(service.api_keys, KeyStore(app_catalog))
            app.state.authenticator = authenticator
            app.state.limiter = RateLimiter(service.rate_limit_per_minute, service.rate_limit_burst)
            await anyio.to_thread.run_sync(authenticator.refresh)
            app.state.services = await anyio.to_thread.run_sync(
                build_services, settings, metrics, authenticator, embedder
            )

            async def shut_down_the_services() -> None:
                if app.state.services is not None:  # None after a reload that failed to build them
                    await anyio.to_thread.run_sync(_shutdown, app.state.services)

            undo.push_async_callback(shut_down_the_services)
            _start_worker(app.state.services)
            # A reload builds from scratch: a reused `embedder` is the configured one, not a promoted one.
            app.state.reloader = Reloader(
                app.state,
                settings,
                lambda wanted: build_services(wanted, metrics, authenticator),
                _start_worker,
                _shutdown,
            )
            app.state.tune_runner = TuneRunner(TuneJobStore(app_catalog), settings, app.state.reloader.reload)
            undo.callback(app.state.tune_runner.join, _WORKER_STOP_SECONDS)
            yield

    app = FastAPI(
        title="ragtune",
        summary="Answers questions over your documents, with citations.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    for module in _ROUTES:
        app.include_router(module.router)
    app.mount("/ui", StaticFiles(directory=ui.WEB_DIR), name="ui")

    # Added innermost first: metrics see every request (also those refused), CORS answers
    # preflights before auth, auth refuses before any body is read.
    service = settings.service
    upload_limit = service.max_upload_bytes * service.max_files_per_request + _MULTIPART_OVERHEAD
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=service.max_body_bytes,
        limits={("POST", "/v1/documents"): upload_limit, ("POST", "/v1/collections/*/documents"): upload_limit},
    )
    app.add_middleware(AuthMiddleware, exempt_paths=service.auth_exempt_paths, get_auth=_auth_of)
    if service.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=service.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    endpoints = [r for r in app.router.routes if isinstance(r, (Route, Mount))]
    endpoints += [r for module in _ROUTES for r in module.router.routes]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=endpoints)
    return app


def _auth_of(scope: Scope) -> tuple[Authenticator, RateLimiter]:
    state = scope["app"].state
    return state.authenticator, state.limiter


def _shutdown(services: Services) -> None:
    if services.worker is not None and services.worker_thread is not None:
        services.worker_stop.set()
        services.worker.wake()
        services.worker_thread.join(_WORKER_STOP_SECONDS)
        if services.worker_thread.is_alive():
            log.warning("the ingestion worker is still busy; its job will be retried after the next start")
    services.system.close()
