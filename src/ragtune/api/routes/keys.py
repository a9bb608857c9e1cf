"""API keys over HTTP, for admin keys: list, create (the secret is in that answer only), revoke.

An admin key limited to some collections sees and manages only keys limited to those, and
cannot make a key that holds more than it does.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, status

from ragtune.api.access import ADMIN, KeyScope, needs
from ragtune.api.collection_schemas import CreatedKey, KeyCreate, KeyList, KeyOut
from ragtune.api.deps import Services, ServicesDep
from ragtune.api.errors import ApiError
from ragtune.api.schemas import ErrorResponse
from ragtune.store.keys import KeyStore

router = APIRouter(prefix="/v1/keys", tags=["keys"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 404, 422, 429, 503)}
Admin = Annotated[KeyScope, Depends(needs(ADMIN, "managing API keys"))]


def _store(services: Services) -> KeyStore:
    return services.authenticator.keys


@router.get("", response_model=KeyList, responses=_ERRORS)
def list_keys(services: ServicesDep, scope: Admin) -> KeyList:
    """The stored keys (never the keys themselves), oldest first; not those of RAGTUNE_API_KEYS."""
    return KeyList(keys=[KeyOut.of(k) for k in _store(services).list() if scope.within(k.collections)])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CreatedKey, responses=_ERRORS)
def create_key(services: ServicesDep, scope: Admin, body: KeyCreate) -> CreatedKey:
    """A new key with a role and collections; its secret is in this answer and never again."""
    if not scope.within(body.collections):
        raise ApiError(
            403,
            "collection_forbidden",
            f"this API key holds {scope.held()}: a key it makes must be limited to some of those",
        )
    try:
        created = _store(services).create(body.name, body.role, body.collections)
    except ValueError as exc:
        raise ApiError(422, "invalid_key", str(exc)) from None
    services.authenticator.refresh()  # usable at once, not after the next refresh
    return CreatedKey.of(created)


@router.delete("/{key_id}", response_model=KeyOut, responses=_ERRORS)
def revoke_key(services: ServicesDep, scope: Admin, key_id: str) -> KeyOut:
    """Revokes the key: it is refused from now on (revoking the last key does not open the API)."""
    keys = _store(services)
    found = next((k for k in keys.list() if k.id == key_id and scope.within(k.collections)), None)
    if found is None:
        raise ApiError(404, "key_not_found", f"no API key with id {key_id[:40]!r}; GET /v1/keys lists them")
    revoked = keys.revoke(key_id)
    services.authenticator.refresh()
    return KeyOut.of(revoked)
