"""The pipeline: question → retrieve → generate → `Answer` (text, citations, timings).

Every component is built from one `Settings` object here, in one place, so the CLI, the
API and the evaluation compose exactly the same system.

    from ragtune.config import Settings
    from ragtune.rag import Pipeline

    with Pipeline.from_settings(Settings(data_dir="./data")) as rag:
        rag.ingestor.ingest_paths([Path("docs/")])
        answer = rag.ask("How do I install ragtune?")
        print(answer.text, [c.source for c in answer.citations])
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ragtune.config import RetrievalMode, Settings
from ragtune.embed import Embedder, build_embedder
from ragtune.generate.base import Answer, Generator, resolve_citations
from ragtune.generate.extractive import ExtractiveAnswerer
from ragtune.ingest.pipeline import Ingestor
from ragtune.retrieve.retriever import CrossEncoderReranker, Retriever
from ragtune.store.catalog import Catalog
from ragtune.store.milvus import Filters, MilvusStore


class QuestionError(ValueError):
    """The question itself is unusable (empty, too long)."""


def build_generator(settings: Settings, embedder: Embedder) -> Generator:
    return ExtractiveAnswerer(embedder, settings.min_relevance, settings.answer_sentences)


@dataclass
class Pipeline:
    settings: Settings
    embedder: Embedder
    store: MilvusStore
    catalog: Catalog
    retriever: Retriever
    generator: Generator
    ingestor: Ingestor

    @classmethod
    def from_settings(cls, settings: Settings, embedder: Embedder | None = None) -> "Pipeline":
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(settings.resolved_catalog_url())
        embedder = embedder or build_embedder(settings)
        store = MilvusStore(settings.resolved_milvus_uri(), settings.collection, embedder.dimension, settings.milvus_token)
        reranker = CrossEncoderReranker(settings.reranker_model, settings.embedding_device) if settings.reranker_model else None
        retriever = Retriever(store, embedder, settings, reranker)
        return cls(
            settings,
            embedder,
            store,
            catalog,
            retriever,
            build_generator(settings, embedder),
            Ingestor(settings, embedder, store, catalog),
        )

    def ask(
        self,
        question: str,
        top_k: int | None = None,
        mode: RetrievalMode | None = None,
        filters: Filters | None = None,
    ) -> Answer:
        question = question.strip()
        if not question:
            raise QuestionError("the question is empty; ask something, e.g. ragtune ask \"How do I install it?\"")
        if len(question) > self.settings.max_question_chars:
            raise QuestionError(
                f"the question is {len(question)} characters, over the limit of "
                f"{self.settings.max_question_chars} (RAGTUNE_MAX_QUESTION_CHARS)"
            )
        started = time.perf_counter()
        hits = self.retriever.run(question, top_k, mode, filters)
        retrieved = time.perf_counter()
        generation = self.generator.generate(question, hits)
        generated = time.perf_counter()
        text, citations = resolve_citations(generation, hits)
        return Answer(
            question=question,
            text=text,
            citations=citations,
            abstained=generation.abstained,
            hits=hits,
            timings_ms={
                "retrieve": round((retrieved - started) * 1000, 2),
                "generate": round((generated - retrieved) * 1000, 2),
                "total": round((generated - started) * 1000, 2),
            },
            usage=generation.usage,
        )

    def close(self) -> None:
        self.store.close()
        self.catalog.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
