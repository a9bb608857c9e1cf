"""Questions: ragtune's own endpoint and the OpenAI-compatible one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ragtune.api.access import KeyScope, KeyScopeDep, search_scope
from ragtune.api.deps import OwnerDep, Services, ServicesDep
from ragtune.api.openai_schemas import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList
from ragtune.api.schemas import ErrorResponse, QueryRequest, QueryResponse

router = APIRouter(prefix="/v1")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 429, 502, 503)
}
QUERY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream=true"},
}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def searched(services: Services, scope: KeyScope, collection: str | None) -> tuple[str, ...]:
    """The collections a question reads: `collection` (which the key must hold and which must
    exist), else every one the key holds."""
    catalog = services.system.catalog
    return search_scope(scope, collection, services.settings.store.collection, catalog.collections)


def answer(services: Services, owner: str, scope: KeyScope, request: QueryRequest) -> QueryResponse | StreamingResponse:
    collections = searched(services, scope, request.collection)
    if request.stream:
        return StreamingResponse(
            services.queries.query_events(request, owner, collections),
            media_type="text/event-stream",
            headers=_SSE_HEADERS,
        )
    return services.queries.query(request, owner, collections)


@router.post("/query", response_model=QueryResponse, responses=QUERY_RESPONSES, tags=["questions"])
def query(
    services: ServicesDep, owner: OwnerDep, scope: KeyScopeDep, request: QueryRequest
) -> QueryResponse | StreamingResponse:
    """The answer with numbered citations and timings; with `stream=true`, Server-Sent Events:
    `token` (answer text, in order, as it is written), then `done` (this same response);
    `error` if the answer fails after the stream began. With `conversation_id` the question
    is a follow-up: rewritten into a standalone one (`rewritten_question`) from the turns
    before it, and stored as the conversation's next turn (a streamed answer when its `done`
    event is sent: one stopped before that is not stored). With `collection` only that
    collection is searched, else every collection the API key holds. `model` picks the LLM
    that writes the answer among GET /v1/models (400 for another)."""
    return answer(services, owner, scope, request)


@router.post("/chat/completions", response_model=ChatCompletion, responses=_ERRORS, tags=["openai"])
def chat_completions(
    services: ServicesDep, scope: KeyScopeDep, request: ChatCompletionRequest
) -> ChatCompletion | StreamingResponse:
    """OpenAI Chat Completions: the last user message is answered from the documents, as a
    follow-up of the messages before it, with a source list in the text and the citations
    in `citations`. `collection` (a ragtune extension) limits it to one collection. `model`:
    'ragtune' (the default model) or another name of GET /v1/models, which then writes the
    answer (400 for a name not listed)."""
    collections = searched(services, scope, request.collection)
    if request.stream:
        return StreamingResponse(
            services.queries.chat_chunks(request, collections), media_type="text/event-stream", headers=_SSE_HEADERS
        )
    return services.queries.chat(request, collections)


@router.get("/models", response_model=ModelList, tags=["openai"])
def models(services: ServicesDep) -> ModelList:
    """The names `model` may take: 'ragtune' (the default model), then RAGTUNE_LLM_MODEL and
    RAGTUNE_LLM_MODELS with the openai generator."""
    created = int(services.started_at)
    return ModelList(data=[ModelCard(id=name, created=created) for name in services.queries.models()])
