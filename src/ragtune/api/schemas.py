"""The request and response models of the HTTP API (they are the OpenAPI schema at /docs).

ragtune's own request models reject unknown fields, so a misspelt option (``topk``) is a 422
naming it instead of being silently ignored. The OpenAI-compatible models
(`ragtune.api.openai_schemas`) accept and ignore unknown fields instead; the collection routes'
own models are in `ragtune.api.collection_schemas`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ragtune.config import RetrievalMode
from ragtune.store.catalog import DocumentRecord
from ragtune.store.jobs import Job, JobFile
from ragtune.types import Answer, Citation, Filters, Hit, MetaValue, metadata_conditions


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class StrictModel(BaseModel):
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


class ServingOut(BaseModel):
    """The models this process serves; `*_promoted_at` is set when a `ragtune tune … --promote` chose them."""

    embedder: str
    embedder_backend: str
    dimension: int
    embedder_promoted_at: datetime | None
    generator: str
    adapter: str = Field(description="The LoRA adapter directory of the local generator; empty: none.")
    adapter_promoted_at: datetime | None


class ReadinessResponse(BaseModel):
    ready: bool
    checks: dict[str, CheckResult]
    serving: ServingOut | None = None
    error: ErrorBody | None = None


class ReloadResponse(BaseModel):
    reloaded: list[Literal["embedder", "adapter"]] = Field(description="What changed; empty when nothing did.")
    serving: ServingOut


# --- documents and jobs ----------------------------------------------------------------------
class DocumentOut(BaseModel):
    id: str
    source: str
    collection: str
    metadata: dict[str, MetaValue]
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
    def of(cls, record: DocumentRecord, default_collection: str = "") -> DocumentOut:
        return cls(
            id=record.id,
            source=record.source,
            collection=record.collection or default_collection,
            metadata=dict(record.metadata),
            title=record.title,
            status=record.status,
            error=record.error,
            chunks=record.chunks,
            content_type=record.content_type,
            size_bytes=record.size_bytes,
            tags=list(record.tags),
            created_at=as_utc(record.created_at),
            updated_at=as_utc(record.updated_at),
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


class RejectedFile(BaseModel):
    filename: str = Field(description="The name the client gave, reduced to its last component.")
    status: int = Field(description="The HTTP status this file alone would have been refused with.")
    code: str = Field(examples=["invalid_encoding"])
    message: str = Field(description="Why, and what to do about it.")


class UploadAccepted(BaseModel):
    job_id: str
    collection: str = Field(description="The collection the documents are added to.")
    status_url: str
    documents: list[UploadedDocument] = Field(description="The files queued for indexing.")
    rejected: list[RejectedFile] = Field(
        default_factory=list, description="The files of the request that were refused, each with its reason."
    )


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


class CurrentFileOut(BaseModel):
    seq: int = Field(description="The file's index in `files`.")
    filename: str
    chunks_embedded: int = Field(description="Chunks of this file embedded so far.")
    chunks_total: int = Field(description="Chunks this file was split into.")


class JobOut(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed"]
    files_total: int
    files_done: int
    files_failed: int
    chunks: int
    progress: float = Field(
        ge=0, le=1, description="Share of the job done: finished files plus the embedded share of the current one."
    )
    current_file: CurrentFileOut | None = Field(description="The file being indexed now, while the job runs.")
    attempts: int
    error: str
    tags: list[str]
    collection: str = Field(description="The collection its documents are filed into.")
    metadata: dict[str, MetaValue] = Field(description="The metadata given with the upload.")
    created_at: datetime
    updated_at: datetime
    files: list[JobFileOut]

    @classmethod
    def of(cls, job: Job) -> JobOut:
        current = None
        done = float(job.files_done)
        now = job.current if job.state == "running" else None
        if now is not None and now.seq < len(job.files) and job.files[now.seq].status == "queued":
            current = CurrentFileOut(
                seq=now.seq,
                filename=job.files[now.seq].filename,
                chunks_embedded=now.chunks_embedded,
                chunks_total=now.chunks_total,
            )
            done += now.chunks_embedded / now.chunks_total if now.chunks_total else 0.0
        return cls(
            id=job.id,
            state=job.state,
            files_total=job.files_total,
            files_done=job.files_done,
            files_failed=job.files_failed,
            chunks=job.chunks,
            progress=1.0 if job.state == "done" else min(1.0, done / job.files_total) if job.files_total else 0.0,
            current_file=current,
            attempts=job.attempts,
            error=job.error,
            tags=list(job.tags),
            collection=job.collection,
            metadata=dict(job.metadata),
            created_at=as_utc(job.created_at),
            updated_at=as_utc(job.updated_at),
            files=[JobFileOut.of(f) for f in job.files],
        )


# --- questions -------------------------------------------------------------------------------
class QueryFilters(StrictModel):
    sources: list[str] = Field(default_factory=list, max_length=100, description="Only these document sources.")
    tags: list[str] = Field(default_factory=list, max_length=32, description="Only documents with any of these tags.")
    document_ids: list[str] = Field(default_factory=list, max_length=100)
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        max_length=32,
        description='Custom metadata: {"team": "finance"}, {"team": ["a", "b"]} (any of), {"year": {"gte": 2023}}.',
    )

    def to_filters(self, collections: tuple[str, ...] = ()) -> Filters:
        """Raises MetadataError for a metadata filter that breaks the rules."""
        return Filters(
            sources=tuple(self.sources),
            tags=tuple(self.tags),
            doc_ids=tuple(self.document_ids),
            metadata=metadata_conditions(self.metadata),
            collections=collections,
        )


class QueryRequest(StrictModel):
    # Its length limit is RAGTUNE_MAX_QUESTION_CHARS, checked by the pipeline (a 422 naming
    # the setting); the request body limit bounds what is parsed at all.
    question: str = Field(min_length=1, examples=["How does hybrid search merge results?"])
    top_k: int | None = Field(None, ge=1, le=100, description="Chunks to retrieve; default RAGTUNE_TOP_K.")
    mode: RetrievalMode | None = Field(None, description="Default RAGTUNE_RETRIEVAL_MODE.")
    filters: QueryFilters | None = None
    collection: str | None = Field(None, max_length=255, description="Search this collection only; default: all yours.")
    stream: bool = Field(False, description="Answer as Server-Sent Events: token…, then done (this response).")
    retrieve_only: bool = Field(False, description="Return the retrieved chunks without writing an answer.")
    conversation_id: str | None = Field(
        None,
        max_length=64,
        description="Answer as a follow-up in this conversation (POST /v1/conversations) and store it as its next turn.",
    )
    regenerate: bool = Field(False, description="With conversation_id: answer again, replacing the last turn.")
    min_relevance: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Drop chunks whose cosine similarity to the question is below this (the setting "
        "RAGTUNE_MIN_RELEVANCE is the extractive answerer's threshold on its best sentence).",
    )
    multi_query: bool = Field(
        False, description="Also search the LLM's paraphrases of the question and fuse the rankings (LLM backends)."
    )
    model: str | None = Field(
        None,
        max_length=255,
        description="The model that writes the answer, one of GET /v1/models (e.g. a LoRA adapter "
        "vLLM serves, listed in RAGTUNE_LLM_MODELS); default RAGTUNE_LLM_MODEL.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> QueryRequest:
        if self.stream and self.retrieve_only:
            raise ValueError("stream=true streams an answer and retrieve_only=true asks for none; set one of them")
        if self.regenerate and not self.conversation_id:
            raise ValueError("regenerate=true replaces a conversation's last turn; give its conversation_id")
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
    collection: str = ""

    @classmethod
    def of(cls, h: Hit) -> RetrievedChunk:
        return cls(
            collection=h.collection,
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
    rewritten_question: str | None = Field(
        None, description="The standalone question searched, when a follow-up was rewritten; else null."
    )
    answer: str | None = Field(description="With [n] citation markers; null when retrieve_only.")
    abstained: bool = Field(description="True when the documents do not contain the answer.")
    citations: list[CitationOut]
    retrieved: list[RetrievedChunk]
    timings_ms: dict[str, float]
    conversation_id: str | None = Field(None, description="The conversation this answer was stored in.")
    debug: dict[str, Any] = Field(
        default_factory=dict, description="How the question was rewritten: the condenser, its prompt and reply."
    )

    @classmethod
    def of(cls, answer: Answer, conversation_id: str | None = None) -> QueryResponse:
        return cls(
            question=answer.question,
            rewritten_question=answer.rewritten_question,
            answer=answer.text,
            abstained=answer.abstained,
            citations=citations_of(answer),
            retrieved=[RetrievedChunk.of(h) for h in answer.hits],
            timings_ms=answer.timings_ms,
            conversation_id=conversation_id,
            debug=answer.debug,
        )


def citations_of(answer: Answer) -> list[CitationOut]:
    return [CitationOut.of(c) for c in answer.citations]


# --- server-sent events of POST /v1/query with stream=true ------------------------------------
class TokenEvent(BaseModel):
    text: str
