"""Who may do what: the API key's scope, its role and its collections, as the routes check it.

A reader may ask, list and read documents; a writer may also upload and delete; an admin may
also manage keys (`ROLES`, lowest first). A key that lists collections may use only those: a
collection it does not hold is a 403 naming the ones it does, a document in one is a 404
(its existence is not told), and a search without a collection searches the key's own. With
authentication off, and for the keys in RAGTUNE_API_KEYS, everything is allowed.

    >>> finance = KeyScope("hash", "reader", frozenset({"finance", "shared"}))
    >>> finance.allows("writer"), finance.holds("finance"), finance.holds("hr"), FULL_ACCESS.holds("hr")
    (False, True, False, True)
    >>> search_scope(finance, None, "ragtune", dict)
    ('finance', 'shared')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ragtune.api.errors import ApiError
from ragtune.store.keys import ADMIN, READER, ROLES, WRITER
from ragtune.types import MetadataError, check_collection

__all__ = ["ADMIN", "FULL_ACCESS", "READER", "WRITER", "KeyScope", "KeyScopeDep", "require_role"]

STATE_KEY = "key_scope"  # where the auth middleware leaves the scope in the ASGI scope's state


@dataclass(frozen=True)
class KeyScope:
    """What a request's API key may do: its role and collections (None: every collection)."""

    identity: str  # the key's hash; "" without authentication
    role: str = ADMIN
    collections: frozenset[str] | None = None

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def holds(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def held(self) -> str:
        return "every collection" if self.collections is None else ", ".join(sorted(self.collections))

    def within(self, collections: Iterable[str]) -> bool:
        """Whether a key holding `collections` (none: every one) would hold no more than this one."""
        names = set(collections)
        return self.collections is None or (bool(names) and names <= self.collections)


FULL_ACCESS = KeyScope("")


def get_key_scope(request: Request) -> KeyScope:
    """The scope the auth middleware found for the request's key; full access without keys."""
    found = request.scope.get("state", {}).get(STATE_KEY)
    return found if isinstance(found, KeyScope) else FULL_ACCESS


KeyScopeDep = Annotated[KeyScope, Depends(get_key_scope)]


def require_role(scope: KeyScope, role: str, action: str) -> None:
    """403 `forbidden` when the key's role is below `role`; `action` says what was refused."""
    if not scope.allows(role):
        higher = " or ".join(ROLES[ROLES.index(role) :])
        raise ApiError(
            403,
            "forbidden",
            f"{action} needs a {higher} API key; this key is a {scope.role} (`ragtune keys create --role`)",
        )


def needs(role: str, action: str) -> Callable[[Request], KeyScope]:
    """A dependency: the request's scope, after `require_role`."""

    def check(request: Request) -> KeyScope:
        scope = get_key_scope(request)
        require_role(scope, role, action)
        return scope

    return check


def valid_collection(name: str) -> str:
    """`name` when valid; 422 `invalid_collection` otherwise."""
    try:
        return check_collection(name)
    except MetadataError as exc:
        raise ApiError(422, "invalid_collection", str(exc)) from None


def require_collection(scope: KeyScope, name: str) -> str:
    """`name` when valid (else 422) and held by the key (else 403 `collection_forbidden`)."""
    valid_collection(name)
    if not scope.holds(name):
        raise ApiError(
            403,
            "collection_forbidden",
            f"this API key cannot use collection {name!r}; it holds: {scope.held()}",
        )
    return name


def upload_collection(scope: KeyScope, name: str | None, default: str) -> str:
    """Where an upload goes: `name` (created by its first upload) or the default collection."""
    return require_collection(scope, name or default)


def search_scope(
    scope: KeyScope, name: str | None, default: str, known: Callable[[], Mapping[str, int]]
) -> tuple[str, ...]:
    """The collections a search may read (`Filters.collections`): `name` alone when given (422
    invalid, 403 not held, 404 unknown), else every collection the key holds; () only for a key
    that holds every collection. `known` lists the collections with documents."""
    if name is None:
        return () if scope.collections is None else tuple(sorted(scope.collections))
    require_collection(scope, name)
    if name != default:
        existing = known()
        if name not in existing:
            visible = sorted({default, *existing} & (scope.collections or {default, *existing}))
            raise ApiError(
                404,
                "collection_not_found",
                f"no collection {name!r}; known: {', '.join(visible) or 'none'} "
                "(a collection is created by its first upload)",
            )
    return (name,)
