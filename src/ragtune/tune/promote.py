"""Promotion: a tuned model replaces the live one only when its report says it is better.

`promote` decides from the report (`ragtune.tune.report.decide`), and on success records the
model in the catalog (`ragtune.store.promotions`), where `ragtune.system.live_settings` finds
it: every process built afterwards, and a running service after ``POST /v1/admin/reload``,
serves it. An embedder is promoted together with the vectors it needs: the collection is
re-embedded with it first (`ragtune.ingest.reembed.reembed`), so the index and the model
switch together. An adapter needs nothing but its record.
"""

from __future__ import annotations

from contextlib import ExitStack, closing
from dataclasses import asdict
from pathlib import Path

from ragtune.config import Settings
from ragtune.embed import build_embedder
from ragtune.ingest.reembed import reembed
from ragtune.store.promotions import Promotions
from ragtune.system import System, build, open_catalog
from ragtune.tune.report import Decision, TuneReport, decide


class PromotionError(ValueError):
    """The report's model cannot be promoted as it is (missing or not a model of its kind)."""


def check_model(report: TuneReport) -> None:
    """A PromotionError unless the report's model directory holds a model of its kind."""
    path = Path(report.model)
    marker = "adapter_config.json" if report.kind == "answerer" else "config.json"
    if not (path / marker).is_file():
        raise PromotionError(f"{path} holds no {report.kind} model ({marker} is missing); was it moved or deleted?")


def check_promotable(settings: Settings, kind: str) -> None:
    """A PromotionError when the settings name the model of `kind` themselves: it would win over the promotion."""
    pinned = (
        "model" in settings.embedding.model_fields_set
        if kind == "embedder"
        else "adapter" in settings.llm.model_fields_set
    )
    if pinned:
        name = "RAGTUNE_EMBEDDING_MODEL" if kind == "embedder" else "RAGTUNE_LLM_ADAPTER"
        raise PromotionError(
            f"{name} is set explicitly (environment, .env or config file), and an explicit setting wins over a "
            "promotion: unset it to promote, or set it to the tuned model yourself"
        )


def promote(
    settings: Settings,
    report: TuneReport,
    margin: float = 0.01,
    min_gain: float = 0.0,
    progress: bool | None = None,
    system: System | None = None,
) -> Decision:
    """Promotes `report.model` if `decide` allows it; sets the report's decision and `promoted`.

    `system`: the open system to promote in (the service's, which holds Milvus Lite's lock);
    without one, the settings' index is opened for the time it takes."""
    check_model(report)
    check_promotable(settings, report.kind)
    decision = decide(report, margin, min_gain)
    report.decision = decision
    if not decision.promote:
        return decision
    with ExitStack() as stack:
        if report.kind == "embedder":
            embedding = settings.embedding.model_copy(update={"model": str(Path(report.model).resolve())})
            embedder = build_embedder(embedding, settings.resolved_embedder_cache())
            if system is None:
                system = stack.enter_context(build(settings, embedder=embedder, generator=False, check_vectors=False))
            reembed(system.catalog, system.store, embedder, progress)
            path = embedding.model
        else:
            path = str(Path(report.model).resolve())
        catalog = system.catalog if system is not None else stack.enter_context(closing(open_catalog(settings)))
        Promotions(catalog).record(settings.store.collection, report.kind, path, asdict(report))
    report.promoted = True
    return decision
