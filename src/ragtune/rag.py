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
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ragtune.config import RetrievalMode, Settings
from ragtune.embed import Embedder, build_embedder
from ragtune.generate.base import Answer, CitationStream, Generation, Generator, StreamingGenerator, resolve_citations
from ragtune.generate.extractive import ExtractiveAnswerer
from ragtune.ingest.pipeline import Ingestor
from ragtune.retrieve.retriever import CrossEncoderReranker, Retriever
from ragtune.store.catalog import Catalog
from ragtune.store.milvus import Filters, MilvusStore


class QuestionError(ValueError):
    """The question itself is unusable (empty, too long)."""


def build_generator(settings: Settings, embedder: Embedder) -> Generator:
    """The answer generator named by ``settings.generator`` (RAGTUNE_GENERATOR)."""
    if settings.generator == "openai":
        from ragtune.generate.openai_compat import OpenAICompatGenerator

        return OpenAICompatGenerator.from_settings(settings)
    if settings.generator == "local":
        # Imported here: loading an LLM is only paid for by those who configure one.
        from ragtune.generate.local import LocalGenerator

        return LocalGenerator.from_settings(settings)
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
    def from_settings(cls, settings: Settings, embedder: Embedder | None = None) -> Pipeline:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(settings.resolved_catalog_url())
        embedder = embedder or build_embedder(settings)
        store = MilvusStore(
            settings.resolved_milvus_uri(), settings.collection, embedder.dimension, settings.milvus_token
        )
        reranker = (
            CrossEncoderReranker(settings.reranker_model, settings.embedding_device)
            if settings.reranker_model
            else None
        )
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

    def _check_question(self, question: str) -> str:
        question = question.strip()
        if not question:
            raise QuestionError('the question is empty; ask something, e.g. ragtune ask "How do I install it?"')
        if len(question) > self.settings.max_question_chars:
            raise QuestionError(
                f"the question is {len(question)} characters, over the limit of "
                f"{self.settings.max_question_chars} (RAGTUNE_MAX_QUESTION_CHARS)"
            )
        return question

    def ask(
        self,
        question: str,
        top_k: int | None = None,
        mode: RetrievalMode | None = None,
        filters: Filters | None = None,
    ) -> Answer:
        """Retrieve, generate, cite: the last item `stream` yields."""
        *_, answer = self.stream(question, top_k, mode, filters)
        assert isinstance(answer, Answer)
        return answer

    def stream(
        self,
        question: str,
        top_k: int | None = None,
        mode: RetrievalMode | None = None,
        filters: Filters | None = None,
    ) -> Iterator[str | Answer]:
        """`ask`, streamed: yields the answer's text deltas (``str``) as the generator
        writes them, then one final `Answer` (citations, timings, usage).

        Citation markers in the deltas are already renumbered like the final text's
        ([1], [2], … by first use; markers naming no retrieved chunk dropped). The final
        `Answer.text` is authoritative: when the model refuses, it is exactly NOT_FOUND.

            for item in rag.stream("Who created Milvus?"):
                if isinstance(item, str):
                    print(item, end="", flush=True)
                else:
                    answer = item
        """
        question = self._check_question(question)
        started = time.perf_counter()
        hits = self.retriever.run(question, top_k, mode, filters)
        retrieved = time.perf_counter()
        citations_so_far = CitationStream(len(hits))
        if isinstance(self.generator, StreamingGenerator):
            deltas = self.generator.stream(question, hits)
            while True:
                try:
                    delta = next(deltas)
                except StopIteration as done:
                    generation: Generation = done.value
                    break
                renumbered = citations_so_far.feed(delta)
                if renumbered:
                    yield renumbered
        else:
            generation = self.generator.generate(question, hits)
            yield citations_so_far.feed(generation.text)
        rest = citations_so_far.flush()
        if rest:
            yield rest
        generated = time.perf_counter()
        text, citations = resolve_citations(generation, hits)
        yield Answer(
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
        close_generator = getattr(self.generator, "close", None)  # the HTTP backend's connections
        if close_generator is not None:
            close_generator()
        self.store.close()
        self.catalog.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
