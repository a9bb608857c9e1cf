"""The request and response models of the HTTP API (they are the OpenAPI schema at /docs).

ragtune's own request models reject unknown fields, so a misspelt option (``topk``) is a 422
naming it instead of being silently ignored. The OpenAI-compatible models accept and ignore
unknown fields instead: chat clients send options (``temperature``, ``seed``, …) that an
extractive answerer has no use for, and must not fail on them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ragtune.config import RetrievalMode
from ragtune.store.catalog import DocumentRecord
from ragtune.store.jobs import Job, JobFile
from ragtune.types import Answer, Citation, Filters, Hit


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str = Field(examples=["invalid_question"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- probes ----------------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class CheckResult(BaseModel):
    ok: bool
    detail: str = ""


class ReadinessResponse(BaseModel):
    ready: bool
    checks: dict[str, CheckResult]
    error: ErrorBody | None = None


# --- documents and jobs ----------------------------------------------------------------------
class DocumentOut(BaseModel):
    id: str
    source: str
    title: str
    status: Literal["pending", "indexed", "failed"]
    error: str
    chunks: int
    content_type: str
    size_bytes: int
    tags: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: DocumentRecord) -> DocumentOut:
        return cls(
            id=record.id,
            source=record.source,
            title=record.title,
            status=record.status,
            error=record.error,
            chunks=record.chunks,
            content_type=record.content_type,
            size_bytes=record.size_bytes,
            tags=list(record.tags),
            created_at=_utc(record.created_at),
            updated_at=_utc(record.updated_at),
        )


class DocumentList(BaseModel):
    total: int
    offset: int
    limit: int
    documents: list[DocumentOut]


class DeletedDocument(BaseModel):
    id: str
    source: str
    deleted: bool = True


class UploadedDocument(BaseModel):
    filename: str = Field(description="The name the client gave; never used as a path.")
    source: str = Field(description="The source the document is indexed under.")
    document_id: str
    size_bytes: int
    content_type: str


class UploadAccepted(BaseModel):
    job_id: str
    status_url: str
    documents: list[UploadedDocument]


class JobFileOut(BaseModel):
    filename: str
    source: str
    document_id: str
    size_bytes: int
    status: Literal["queued", "indexed", "unchanged", "failed"]
    chunks: int
    error: str

    @classmethod
    def of(cls, f: JobFile) -> JobFileOut:
        return cls(
            filename=f.filename,
            source=f.source,
            document_id=f.doc_id,
            size_bytes=f.size_bytes,
            status=f.status,
            chunks=f.chunks,
            error=f.error,
        )


class JobOut(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed"]
    files_total: int
    files_done: int
    files_failed: int
    chunks: int
    attempts: int
    error: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    files: list[JobFileOut]

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            state=job.state,
            files_total=job.files_total,
            files_done=job.files_done,
            files_failed=job.files_failed,
            chunks=job.chunks,
            attempts=job.attempts,
            error=job.error,
            tags=list(job.tags),
            created_at=_utc(job.created_at),
            updated_at=_utc(job.updated_at),
            files=[JobFileOut.of(f) for f in job.files],
        )


# --- questions -------------------------------------------------------------------------------
class QueryFilters(_Strict):
    sources: list[str] = Field(default_factory=list, max_length=100, description="Only these document sources.")
    tags: list[str] = Field(default_factory=list, max_length=32, description="Only documents with any of these tags.")
    document_ids: list[str] = Field(default_factory=list, max_length=100)

    def to_filters(self) -> Filters:
        return Filters(sources=tuple(self.sources), tags=tuple(self.tags), doc_ids=tuple(self.document_ids))


class QueryRequest(_Strict):
    # Its length limit is RAGTUNE_MAX_QUESTION_CHARS, checked by the pipeline (a 422 naming
    # the setting); the request body limit bounds what is parsed at all.
    question: str = Field(min_length=1, examples=["How does hybrid search merge results?"])
    top_k: int | None = Field(None, ge=1, le=100, description="Chunks to retrieve; default RAGTUNE_TOP_K.")
    mode: RetrievalMode | None = Field(None, description="Default RAGTUNE_RETRIEVAL_MODE.")
    filters: QueryFilters | None = None
    stream: bool = Field(False, description="Answer as Server-Sent Events: token…, then done (this response).")
    retrieve_only: bool = Field(False, description="Return the retrieved chunks without writing an answer.")

    @model_validator(mode="after")
    def _stream_needs_an_answer(self) -> QueryRequest:
        if self.stream and self.retrieve_only:
            raise ValueError("stream=true streams an answer and retrieve_only=true asks for none; set one of them")
        return self


class CitationOut(BaseModel):
    number: int = Field(description="The [n] marker in the answer text.")
    chunk_id: str
    document_id: str
    source: str
    title: str
    page: int = Field(description="1-based page; 0 for formats without pages.")
    heading: str
    snippet: str = Field(description="The cited chunk's text.")
    score: float

    @classmethod
    def of(cls, c: Citation) -> CitationOut:
        return cls(
            number=c.number,
            chunk_id=c.chunk_id,
            document_id=c.doc_id,
            source=c.source,
            title=c.title,
            page=c.page,
            heading=c.heading,
            snippet=c.snippet,
            score=c.score,
        )


class RetrievedChunk(BaseModel):
    chunk_id: str
    document_id: str
    source: str
    title: str
    page: int
    heading: str
    text: str
    score: float
    scores: dict[str, float] = Field(description="Per retrieval mode, before fusion.")

    @classmethod
    def of(cls, h: Hit) -> RetrievedChunk:
        return cls(
            chunk_id=h.id,
            document_id=h.doc_id,
            source=h.source,
            title=h.title,
            page=h.page,
            heading=h.heading,
            text=h.text,
            score=h.score,
            scores=h.scores,
        )


class QueryResponse(BaseModel):
    question: str
    answer: str | None = Field(description="With [n] citation markers; null when retrieve_only.")
    abstained: bool = Field(description="True when the documents do not contain the answer.")
    citations: list[CitationOut]
    retrieved: list[RetrievedChunk]
    timings_ms: dict[str, float]

    @classmethod
    def of(cls, answer: Answer) -> QueryResponse:
        return cls(
            question=answer.question,
            answer=answer.text,
            abstained=answer.abstained,
            citations=[CitationOut.of(c) for c in answer.citations],
            retrieved=[RetrievedChunk.of(h) for h in answer.hits],
            timings_ms=answer.timings_ms,
        )


# --- OpenAI Chat Completions -----------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The text of the message; content parts other than text (images) are skipped."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(examples=["ragtune"])
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="One choice only.")

    @field_validator("messages")
    @classmethod
    def _has_user_message(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" and m.text().strip() for m in messages):
            raise ValueError("needs at least one non-empty message with role 'user' (the question)")
        return messages

    def question(self) -> str:
        """The last user message: ragtune answers one question at a time from the documents."""
        return next(m.text() for m in reversed(self.messages) if m.role == "user" and m.text().strip())


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    citations: list[CitationOut] = Field(description="ragtune extension: the sources behind the [n] markers.")


class ChatCompletionDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionChunkChoice(BaseModel):
    index: int = 0
    delta: ChatCompletionDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    citations: list[CitationOut] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragtune"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- server-sent events of POST /v1/query with stream=true ------------------------------------
class TokenEvent(BaseModel):
    text: str
