"""Which models the service serves: what /ready and /metrics report, the embedder (and
whether it was promoted by ``ragtune tune embedder --promote``), the generator and its LoRA
adapter. `ragtune.api.reload` changes them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ragtune.api.metrics import ServiceMetrics
from ragtune.store.promotions import Promotions
from ragtune.system import System


@dataclass(frozen=True)
class Serving:
    embedder: str
    embedder_backend: str
    dimension: int
    embedder_promoted_at: datetime | None  # None: configured, not promoted
    generator: str
    adapter: str  # "" when the generator runs no LoRA adapter
    adapter_promoted_at: datetime | None

    @classmethod
    def of(cls, system: System) -> Serving:
        settings, promotions = system.settings, Promotions(system.catalog)
        collection = settings.store.collection
        embedder, adapter = promotions.current(collection, "embedder"), promotions.current(collection, "answerer")
        generator = system.rag.generator.name if system.rag is not None else ""
        adapter_path = settings.llm.adapter if settings.answer.generator == "local" else ""
        return cls(
            embedder=system.embedder.name,
            embedder_backend=system.embedder.backend,
            dimension=system.embedder.dimension,
            embedder_promoted_at=embedder.promoted_at if embedder and embedder.path == system.embedder.name else None,
            generator=generator,
            adapter=adapter_path,
            adapter_promoted_at=adapter.promoted_at if adapter and adapter.path == adapter_path else None,
        )

    def publish(self, metrics: ServiceMetrics) -> None:
        """`ragtune_serving_info`: one series, value 1, whose labels name what is served."""
        metrics.serving.clear()
        metrics.serving.labels(
            embedder=self.embedder,
            embedder_backend=self.embedder_backend,
            embedder_promoted=str(self.embedder_promoted_at is not None).lower(),
            generator=self.generator,
            adapter=self.adapter,
            adapter_promoted=str(self.adapter_promoted_at is not None).lower(),
        ).set(1)
