"""Questions over HTTP: answers, retrieval only, Server-Sent Events and the OpenAI shapes.

A stream is started before the response is: the question check, the retrieval and the
generator's first piece run first, so an unusable question or an unreachable store is a
proper HTTP error rather than a stream that breaks off. The events of POST /v1/query are
``token`` (answer text, in order, as the generator writes it) and a last ``done`` carrying
the whole response (citations, retrieved chunks, timings); a failure after the first byte
is an ``error`` event with the usual error body.

A request's ``model`` picks the LLM that writes the answer: ``ragtune`` (the name this service
advertises) or none means the generator's default (RAGTUNE_LLM_MODEL), another name must be one
of the generator's `model_names` (RAGTUNE_LLM_MODELS), else the request is a 400 naming them.

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

from ragtune.api.errors import ApiError, error_body
from ragtune.api.metrics import ServiceMetrics
from ragtune.api.openai_schemas import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Usage,
)
from ragtune.api.readiness import StoreProbe
from ragtune.api.schemas import (
    CitationOut,
    QueryRequest,
    QueryResponse,
    RetrievedChunk,
    TokenEvent,
    citations_of,
)
from ragtune.config import RetrievalMode
from ragtune.generate.rewrite import RuleCondenser
from ragtune.pipeline import RagPipeline, search_timings
from ragtune.store.catalog import Catalog
from ragtune.store.conversations import HISTORY_TURNS, ConversationConflictError, Conversations
from ragtune.types import Answer, Filters, MetadataError, Turn, check_question

log = logging.getLogger("ragtune.api")

MODEL_ID = "ragtune"
_TOKEN = re.compile(r"\S+\s*|\s+")
_SOURCE_LINE = re.compile(r"^\[\d{1,3}\] (.+?)(?:, page \d+)?$", re.MULTILINE)


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
    """Runs questions through the pipeline, keeps conversations, and records the metrics."""

    def __init__(
        self,
        rag: RagPipeline,
        default_mode: RetrievalMode,
        metrics: ServiceMetrics,
        probe: StoreProbe,
        conversations: Conversations,
        catalog: Catalog,
    ) -> None:
        self.rag, self.default_mode, self.metrics, self.probe = rag, default_mode, metrics, probe
        self.conversations, self.catalog = conversations, catalog

    # --- POST /v1/query ------------------------------------------------------------------
    # `collections` is what the caller may read (`Filters.collections`; () only for full access).
    def query(self, request: QueryRequest, owner: str = "", collections: tuple[str, ...] = ()) -> QueryResponse:
        filters = self._filters(request, collections)  # a bad filter or model fails before any work
        model = self._model(request.model)
        history, replace_seq = self._history(request, owner)
        if request.retrieve_only:
            return self._retrieve(request, history, filters)
        mode = self._mode(request)
        *_, answer = self._start(request.question, request, mode, history, filters, model)
        assert isinstance(answer, Answer)  # the stream's last item
        self._observe(answer, mode)
        self._remember(request, answer, owner, replace_seq)
        return QueryResponse.of(answer, request.conversation_id)

    def query_events(self, request: QueryRequest, owner: str = "", collections: tuple[str, ...] = ()) -> Iterator[str]:
        """The SSE stream: token…, done; started (see the module docstring) before returning."""
        mode = self._mode(request)
        filters = self._filters(request, collections)
        model = self._model(request.model)
        history, replace_seq = self._history(request, owner)
        items = self._start(request.question, request, mode, history, filters, model)

        def events() -> Iterator[str]:
            try:
                for item in items:
                    if isinstance(item, str):
                        yield sse("token", TokenEvent(text=item).model_dump())
                    else:
                        self._observe(item, mode)
                        stored = request.conversation_id
                        try:
                            self._remember(request, item, owner, replace_seq)
                        except (ConversationConflictError, KeyError) as exc:
                            # The answer is whole: it is still sent, said to be unstored.
                            log.warning("answer not stored in conversation %s: %s", request.conversation_id, exc)
                            stored, item.debug["conversation_error"] = None, str(exc)
                        yield sse("done", QueryResponse.of(item, stored).model_dump(mode="json"))
            except Exception as exc:  # the 200 is sent: a failure can only be reported as an event
                log.exception("answer stream failed")
                yield sse("error", error_body("stream_failed", f"the answer stopped: {type(exc).__name__}: {exc}"))

        return events()

    # --- POST /v1/chat/completions -------------------------------------------------------
    def chat(self, request: ChatCompletionRequest, collections: tuple[str, ...] = ()) -> ChatCompletion:
        self.probe.require()
        filters = self._filters(None, collections)
        model = self._model(request.model)
        answer = self.rag.ask(
            request.question(), filters=filters, history=self._chat_history(request, collections), model=model
        )
        self._observe(answer, self.default_mode)
        citations = citations_of(answer)
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
            rewritten_question=answer.rewritten_question,
        )

    def chat_chunks(self, request: ChatCompletionRequest, collections: tuple[str, ...] = ()) -> Iterator[str]:
        """OpenAI's streaming format: a role delta, content deltas (the answer as it is
        written, then its source list), a final chunk with finish_reason and the citations,
        and ``data: [DONE]``."""
        mode = self.default_mode
        model = self._model(request.model)
        items = self._start(
            request.question(),
            None,
            mode,
            self._chat_history(request, collections),
            self._filters(None, collections),
            model,
        )
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
                        citations = citations_of(item)
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
    def _start(
        self,
        question: str,
        request: QueryRequest | None,
        mode: RetrievalMode,
        history: list[Turn],
        filters: Filters | None,
        model: str | None,
    ) -> Iterable[str | Answer]:
        """RagPipeline.stream, advanced to its first item so that its early failures raise here."""
        self.probe.require()
        items = self.rag.stream(
            question,
            request.top_k if request else None,
            mode,
            filters,
            history=history,
            min_relevance=request.min_relevance if request else None,
            multi_query=request.multi_query if request else False,
            model=model,
        )
        first = next(items)
        return itertools.chain([first], items)

    def _retrieve(self, request: QueryRequest, history: list[Turn], filters: Filters | None) -> QueryResponse:
        self.probe.require()
        mode = self._mode(request)
        started = time.perf_counter()
        searched, found, debug = self.rag.search(
            request.question,
            request.top_k,
            mode,
            filters,
            history=history,
            min_relevance=request.min_relevance,
            multi_query=request.multi_query,
        )
        hits = self.rag.retriever.expand(found)  # what the generator would read
        timings = search_timings(debug, (time.perf_counter() - started) * 1000)
        self.metrics.retrieval.labels(mode=mode).observe(timings["retrieve"] / 1000)
        question = check_question(request.question)
        return QueryResponse(
            question=question,
            rewritten_question=searched if searched != question else None,
            answer=None,
            abstained=False,
            citations=[],
            retrieved=[RetrievedChunk.of(h) for h in hits],
            timings_ms=timings,
            conversation_id=None,  # nothing answered, nothing stored
            debug=debug,
        )

    def _history(self, request: QueryRequest, owner: str) -> tuple[list[Turn], int | None]:
        """The turns a follow-up is read against and, to regenerate, the turn it replaces;
        an unknown conversation (404) or nothing to regenerate (409) fail before any work."""
        if request.conversation_id is None:
            return [], None
        replace_seq = None
        if request.regenerate:
            replace_seq = self.conversations.last_seq(request.conversation_id, owner)
            if replace_seq is None:
                raise ConversationConflictError(
                    f"conversation {request.conversation_id!r} has no answer to regenerate; ask a question first"
                )
        history = self.conversations.history(request.conversation_id, owner, drop_last=request.regenerate)
        return history, replace_seq

    def _remember(self, request: QueryRequest, answer: Answer, owner: str, replace_seq: int | None) -> None:
        if request.conversation_id is not None:
            self.conversations.append(
                request.conversation_id, answer.turn(), answer.citations, answer.abstained, owner, replace_seq
            )

    def _chat_history(self, request: ChatCompletionRequest, collections: tuple[str, ...]) -> list[Turn]:
        """The earlier messages as turns. A ragtune answer ends in its source list; those
        sources' titles (from the catalog) tell a follow-up what the last answer was about.
        Earlier follow-ups are made standalone again by the rules (no LLM call per turn), so
        a chain of follow-ups ("And in 2023?", "And in 2024?") reads the first question's subject.
        Titles come only from `collections` (the caller's): a source line a client wrote never
        reveals another collection's title."""
        exchanges = []
        for question, answer in request.exchanges()[-HISTORY_TURNS:]:
            text, _, source_list = answer.partition("\n\nSources:\n")
            exchanges.append((question, text, _SOURCE_LINE.findall(source_list)))
        title_of = self.catalog.titles((s for _, _, sources in exchanges for s in sources), collections)
        turns: list[Turn] = []
        rules = RuleCondenser()
        for question, text, sources in exchanges:
            titles = tuple(title_of[s] for s in sources if title_of.get(s))
            searched = rules.condense(question, turns).question if turns else question
            turns.append(Turn(question, text, searched if searched != question else None, titles))
        return turns

    def _observe(self, answer: Answer, mode: RetrievalMode) -> None:
        generator = self.rag.generator.name
        self.metrics.retrieval.labels(mode=mode).observe(answer.timings_ms["retrieve"] / 1000)
        self.metrics.generation.labels(generator=generator).observe(answer.timings_ms["generate"] / 1000)
        self.metrics.generation_tokens.labels(generator=generator).inc(completion_tokens(answer))

    def models(self) -> list[str]:
        """The names a request's `model` may take: this service's own (the default model), then the generator's."""
        return list(dict.fromkeys([MODEL_ID, *self.rag.generator.model_names]))

    def _model(self, name: str | None) -> str | None:
        """The generator model a request's `model` names (None: the default); 400 `model_not_found` otherwise."""
        generator = self.rag.generator
        if not name or name == MODEL_ID:
            return None
        if name in generator.model_names:
            return name
        allowed = ", ".join(repr(m) for m in self.models())
        if generator.model_names:
            how = "RAGTUNE_LLM_MODEL and RAGTUNE_LLM_MODELS name them"
        else:
            how = f"the {generator.name} generator has one model; RAGTUNE_GENERATOR=openai with RAGTUNE_LLM_MODELS routes by name"
        raise ApiError(
            400,
            "model_not_found",
            f"model {name!r} is not served here; choose one of {allowed} ({how}; GET /v1/models)",
        )

    def _mode(self, request: QueryRequest | None) -> RetrievalMode:
        return (request.mode if request else None) or self.default_mode

    @staticmethod
    def _filters(request: QueryRequest | None, collections: tuple[str, ...]) -> Filters | None:
        """The request's filters within `collections`; 422 `invalid_filter` for a bad metadata filter."""
        if request and request.filters:
            try:
                return request.filters.to_filters(collections)
            except MetadataError as exc:
                raise ApiError(422, "invalid_filter", str(exc)) from None
        return Filters(collections=collections) if collections else None
