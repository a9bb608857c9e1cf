"""One place that builds ragtune from `Settings`: the CLI, the API, evaluation and the trainer
all get their services from `build`, so they compose exactly the same system.

    >>> import tempfile
    >>> from ragtune.config import Settings
    >>> from ragtune.system import build
    >>> with build(Settings(data_dir=tempfile.mkdtemp()), generator=False) as system:
    ...     system.store.count(), system.rag is None
    (0, True)

``generator=False`` builds no answer generator (evaluation of retrieval, the trainer's
retrieval): an LLM backend is then never loaded. ``embedder=`` reuses a loaded model and
``store=`` a store the caller wrapped (the service times every store call). The collection
must hold vectors of the configured embedder (`ragtune.ingest.reembed.check_embedder`);
only ``ragtune reindex``, which replaces them, builds with ``check_vectors=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ragtune.config import Settings
from ragtune.embed import Embedder, build_embedder
from ragtune.generate.base import ChatModel
from ragtune.generate.registry import build_generator
from ragtune.generate.rewrite import Condenser, LlmCondenser, Paraphraser, RuleCondenser
from ragtune.ingest.indexer import Ingestor
from ragtune.ingest.reembed import check_embedder
from ragtune.ingest.sandbox import close_shared
from ragtune.pipeline import RagPipeline
from ragtune.retrieve.retriever import CrossEncoderReranker, Retriever
from ragtune.store.base import VectorStore
from ragtune.store.catalog import Catalog
from ragtune.store.milvus import MilvusStore


def open_catalog(settings: Settings) -> Catalog:
    """The catalog database named by the settings (SQLite in the data directory by default)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Catalog(settings.resolved_catalog_url(), settings.store.collection)


def open_store(settings: Settings, dimension: int, upgrade_server: bool = False) -> MilvusStore:
    """The Milvus collection named by the settings, for vectors of `dimension` (see
    `MilvusStore` for `upgrade_server`)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = settings.store
    return MilvusStore(
        settings.resolved_milvus_uri(),
        store.collection,
        dimension,
        store.milvus_token,
        timeout=store.milvus_timeout_seconds,
        upgrade_server=upgrade_server,
    )


@dataclass
class System:
    """The services ragtune is made of; `close` releases them (the store's lock, connections)."""

    settings: Settings
    embedder: Embedder
    store: VectorStore
    catalog: Catalog
    retriever: Retriever
    ingestor: Ingestor
    rag: RagPipeline | None  # None when built with generator=False

    def close(self) -> None:
        close_shared()  # the parsing child process
        if self.rag is not None:
            self.rag.close()
        self.store.close()
        self.catalog.close()

    def __enter__(self) -> System:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def build(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
    generator: bool = True,
    check_vectors: bool = True,
) -> System:
    """Every service for `settings`; `embedder` and `store` replace the ones it would build."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    catalog = open_catalog(settings)
    opened: VectorStore | None = None
    try:
        embedder = embedder or build_embedder(settings.embedding, settings.resolved_embedder_cache())
        if store is None:
            store = opened = open_store(settings, embedder.dimension)
        if check_vectors:
            check_embedder(catalog, store, embedder)
        retrieval = settings.retrieval
        reranker = (
            CrossEncoderReranker(retrieval.reranker_model, settings.embedding.device)
            if retrieval.reranker_model
            else None
        )
        retriever = Retriever(store, embedder, retrieval, reranker)
        rag = None
        if generator:
            answerer = build_generator(settings, embedder)
            # An LLM that answers also rewrites follow-ups and writes paraphrases; without one, rules condense.
            condenser: Condenser = LlmCondenser(answerer) if isinstance(answerer, ChatModel) else RuleCondenser()
            paraphraser = Paraphraser(answerer) if isinstance(answerer, ChatModel) else None
            rag = RagPipeline(retriever, answerer, settings.answer.max_question_chars, condenser, paraphraser)
    except BaseException:  # a store or catalog left open would keep its lock
        if opened is not None:
            opened.close()
        catalog.close()
        raise
    ingestor = Ingestor(settings.ingest, embedder, store, catalog)
    return System(settings, embedder, store, catalog, retriever, ingestor, rag)
