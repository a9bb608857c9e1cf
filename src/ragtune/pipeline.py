"""The RAG pipeline: question → (rewrite) → retrieve → (expand) → generate → `Answer`.

A question asked in a conversation is first rewritten into a standalone one from the
turns before it (`ragtune.generate.rewrite`); with ``multi_query`` the LLM's paraphrases
are searched beside it and the rankings fused; ``min_relevance`` drops chunks less
similar to the question than that; a context window adds each hit's neighbouring chunks.
``model`` picks which of the generator's `model_names` writes the answer (a LoRA adapter
served by vLLM); the rewrites keep the default model.

from ragtune.system import build

with build(Settings(data_dir="./data")) as system:
    answer = system.rag.ask("How do I install ragtune?")
    print(answer.text, [c.source for c in answer.citations])
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from ragtune.config import RetrievalMode
from ragtune.generate.base import CitationStream, Generation, Generator, StreamingGenerator, resolve_citations
from ragtune.generate.rewrite import Condenser, Paraphraser, RuleCondenser
from ragtune.retrieve.retriever import Retriever
from ragtune.types import Answer, Filters, Hit, Turn, check_question


def search_timings(debug: dict[str, Any], elapsed_ms: float) -> dict[str, float]:
    """``rewrite`` (condensing, paraphrasing: LLM time, when any) apart from ``retrieve``
    (the store and the embedder) in `elapsed_ms`, the time a `RagPipeline.search` took."""
    if "rewrite_ms" not in debug:
        return {"retrieve": round(elapsed_ms, 2)}
    return {"rewrite": debug["rewrite_ms"], "retrieve": round(elapsed_ms - debug["rewrite_ms"], 2)}


class MultiQueryUnavailableError(ValueError):
    """multi_query was asked for, but no LLM backend is configured to write the paraphrases."""


class RagPipeline:
    """Answers a question from the chunks `retriever` finds, written by `generator`, with citations."""

    def __init__(
        self,
        retriever: Retriever,
        generator: Generator,
        max_question_chars: int,
        condenser: Condenser | None = None,
        paraphraser: Paraphraser | None = None,
    ) -> None:
        self.retriever, self.generator, self.max_question_chars = retriever, generator, max_question_chars
        self.condenser = condenser or RuleCondenser()
        self.paraphraser = paraphraser

    def ask(
        self,
        question: str,
        top_k: int | None = None,
        mode: RetrievalMode | None = None,
        filters: Filters | None = None,
        *,
        history: Sequence[Turn] = (),
        min_relevance: float | None = None,
        multi_query: bool = False,
        model: str | None = None,
    ) -> Answer:
        """Retrieve, generate, cite: the last item `stream` yields."""
        *_, answer = self.stream(
            question,
            top_k,
            mode,
            filters,
            history=history,
            min_relevance=min_relevance,
            multi_query=multi_query,
            model=model,
        )
        assert isinstance(answer, Answer)
        return answer

    def search(
        self,
        question: str,
        top_k: int | None = None,
        mode: RetrievalMode | None = None,
        filters: Filters | None = None,
        *,
        history: Sequence[Turn] = (),
        min_relevance: float | None = None,
        multi_query: bool = False,
    ) -> tuple[str, list[Hit], dict[str, Any]]:
        """The question as searched (standalone), the chunks found for it, and how it was rewritten."""
        question = check_question(question, self.max_question_chars)
        if multi_query and self.paraphraser is None:
            raise MultiQueryUnavailableError(
                "multi_query needs an LLM backend to write the paraphrases; set RAGTUNE_GENERATOR=openai or local"
            )
        debug: dict[str, Any] = {}
        started = time.perf_counter()
        if history:
            rewrite = self.condenser.condense(question, history)
            debug["condense"] = rewrite.debug
            # A rewrite past the length limit (a long follow-up joined to a long question) is not used.
            if rewrite.question.strip() and len(rewrite.question) <= self.max_question_chars:
                question = rewrite.question.strip()
        paraphrases: list[str] = []
        if multi_query:
            assert self.paraphraser is not None
            paraphrases, debug["multi_query"] = self.paraphraser.paraphrase(question)
        if history or multi_query:
            debug["rewrite_ms"] = round((time.perf_counter() - started) * 1000, 2)
        if paraphrases:
            hits = self.retriever.run_fused([question, *paraphrases], top_k, mode, filters)
        else:
            hits = self.retriever.run(question, top_k, mode, filters)
        if min_relevance is not None:
            hits = self.retriever.relevant(question, hits, min_relevance)
        return question, hits, debug

    def stream(
        self,
        question: str,
        top_k: int | None = None,
        mode: RetrievalMode | None = None,
        filters: Filters | None = None,
        *,
        history: Sequence[Turn] = (),
        min_relevance: float | None = None,
        multi_query: bool = False,
        model: str | None = None,
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
        asked = check_question(question, self.max_question_chars)
        started = time.perf_counter()
        question, found, debug = self.search(
            asked, top_k, mode, filters, history=history, min_relevance=min_relevance, multi_query=multi_query
        )
        hits = self.retriever.expand(found)
        retrieved = time.perf_counter()
        citations_so_far = CitationStream(len(hits))
        if isinstance(self.generator, StreamingGenerator):
            deltas = self.generator.stream(question, hits, model)
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
            generation = self.generator.generate(question, hits, model)
            yield citations_so_far.feed(generation.text)
        rest = citations_so_far.flush()
        if rest:
            yield rest
        generated = time.perf_counter()
        text, citations = resolve_citations(generation, hits)
        yield Answer(
            question=asked,
            text=text,
            citations=citations,
            abstained=generation.abstained,
            hits=hits,
            timings_ms={
                **search_timings(debug, (retrieved - started) * 1000),
                "generate": round((generated - retrieved) * 1000, 2),
                "total": round((generated - started) * 1000, 2),
            },
            usage=generation.usage,
            rewritten_question=question if question != asked else None,
            debug=debug,
        )

    def close(self) -> None:
        close_generator = getattr(self.generator, "close", None)  # the HTTP backend's connections
        if close_generator is not None:
            close_generator()
