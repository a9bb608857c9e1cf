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

from contextlib import closing
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
from ragtune.store.promotions import Promotions


def open_catalog(settings: Settings) -> Catalog:
    """The catalog database named by the settings (SQLite in the data directory by default)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Catalog(settings.resolved_catalog_url(), settings.store.collection)


def live_settings(settings: Settings, catalog: Catalog) -> Settings:
    """`settings` with the promoted embedder and adapter (`ragtune tune … --promote`) filled
    in, where the settings do not name their own: a model you set explicitly, even an empty
    adapter, always wins over a promotion."""
    promotions = Promotions(catalog)
    collection = settings.store.collection
    update: dict[str, object] = {}
    embedder = promotions.current(collection, "embedder")
    if embedder is not None and "model" not in settings.embedding.model_fields_set:
        update["embedding"] = settings.embedding.model_copy(update={"model": embedder.path})
    adapter = promotions.current(collection, "answerer")
    if adapter is not None and "adapter" not in settings.llm.model_fields_set:
        update["llm"] = settings.llm.model_copy(update={"adapter": adapter.path})
    return settings.model_copy(update=update) if update else settings


def open_store(
    settings: Settings, dimension: int, upgrade_server: bool = False, catalog: Catalog | None = None
) -> MilvusStore:
    """The store collection named by the settings, for vectors of `dimension`, in the Milvus
    collection the catalog names live (``ragtune reindex`` switches it); `catalog`: the open
    catalog to ask, else the settings' is opened for the question (see `MilvusStore` for
    `upgrade_server`)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = settings.store
    if catalog is None:
        with closing(open_catalog(settings)) as opened:
            physical = opened.physical(store.collection)
    else:
        physical = catalog.physical(store.collection)
    return MilvusStore(
        settings.resolved_milvus_uri(),
        store.collection,
        dimension,
        store.milvus_token,
        timeout=store.milvus_timeout_seconds,
        upgrade_server=upgrade_server,
        physical=physical,
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


def build_pipeline(settings: Settings, retriever: Retriever) -> RagPipeline:
    """The answering pipeline over `retriever`: the configured generator, and what rewrites follow-ups."""
    answerer = build_generator(settings, retriever.embedder)
    # An LLM that answers also rewrites follow-ups and writes paraphrases; without one, rules condense.
    condenser: Condenser = LlmCondenser(answerer) if isinstance(answerer, ChatModel) else RuleCondenser()
    paraphraser = Paraphraser(answerer) if isinstance(answerer, ChatModel) else None
    return RagPipeline(retriever, answerer, settings.answer.max_question_chars, condenser, paraphraser)


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
        settings = live_settings(settings, catalog)
        embedder = embedder or build_embedder(settings.embedding, settings.resolved_embedder_cache())
        if store is None:
            # The collection opens as its vectors are: `check_embedder` then says what differs
            # from the embedder, and a reindex may replace them with vectors of another dimension.
            recorded = catalog.embedder(settings.store.collection)
            dimension = recorded.dimension if recorded is not None else embedder.dimension
            store = opened = open_store(settings, dimension, catalog=catalog)
        if check_vectors:
            check_embedder(catalog, store, embedder)
        retrieval = settings.retrieval
        reranker = (
            CrossEncoderReranker(retrieval.reranker_model, settings.embedding.device)
            if retrieval.reranker_model
            else None
        )
        retriever = Retriever(store, embedder, retrieval, reranker)
        rag = build_pipeline(settings, retriever) if generator else None
    except BaseException:  # a store or catalog left open would keep its lock
        if opened is not None:
            opened.close()
        catalog.close()
        raise
    ingestor = Ingestor(settings.ingest, embedder, store, catalog)
    return System(settings, embedder, store, catalog, retriever, ingestor, rag)
