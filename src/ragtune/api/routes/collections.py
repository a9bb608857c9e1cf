"""Collections: the ones a key may use, and upload, listing and questions within one.

Collections live in the one vector store collection (RAGTUNE_COLLECTION, also the default
collection); a collection is created by its first upload. A key that does not hold one gets
403 on it (`ragtune.api.access`).
"""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import StreamingResponse

from ragtune.api.access import KeyScopeDep, require_collection
from ragtune.api.collection_schemas import CollectionList, CollectionOut
from ragtune.api.deps import OwnerDep, ServicesDep
from ragtune.api.errors import ApiError
from ragtune.api.routes.documents import ERRORS as _ERRORS
from ragtune.api.routes.documents import (
    CollectionField,
    FilesField,
    Limit,
    MetadataField,
    Offset,
    Status,
    TagsField,
    Writer,
    accept_upload,
    document_list,
)
from ragtune.api.routes.query import QUERY_RESPONSES, answer
from ragtune.api.schemas import DocumentList, QueryRequest, QueryResponse, UploadAccepted

router = APIRouter(prefix="/v1/collections", tags=["collections"])


@router.get("", response_model=CollectionList, responses=_ERRORS)
def list_collections(services: ServicesDep, scope: KeyScopeDep) -> CollectionList:
    """The collections this key may use with their document counts: those with documents,
    the default one, and those the key is given (even before their first upload)."""
    default = services.settings.store.collection
    counts = {name or default: n for name, n in services.system.catalog.collections().items()}
    names = {default, *counts} if scope.collections is None else set(scope.collections)
    return CollectionList(
        default=default,
        collections=[
            CollectionOut(name=name, documents=counts.get(name, 0), default=name == default)
            for name in sorted(n for n in names if scope.holds(n))
        ],
    )


@router.post(
    "/{name}/documents", status_code=status.HTTP_202_ACCEPTED, response_model=UploadAccepted, responses=_ERRORS
)
def upload_to_collection(
    services: ServicesDep,
    scope: Writer,
    name: str,
    files: FilesField,
    tags: TagsField = [],  # noqa: B006 (FastAPI copies defaults)
    metadata: MetadataField = None,
    collection: CollectionField = None,
) -> UploadAccepted:
    """POST /v1/documents into collection `name`, created by its first upload."""
    _same(name, collection)
    return accept_upload(services, scope, files, tags, metadata, name)


@router.get("/{name}/documents", response_model=DocumentList, responses=_ERRORS)
def list_collection(
    services: ServicesDep, scope: KeyScopeDep, name: str, offset: Offset = 0, limit: Limit = 50, status: Status = None
) -> DocumentList:
    """The collection's documents (none for a collection without uploads yet)."""
    require_collection(scope, name)
    return document_list(services, (name,), offset, limit, status)


@router.post("/{name}/query", response_model=QueryResponse, responses=QUERY_RESPONSES)
def query_collection(
    services: ServicesDep, owner: OwnerDep, scope: KeyScopeDep, name: str, request: QueryRequest
) -> QueryResponse | StreamingResponse:
    """POST /v1/query within collection `name` only."""
    _same(name, request.collection)
    return answer(services, owner, scope, request.model_copy(update={"collection": name}))


def _same(path: str, body: str | None) -> None:
    if body and body != path:
        raise ApiError(
            422,
            "collection_mismatch",
            f"the path names collection {path!r} and the request {body!r}; give one of them",
        )
