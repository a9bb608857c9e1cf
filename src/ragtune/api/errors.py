"""Every error leaves the service as ``{"error": {"code", "message"}}`` with a fitting status.

Domain exceptions are mapped here, once, so routes never build error responses themselves:
an unreachable store or catalog is 503 (retry later), an unusable question 422, anything
unexpected 500 with its details in the log rather than in the response.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from ragtune.embed.embedders import EmbeddingError
from ragtune.generate.openai_compat import LLMServerError
from ragtune.pipeline import MultiQueryUnavailableError
from ragtune.store.base import StoreError, StoreUnavailableError
from ragtune.store.catalog import CatalogError
from ragtune.store.conversations import ConversationConflictError, ConversationNotFoundError
from ragtune.types import QuestionError

log = logging.getLogger("ragtune.api")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(HTTPException):
    """An error with a stable machine-readable `code` and a message that says what to do."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:10]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or _STATUS_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        if not isinstance(exc, ApiError) and exc.status_code in (404, 405):
            # The router's own "Not Found" / "Method Not Allowed" do not say where to look.
            what = "no such path" if exc.status_code == 404 else f"{request.method} is not allowed on"
            message = f"{what} {request.url.path}; the API is described at /docs"
        elif isinstance(exc.__cause__, UnicodeDecodeError):
            bad = exc.__cause__
            code = "invalid_encoding"
            message = f"the request body is not valid UTF-8 (byte 0x{bad.object[bad.start]:02x} at offset {bad.start}); send UTF-8 JSON"
        elif isinstance(exc.__context__, MultiPartException):
            # Starlette says only "Invalid multipart data."; python-multipart's reason is one cause further.
            reason = exc.__context__.__cause__ or exc.__context__
            message = (
                f"the multipart body cannot be read ({reason}); each part's headers, its file name "
                "included, must fit in 4 KiB, and files go in parts named `files`"
            )
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(QuestionError)
    async def _question(_: Request, exc: QuestionError) -> JSONResponse:
        return error_response(422, "invalid_question", str(exc))

    @app.exception_handler(ConversationNotFoundError)
    async def _no_conversation(_: Request, exc: ConversationNotFoundError) -> JSONResponse:
        return error_response(
            404, "conversation_not_found", f"{exc}; start one with POST /v1/conversations or omit conversation_id"
        )

    @app.exception_handler(ConversationConflictError)
    async def _conversation_conflict(_: Request, exc: ConversationConflictError) -> JSONResponse:
        return error_response(409, "conversation_conflict", str(exc))

    @app.exception_handler(LLMServerError)
    async def _llm(_: Request, exc: LLMServerError) -> JSONResponse:
        return error_response(502, "llm_unavailable", str(exc))

    @app.exception_handler(MultiQueryUnavailableError)
    async def _no_multi_query(_: Request, exc: MultiQueryUnavailableError) -> JSONResponse:
        return error_response(400, "multi_query_unavailable", str(exc))

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        code = "store_unavailable" if isinstance(exc, StoreUnavailableError) else "store_error"
        log.warning("vector store: %s", exc)
        return error_response(
            503, code, f"the vector store cannot serve the request: {exc}; retry later", {"Retry-After": "5"}
        )

    @app.exception_handler(CatalogError)
    async def _catalog(_: Request, exc: CatalogError) -> JSONResponse:
        log.warning("catalog: %s", exc)
        return error_response(
            503, "catalog_unavailable", f"the catalog database cannot serve the request: {exc}", {"Retry-After": "5"}
        )

    @app.exception_handler(EmbeddingError)
    async def _embedding(_: Request, exc: EmbeddingError) -> JSONResponse:
        log.warning("embedding: %s", exc)
        return error_response(503, "embedding_unavailable", str(exc), {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"unexpected {type(exc).__name__}; the server log has the details")
