"""The RAG pipeline: question → retrieve → generate → `Answer` (text, citations, timings).

from ragtune.system import build

with build(Settings(data_dir="./data")) as system:
    answer = system.rag.ask("How do I install ragtune?")
    print(answer.text, [c.source for c in answer.citations])
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from ragtune.config import RetrievalMode
from ragtune.generate.base import CitationStream, Generation, Generator, StreamingGenerator, resolve_citations
from ragtune.retrieve.retriever import Retriever
from ragtune.types import Answer, Filters, check_question


class RagPipeline:
    """Answers a question from the chunks `retriever` finds, written by `generator`, with citations."""

    def __init__(self, retriever: Retriever, generator: Generator, max_question_chars: int) -> None:
        self.retriever, self.generator, self.max_question_chars = retriever, generator, max_question_chars

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

            for item in system.rag.stream("Who created Milvus?"):
                if isinstance(item, str):
                    print(item, end="", flush=True)
                else:
                    answer = item
        """
        question = check_question(question, self.max_question_chars)
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
