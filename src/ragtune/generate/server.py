"""`ragtune serve-llm`: the local model behind an OpenAI-compatible API.

``POST /v1/chat/completions`` (plain JSON or ``"stream": true`` server-sent events),
``GET /v1/models`` and ``GET /health`` — enough for `OpenAICompatGenerator`, the openai
client, and tools that speak to vLLM or Ollama. One request decodes at a time (the
model's lock); the Helm chart runs this on a GPU node.

    from ragtune.generate.local import LocalLM
    from ragtune.generate.server import create_llm_app
    import uvicorn

    uvicorn.run(create_llm_app(LocalLM.load("")), host="127.0.0.1", port=8001)

    curl -s localhost:8001/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Generator
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ragtune.generate.local import Completion, LocalLM, SamplingParams


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0, le=8192)
    max_completion_tokens: int | None = Field(None, gt=0, le=8192)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    # OpenAI's error shape: clients (and OpenAICompatGenerator) read error.message.
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def create_llm_app(lm: LocalLM, model_name: str | None = None, default_max_tokens: int = 256) -> FastAPI:
    """The app serving `lm` under ``model_name`` (default: the model's own name)."""
    served = model_name or lm.name
    created = int(time.time())
    app = FastAPI(title="ragtune serve-llm", version="1")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in exc.errors())
        return _error(400, f"invalid request: {problems}", "invalid_request_error")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": served}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": served, "object": "model", "created": created, "owned_by": "ragtune"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: ChatRequest) -> JSONResponse | StreamingResponse:
        if request.model != served:
            return _error(
                404,
                f"model {request.model!r} does not exist; this server serves {served!r}",
                "invalid_request_error",
                "model_not_found",
            )
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        try:
            params = SamplingParams(
                max_new_tokens=request.max_completion_tokens or request.max_tokens or default_max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=tuple(stops),
                seed=request.seed,
            )
            prompt = lm.chat_prompt([m.model_dump() for m in request.messages])
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(
                _closing(_sse(lm, prompt, params, completion_id, served, include_usage)),
                media_type="text/event-stream",
            )
        completion: Completion = await run_in_threadpool(lm.complete, prompt, params)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": completion.text},
                        "finish_reason": completion.finish_reason,
                    }
                ],
                "usage": completion.usage,
            }
        )

    return app


async def _closing(events: Generator[str, None, None]) -> AsyncIterator[str]:
    """``events`` decoded in Starlette's thread pool, and closed when the response ends.

    Starlette never closes a sync iterator it streams: when a client disconnects, the
    decoding generator would stay suspended holding the model's lock, and every later
    request would wait on it forever (and a tensor-parallel follower mid-request with it).
    Closing it, in a thread as it may finish decoding, frees the model.
    """
    try:
        async for event in iterate_in_threadpool(events):
            yield event
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(events.close)


def _sse(
    lm: LocalLM, prompt: str, params: SamplingParams, completion_id: str, model: str, include_usage: bool
) -> Generator[str, None, None]:
    """The chunks of a streamed completion as server-sent events, then ``[DONE]``.

    A plain (sync) iterator, run in the thread pool so decoding does not block the event
    loop (`_closing`).
    """
    created = int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        return f"data: {json.dumps({**chunk, **extra}, ensure_ascii=False)}\n\n"

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    stream = lm.stream(prompt, params)
    while True:
        try:
            delta = next(stream)
        except StopIteration as done:
            completion: Completion = done.value
            break
        yield event([{"index": 0, "delta": {"content": delta}, "finish_reason": None}])
    yield event([{"index": 0, "delta": {}, "finish_reason": completion.finish_reason}])
    if include_usage:
        yield event([], usage=completion.usage)
    yield "data: [DONE]\n\n"
