"""Documents: upload (queued as a job), list, inspect, delete; and the jobs' progress."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from ragtune.api.deps import ServicesDep
from ragtune.api.errors import ApiError
from ragtune.api.schemas import (
    DeletedDocument,
    DocumentList,
    DocumentOut,
    ErrorResponse,
    JobOut,
    RejectedFile,
    UploadAccepted,
    UploadedDocument,
)
from ragtune.api.uploads import CheckedUpload, check_upload, safe_filename
from ragtune.ingest.formats import supported_names
from ragtune.types import TagError, check_tags

router = APIRouter(prefix="/v1", tags=["documents"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 415, 422, 429, 503)
}


@router.post("/documents", status_code=status.HTTP_202_ACCEPTED, response_model=UploadAccepted, responses=_ERRORS)
def upload_documents(
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description=f"One or more files: {supported_names()}.")],
    tags: Annotated[list[str], Form(description="Tags for every uploaded document (repeatable).")] = [],  # noqa: B006 (FastAPI copies defaults)
) -> UploadAccepted:
    """Checks every file, then queues one job indexing those that passed; poll `status_url` for
    progress. A file that fails its checks is listed in `rejected` (with the status and code it
    would get alone) and the others are still queued; when no file passes, the answer is the
    4xx error naming each file and its reason."""
    settings = services.settings.service
    if len(files) > settings.max_files_per_request:
        raise ApiError(
            413,
            "too_many_files",
            f"{len(files)} files in one request, over the limit of {settings.max_files_per_request} "
            "(RAGTUNE_MAX_FILES_PER_REQUEST); send them in several requests",
        )
    try:
        checked_tags = check_tags(tags)
    except TagError as exc:
        raise ApiError(422, "invalid_tags", str(exc)) from None
    checked: list[CheckedUpload] = []
    rejected: list[tuple[str, ApiError]] = []
    for upload in files:
        # Reads at most one byte past the limit: check_upload reports the oversize file.
        data = upload.file.read(settings.max_upload_bytes + 1)
        try:
            checked.append(check_upload(data, upload.filename or "", services.settings, upload.size))
        except ApiError as exc:  # this file only: the others are still queued
            rejected.append((safe_filename(upload.filename or ""), exc))
    names = [c.file.source for c in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ApiError(
            422,
            "duplicate_filename",
            f"several files would become the same document: {', '.join(duplicates)}; rename them",
        )
    if not checked:
        raise _nothing_accepted(rejected)
    job = services.queue.enqueue([c.file for c in checked], checked_tags)
    if services.worker is not None:
        services.worker.wake()
    return UploadAccepted(
        job_id=job.id,
        status_url=f"/v1/jobs/{job.id}",
        documents=[
            UploadedDocument(
                filename=c.file.filename,
                source=c.file.source,
                document_id=c.file.doc_id,
                size_bytes=len(c.file.data),
                content_type=c.content_type,
            )
            for c in checked
        ],
        rejected=[
            RejectedFile(filename=name, status=exc.status_code, code=exc.code, message=str(exc.detail))
            for name, exc in rejected
        ],
    )


def _nothing_accepted(rejected: list[tuple[str, ApiError]]) -> ApiError:
    """The error when every file was refused: a single file's own error, or, for several,
    one naming each file and its reason (with their status and code when they share one)."""
    if len(rejected) == 1:
        return rejected[0][1]
    statuses = {exc.status_code for _, exc in rejected}
    codes = {exc.code for _, exc in rejected}
    return ApiError(
        statuses.pop() if len(statuses) == 1 else 422,
        codes.pop() if len(codes) == 1 else "no_file_accepted",
        f"none of the {len(rejected)} files can be indexed: " + "; ".join(str(exc.detail) for _, exc in rejected),
    )


@router.get("/documents", response_model=DocumentList, responses=_ERRORS)
def list_documents(
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    status: Literal["pending", "indexed", "failed"] | None = None,
) -> DocumentList:
    """Documents ordered by source, with their status and, for failures, the reason."""
    records, total = services.system.catalog.list(offset, limit, status)
    return DocumentList(total=total, offset=offset, limit=limit, documents=[DocumentOut.of(r) for r in records])


@router.get("/documents/{id}", response_model=DocumentOut, responses=_ERRORS)
def get_document(services: ServicesDep, id: str) -> DocumentOut:
    record = services.system.catalog.get(id)
    if record is None:
        raise ApiError(404, "document_not_found", f"no document with id {id!r}; GET /v1/documents lists them")
    return DocumentOut.of(record)


@router.delete("/documents/{id}", response_model=DeletedDocument, responses=_ERRORS)
def delete_document(services: ServicesDep, id: str) -> DeletedDocument:
    """Removes the document's chunks from the index and the document from the catalog. An
    upload still queued is not deleted (409): its job would index it again afterwards."""
    waiting = services.queue.waiting_for(id)
    if waiting is not None:
        raise ApiError(
            409,
            "document_queued",
            f"document {id!r} has an upload queued in job {waiting}, not indexed yet; "
            f"delete it once GET /v1/jobs/{waiting} shows the job finished",
        )
    record = services.system.catalog.get(id)
    if record is None:
        raise ApiError(404, "document_not_found", f"no document with id {id!r}; GET /v1/documents lists them")
    services.probe.require()
    services.system.ingestor.delete(record.id)
    return DeletedDocument(id=record.id, source=record.source)


@router.get("/jobs/{id}", response_model=JobOut, responses=_ERRORS, tags=["jobs"])
def get_job(services: ServicesDep, id: str) -> JobOut:
    """Progress (files done of total, chunks) and each file's outcome and error."""
    job = services.queue.get(id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job with id {id!r}; POST /v1/documents returns job ids")
    return JobOut.of(job)
