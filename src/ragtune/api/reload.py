"""`POST /v1/admin/reload`: rebuild what a promotion changed, from the same settings the
service started with (`ragtune.system.live_settings` adds the promotions):

- only the adapter: a new answering pipeline is built beside the old one and swapped in, so
  queries never stop; requests already running finish on the old one. If it fails to build,
  the old one goes on serving;
- the embedder: its vectors were re-embedded into a new collection (`ragtune reindex`), so the
  store is reopened too. Milvus Lite allows one open store per process, so the old services
  close first and requests answer 503 ``starting`` until the new ones are built (seconds).
  There is nothing to fall back to: the promotion dropped the previous embedder's vectors. If
  the new services fail to build, requests answer 503 ``unavailable`` with the reason until a
  later reload (or a restart) builds them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ragtune.api.deps import Services
from ragtune.api.serving import Serving
from ragtune.config import Settings
from ragtune.system import build_pipeline, live_settings

log = logging.getLogger("ragtune.api")


@dataclass(frozen=True)
class ReloadResult:
    reloaded: list[str]  # what was rebuilt: "embedder", "adapter"; empty when nothing changed
    serving: Serving


class ReloadError(RuntimeError):
    """The promoted models did not load; the message says what the service serves meanwhile."""


class Reloader:
    """Rebuilds the app's services for the current promotions; one reload at a time."""

    def __init__(
        self,
        state: Any,  # the app's `state`, whose `services` the routes read
        settings: Settings,
        build_services: Callable[[Settings], Services],
        start: Callable[[Services], None],
        stop: Callable[[Services], None],
    ) -> None:
        self._state, self._settings = state, settings
        self._build, self._start, self._stop = build_services, start, stop
        self._lock = threading.Lock()

    def reload(self) -> ReloadResult:
        with self._lock:
            services: Services | None = self._state.services
            if services is None:  # an earlier reload failed to build them: try again
                return ReloadResult(["embedder", "adapter"], self._rebuild(None))
            current = services.system.settings
            wanted = live_settings(self._settings, services.system.catalog)
            if wanted.embedding != current.embedding:
                return ReloadResult(["embedder", "adapter"], self._rebuild(services))
            if wanted.llm != current.llm:
                return ReloadResult(["adapter"], self._swap_pipeline(services, wanted))
            return ReloadResult([], services.serving)

    def _swap_pipeline(self, services: Services, wanted: Settings) -> Serving:
        system = services.system
        try:
            rebuilt = build_pipeline(wanted, system.retriever)
        except Exception as exc:
            log.exception("the promoted adapter did not load; the previous one goes on serving")
            raise ReloadError(
                f"the promoted adapter did not load ({str(exc)[:300]}); the service goes on with the previous one"
            ) from exc
        old, system.rag = system.rag, rebuilt
        system.settings = wanted
        services.queries.rag = system.rag
        services.serving = Serving.of(system)
        services.serving.publish(services.metrics)
        if old is not None:
            old.close()
        log.info("reloaded the answering pipeline: adapter %r", wanted.llm.adapter)
        return services.serving

    def _rebuild(self, services: Services | None) -> Serving:
        self._state.services = None  # requests answer 503 `starting` meanwhile
        self._state.unavailable = None
        if services is not None:
            self._stop(services)
        try:
            rebuilt = self._build(self._settings)  # with the promotions recorded now
        except Exception as exc:
            log.exception("the promoted models did not load; the service answers 503 until a reload loads them")
            self._state.unavailable = (
                f"the promoted models did not load ({str(exc)[:300]}); the index holds the promoted embedder's "
                "vectors only. Restore the model or promote another (ragtune tune status, ragtune tune promote), "
                "then POST /v1/admin/reload or restart the service"
            )
            raise ReloadError(self._state.unavailable) from exc
        self._start(rebuilt)
        self._state.services = rebuilt
        log.info("reloaded: embedder %s, adapter %r", rebuilt.serving.embedder, rebuilt.serving.adapter)
        return rebuilt.serving
