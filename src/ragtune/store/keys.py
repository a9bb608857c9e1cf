"""API keys made by `ragtune keys create`, stored hashed in the catalog database.

A key is 32 random bytes (``rt_`` + URL-safe base64), so one SHA-256 is enough to store
it: there is nothing to brute-force that a slow password hash would protect. The key itself
is shown once, at creation; afterwards it is known by its id and first characters.

Each key has a scope: a role (`ROLES`: a reader queries and lists, a writer also uploads and
deletes, an admin also manages keys) and the collections it may use (none listed: every
collection). Keys made before scopes existed read as admin on every collection.

    >>> from ragtune.store.catalog import Catalog
    >>> from ragtune.store.keys import KeyStore, hash_key
    >>> keys = KeyStore(Catalog("sqlite://"))
    >>> created = keys.create("ci")
    >>> created.secret.startswith("rt_"), keys.active_hashes() == {hash_key(created.secret)}
    (True, True)
    >>> finance = keys.create("finance", role="reader", collections=["finance", "shared"])
    >>> keys.scopes()[hash_key(finance.secret)]
    ('reader', ('finance', 'shared'))
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, select, text
from sqlalchemy.orm import Mapped, mapped_column

from ragtune.store.catalog import Catalog
from ragtune.store.tables import TableBase, utc_now
from ragtune.types import MetadataError, check_collection

_PREFIX = "rt_"
READER, WRITER, ADMIN = "reader", "writer", "admin"
ROLES = (READER, WRITER, ADMIN)  # each may do what the ones before it may
MAX_KEY_COLLECTIONS = 100


def check_role(role: str) -> str:
    """`role` when it is one of `ROLES`; ValueError naming them otherwise."""
    if role not in ROLES:
        raise ValueError(f"role {role[:40]!r} is not one of {', '.join(ROLES)}")
    return role


def check_collections(collections: Iterable[str]) -> tuple[str, ...]:
    """The names stripped, deduplicated and sorted; ValueError for an invalid one or too many."""
    names = sorted({c.strip() for c in collections if c.strip()})
    if len(names) > MAX_KEY_COLLECTIONS:
        raise ValueError(f"a key holds at most {MAX_KEY_COLLECTIONS} collections; got {len(names)}")
    try:
        return tuple(check_collection(c) for c in names)
    except MetadataError as exc:
        raise ValueError(str(exc)) from None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class ApiKeyRow(TableBase):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16), default="")  # the first characters, to recognise it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, default=None)
    # Added with scopes: keys made before them are admin on every collection.
    role: Mapped[str] = mapped_column(String(16), default=ADMIN, server_default=text("'admin'"))
    collections: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    hint: str
    created_at: datetime
    revoked_at: datetime | None
    role: str = ADMIN
    collections: tuple[str, ...] = ()  # empty: every collection


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once; only its hash is stored


class KeyStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        catalog.ensure_tables(ApiKeyRow)

    def create(self, name: str = "", role: str = ADMIN, collections: Iterable[str] = ()) -> CreatedKey:
        """A new key; ValueError for a name over 128 characters, an unknown role or an invalid collection."""
        if len(name) > 128:
            raise ValueError(f"a key name has at most 128 characters; got {len(name)}")
        check_role(role)
        names = check_collections(collections)
        secret = _PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=secrets.token_hex(4),
            name=name,
            hash=hash_key(secret),
            hint=secret[:7] + "…",
            created_at=utc_now(),
            role=role,
            collections=list(names),
        )
        with self.catalog.session() as s, s.begin():
            s.add(row)
        return CreatedKey(_key(row), secret)

    def list(self) -> list[ApiKey]:
        with self.catalog.session() as s:
            return [_key(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))]

    def revoke(self, key_id: str) -> ApiKey:
        with self.catalog.session() as s, s.begin():
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                known = ", ".join(s.scalars(select(ApiKeyRow.id))) or "none"
                raise KeyError(f"no API key with id {key_id!r} (known ids: {known}); see `ragtune keys list`")
            if row.revoked_at is None:
                row.revoked_at = utc_now()
            return _key(row)

    def active_hashes(self) -> set[str]:
        return set(self.scopes())

    def scopes(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """hash -> (role, collections) of every active key."""
        with self.catalog.session() as s:
            rows = s.execute(
                select(ApiKeyRow.hash, ApiKeyRow.role, ApiKeyRow.collections).where(ApiKeyRow.revoked_at.is_(None))
            )
            return {h: (_role(role), _names(names)) for h, role, names in rows}

    def exist(self) -> bool:
        """Whether any key was ever created, revoked ones included."""
        with self.catalog.session() as s:
            return s.scalar(select(ApiKeyRow.id).limit(1)) is not None


def _role(role: str | None) -> str:
    return role if role in ROLES else READER  # a role written by hand that is not one: the least


def _names(collections: Any) -> tuple[str, ...]:
    return tuple(str(c) for c in collections) if isinstance(collections, list) else ()


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(row.id, row.name, row.hint, row.created_at, row.revoked_at, _role(row.role), _names(row.collections))
