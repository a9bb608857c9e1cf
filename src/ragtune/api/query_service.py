"""Questions over HTTP: answers, retrieval only, Server-Sent Events and the OpenAI shapes.

A stream is started before the response is: the question check, the retrieval and the
generator's first piece run first, so an unusable question or an unreachable store is a
proper HTTP error rather than a stream that breaks off. The events of POST /v1/query are
``token`` (answer text, in order, as the generator writes it) and a last ``done`` carrying
the whole response (citations, retrieved chunks, timings); a failure after the first byte
is an ``error`` event with the usual error body.

    >>> from ragtune.api.query_service import tokens, sse
    >>> tokens("Milvus stores vectors [1].")
    ['Milvus ', 'stores ', 'vectors ', '[1].']
    >>> sse("token", {"text": "Hi"})
    'event: token\\ndata: {"text":"Hi"}\\n\\n'
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from ragtune.api.errors import error_body
from ragtune.api.metrics import ServiceMetrics
from ragtune.api.readiness import StoreProbe
from ragtune.api.schemas import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    ChatCompletionMessage,
    ChatCompletionRequest,
    CitationOut,
    QueryRequest,
    QueryResponse,
    RetrievedChunk,
    TokenEvent,
    Usage,
)
from ragtune.config import RetrievalMode
from ragtune.pipeline import RagPipeline
from ragtune.types import Answer, Filters, check_question

log = logging.getLogger("ragtune.api")

MODEL_ID = "ragtune"
_TOKEN = re.compile(r"\S+\s*|\s+")


def tokens(text: str) -> list[str]:
    """Words with their trailing whitespace: joined they give `text` back exactly."""
    return _TOKEN.findall(text)


def sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def sources_block(citations: list[CitationOut]) -> str:
    """The source list appended to a chat answer, for clients that only show `content`."""
    if not citations:
        return ""
    lines = [f"[{c.number}] {c.source}" + (f", page {c.page}" if c.page else "") for c in citations]
    return "\n\nSources:\n" + "\n".join(lines)


def completion_tokens(answer: Answer) -> int:
    """The generator's own count when it reports one, else the answer's words."""
    return int(answer.usage.get("completion_tokens", len(answer.text.split())))


class _WordBudget:
    """Cuts streamed text at `limit` words (the client's max_tokens), across pieces."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.used, self.exhausted = limit, 0, False

    def take(self, text: str) -> str:
        words = tokens(text)
        if self.limit is not None and self.used + len(words) > self.limit:
            words, self.exhausted = words[: self.limit - self.used], True
        self.used += len(words)
        return "".join(words)


class QueryService:
    """Runs questions through the pipeline and records their metrics."""

    def __init__(
        self, rag: RagPipeline, default_mode: RetrievalMode, metrics: ServiceMetrics, probe: StoreProbe
    ) -> None:
        self.rag, self.default_mode, self.metrics, self.probe = rag, default_mode, metrics, probe

    # --- POST /v1/query ------------------------------------------------------------------
    def query(self, request: QueryRequest) -> QueryResponse:
        if request.retrieve_only:
            return self._retrieve(request)
        mode = self._mode(request)
        self.probe.require()
        answer = self.rag.ask(request.question, request.top_k, mode, self._filters(request))
        self._observe(answer, mode)
        return QueryResponse.of(answer)

    def query_events(self, request: QueryRequest) -> Iterator[str]:
        """The SSE stream: token…, done; started (see the module docstring) before returning."""
        mode = self._mode(request)
        items = self._start(request.question, request, mode)

        def events() -> Iterator[str]:
            try:
                for item in items:
                    if isinstance(item, str):
                        yield sse("token", TokenEvent(text=item).model_dump())
                    else:
                        self._observe(item, mode)
                        yield sse("done", QueryResponse.of(item).model_dump(mode="json"))
            except Exception as exc:  # the 200 is sent: a failure can only be reported as an event
                log.exception("answer stream failed")
                yield sse("error", error_body("stream_failed", f"the answer stopped: {type(exc).__name__}: {exc}"))

        return events()

    # --- POST /v1/chat/completions -------------------------------------------------------
    def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        self.probe.require()
        answer = self.rag.ask(request.question())
        self._observe(answer, self.default_mode)
        citations = [CitationOut.of(c) for c in answer.citations]
        full = answer.text + sources_block(citations)
        budget = _WordBudget(request.max_completion_tokens or request.max_tokens)
        content = budget.take(full).rstrip() if budget.limit is not None else full
        prompt = sum(len(tokens(m.text())) for m in request.messages)
        completion = budget.used if budget.exhausted else completion_tokens(answer)
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=request.model,
            choices=[
                ChatCompletionChoice(
                    message=ChatCompletionMessage(content=content),
                    finish_reason="length" if budget.exhausted else "stop",
                )
            ],
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
            citations=citations,
        )

    def chat_chunks(self, request: ChatCompletionRequest) -> Iterator[str]:
        """OpenAI's streaming format: a role delta, content deltas (the answer as it is
        written, then its source list), a final chunk with finish_reason and the citations,
        and ``data: [DONE]``."""
        mode = self.default_mode
        items = self._start(request.question(), None, mode)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        budget = _WordBudget(request.max_completion_tokens or request.max_tokens)

        def chunk(
            delta: ChatCompletionDelta, finish: str | None = None, citations: list[CitationOut] | None = None
        ) -> str:
            body = ChatCompletionChunk(
                id=completion_id,
                created=created,
                model=request.model,
                choices=[ChatCompletionChunkChoice(delta=delta, finish_reason=finish)],
                citations=citations,
            )
            return f"data: {body.model_dump_json()}\n\n"

        def stream() -> Iterator[str]:
            yield chunk(ChatCompletionDelta(role="assistant", content=""))
            citations: list[CitationOut] | None = None
            try:
                for item in items:
                    if isinstance(item, Answer):
                        self._observe(item, mode)
                        citations = [CitationOut.of(c) for c in item.citations]
                        item = sources_block(citations)
                    text = budget.take(item)
                    if text:
                        yield chunk(ChatCompletionDelta(content=text))
                    if budget.exhausted:
                        break  # closing `items` stops the generator: no tokens past max_tokens
            except Exception as exc:
                log.exception("chat completion stream failed")
                yield f"data: {json.dumps(error_body('stream_failed', f'the answer stopped: {type(exc).__name__}: {exc}'))}\n\n"
                return
            yield chunk(ChatCompletionDelta(), "length" if budget.exhausted else "stop", citations)
            yield "data: [DONE]\n\n"

        return stream()

    # --- helpers -------------------------------------------------------------------------
    def _start(self, question: str, request: QueryRequest | None, mode: RetrievalMode) -> Iterable[str | Answer]:
        """RagPipeline.stream, advanced to its first item so that its early failures raise here."""
        self.probe.require()
        items = self.rag.stream(question, request.top_k if request else None, mode, self._filters(request))
        first = next(items)
        return itertools.chain([first], items)

    def _retrieve(self, request: QueryRequest) -> QueryResponse:
        # The rules of RagPipeline.ask, which retrieval-only requests do not go through.
        question = check_question(request.question, self.rag.max_question_chars)
        self.probe.require()
        mode = self._mode(request)
        started = time.perf_counter()
        hits = self.rag.retriever.run(question, request.top_k, mode, self._filters(request))
        seconds = time.perf_counter() - started
        self.metrics.retrieval.labels(mode=mode).observe(seconds)
        return QueryResponse(
            question=question,
            answer=None,
            abstained=False,
            citations=[],
            retrieved=[RetrievedChunk.of(h) for h in hits],
            timings_ms={"retrieve": round(seconds * 1000, 2)},
        )

    def _observe(self, answer: Answer, mode: RetrievalMode) -> None:
        generator = self.rag.generator.name
        self.metrics.retrieval.labels(mode=mode).observe(answer.timings_ms["retrieve"] / 1000)
        self.metrics.generation.labels(generator=generator).observe(answer.timings_ms["generate"] / 1000)
        self.metrics.generation_tokens.labels(generator=generator).inc(completion_tokens(answer))

    def _mode(self, request: QueryRequest | None) -> RetrievalMode:
        return (request.mode if request else None) or self.default_mode

    @staticmethod
    def _filters(request: QueryRequest | None) -> Filters | None:
        return request.filters.to_filters() if request and request.filters else None
