"""Documents: upload (queued as a job), list, inspect, delete; and the jobs' progress.

Uploading and deleting need a writer key; a document in a collection the key does not hold
is not found (`ragtune.api.access`). ``/v1/collections/{name}/documents`` (in
`ragtune.api.routes.collections`) is the same upload and listing within one collection.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile, status

from ragtune.api.access import WRITER, KeyScope, KeyScopeDep, needs, upload_collection
from ragtune.api.deps import Services, ServicesDep
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
from ragtune.store.catalog import DocumentRecord
from ragtune.types import Labels, MetadataError, MetaValue, TagError, check_metadata, check_tags

router = APIRouter(prefix="/v1", tags=["documents"])

ERRORS: dict[int | str, dict[str, Any]] = {  # the error answers of the document routes, for OpenAPI
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 415, 422, 429, 503)
}
Writer = Annotated[KeyScope, Depends(needs(WRITER, "uploading or deleting documents"))]
FilesField = Annotated[list[UploadFile], File(description=f"One or more files: {supported_names()}.")]
TagsField = Annotated[list[str], Form(description="Tags for every uploaded document (repeatable).")]
MetadataField = Annotated[
    str | None,
    Form(description='Custom metadata for every uploaded document, a JSON object: {"team": "finance", "year": 2024}.'),
]
CollectionField = Annotated[
    str | None,
    Form(description="The collection to add them to (created by its first upload); default RAGTUNE_COLLECTION."),
]


@router.post("/documents", status_code=status.HTTP_202_ACCEPTED, response_model=UploadAccepted, responses=ERRORS)
def upload_documents(
    services: ServicesDep,
    scope: Writer,
    files: FilesField,
    tags: TagsField = [],  # noqa: B006 (FastAPI copies defaults)
    metadata: MetadataField = None,
    collection: CollectionField = None,
) -> UploadAccepted:
    """Checks every file, then queues one job indexing those that passed; poll `status_url` for
    progress. A file that fails its checks is listed in `rejected` (with the status and code it
    would get alone) and the others are still queued; when no file passes, the answer is the
    4xx error naming each file and its reason."""
    return accept_upload(services, scope, files, tags, metadata, collection or None)


def parse_metadata(raw: str | None) -> dict[str, MetaValue]:
    """The `metadata` form field: a JSON object of scalar values; 422 `invalid_metadata` otherwise."""
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(
            422, "invalid_metadata", f'metadata is not valid JSON ({exc}); send an object like {{"team": "finance"}}'
        ) from None
    if not isinstance(value, dict):
        raise ApiError(
            422,
            "invalid_metadata",
            f'metadata must be a JSON object like {{"team": "finance"}}; got {type(value).__name__}',
        )
    try:
        return check_metadata(value)
    except MetadataError as exc:
        raise ApiError(422, "invalid_metadata", str(exc)) from None


def accept_upload(
    services: Services,
    scope: KeyScope,
    files: list[UploadFile],
    tags: list[str],
    metadata: str | None,
    collection: str | None,
) -> UploadAccepted:
    """The upload of `files` into `collection` (default RAGTUNE_COLLECTION), which the key must hold."""
    target = upload_collection(scope, collection, services.settings.store.collection)
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
    labels = Labels(target, checked_tags, parse_metadata(metadata))
    checked: list[CheckedUpload] = []
    rejected: list[tuple[str, ApiError]] = []
    for upload in files:
        # Reads at most one byte past the limit: check_upload reports the oversize file.
        data = upload.file.read(settings.max_upload_bytes + 1)
        try:
            checked.append(check_upload(data, upload.filename or "", services.settings, upload.size, target))
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
    job = services.queue.enqueue([c.file for c in checked], labels)
    if services.worker is not None:
        services.worker.wake()
    return UploadAccepted(
        collection=target,
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


Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]
Status = Literal["pending", "indexed", "failed"] | None


@router.get("/documents", response_model=DocumentList, responses=ERRORS)
def list_documents(
    services: ServicesDep, scope: KeyScopeDep, offset: Offset = 0, limit: Limit = 50, status: Status = None
) -> DocumentList:
    """Documents ordered by source, with their status and, for failures, the reason; those
    of the collections the key holds."""
    collections = () if scope.collections is None else tuple(sorted(scope.collections))
    return document_list(services, collections, offset, limit, status)


def document_list(
    services: Services, collections: tuple[str, ...], offset: int, limit: int, status: str | None
) -> DocumentList:
    records, total = services.system.catalog.list(offset, limit, status, collections=collections)
    default = services.settings.store.collection
    documents = [DocumentOut.of(r, default) for r in records]
    return DocumentList(total=total, offset=offset, limit=limit, documents=documents)


def _holds(services: Services, scope: KeyScope, collection: str) -> bool:
    """Whether the key holds `collection` ("" in rows from before collections: the default one)."""
    return scope.holds(collection or services.settings.store.collection)


def _visible(services: Services, scope: KeyScope, id: str) -> DocumentRecord | None:
    """The document, unless it is in a collection the key does not hold (then as if absent)."""
    record = services.system.catalog.get(id)
    return record if record is not None and _holds(services, scope, record.collection) else None


def _not_found(id: str) -> ApiError:
    return ApiError(404, "document_not_found", f"no document with id {id!r}; GET /v1/documents lists them")


@router.get("/documents/{id}", response_model=DocumentOut, responses=ERRORS)
def get_document(services: ServicesDep, scope: KeyScopeDep, id: str) -> DocumentOut:
    record = _visible(services, scope, id)
    if record is None:
        raise _not_found(id)
    return DocumentOut.of(record, services.settings.store.collection)


@router.delete("/documents/{id}", response_model=DeletedDocument, responses=ERRORS)
def delete_document(services: ServicesDep, scope: Writer, id: str) -> DeletedDocument:
    """Removes the document's chunks from the index and the document from the catalog. An
    upload still queued is not deleted (409): its job would index it again afterwards."""
    record = services.system.catalog.get(id)
    if record is not None and not _holds(services, scope, record.collection):
        raise _not_found(id)  # in a collection the key does not hold: not even whether it is queued
    waiting = services.queue.waiting_for(id)
    if waiting is not None:
        raise ApiError(
            409,
            "document_queued",
            f"document {id!r} has an upload queued in job {waiting}, not indexed yet; "
            f"delete it once GET /v1/jobs/{waiting} shows the job finished",
        )
    if record is None:  # read again: its job may have indexed it since
        record = _visible(services, scope, id)
    if record is None:
        raise _not_found(id)
    services.probe.require()
    services.system.ingestor.delete(record.id)
    return DeletedDocument(id=record.id, source=record.source)


@router.get("/jobs/{id}", response_model=JobOut, responses=ERRORS, tags=["jobs"])
def get_job(services: ServicesDep, scope: KeyScopeDep, id: str) -> JobOut:
    """Progress (files done of total, chunks) and each file's outcome and error. A job that
    files into a collection the key does not hold is not found, like its documents."""
    job = services.queue.get(id)
    if job is None or not _holds(services, scope, job.collection):
        raise ApiError(404, "job_not_found", f"no job with id {id!r}; POST /v1/documents returns job ids")
    return JobOut.of(job)
