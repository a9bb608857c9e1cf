"""API keys made by `ragtune keys create`, stored hashed in the catalog database.

A key is 32 random bytes (``rt_`` + URL-safe base64), so one SHA-256 is enough to store
it: there is nothing to brute-force that a slow password hash would protect. The key itself
is shown once, at creation; afterwards it is known by its id and first characters.

    >>> from ragtune.store.catalog import Catalog
    >>> from ragtune.store.keys import KeyStore, hash_key
    >>> keys = KeyStore(Catalog("sqlite://"))
    >>> created = keys.create("ci")
    >>> created.secret.startswith("rt_"), keys.active_hashes() == {hash_key(created.secret)}
    (True, True)
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, String, select
from sqlalchemy.orm import Mapped, mapped_column

from ragtune.store.catalog import Catalog
from ragtune.store.tables import TableBase, utc_now

_PREFIX = "rt_"


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


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    hint: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once; only its hash is stored


class KeyStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        TableBase.metadata.create_all(catalog.engine, tables=[TableBase.metadata.tables[ApiKeyRow.__tablename__]])

    def create(self, name: str = "") -> CreatedKey:
        if len(name) > 128:
            raise ValueError(f"a key name has at most 128 characters; got {len(name)}")
        secret = _PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=secrets.token_hex(4), name=name, hash=hash_key(secret), hint=secret[:7] + "…", created_at=utc_now()
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
        with self.catalog.session() as s:
            return set(s.scalars(select(ApiKeyRow.hash).where(ApiKeyRow.revoked_at.is_(None))))

    def exist(self) -> bool:
        """Whether any key was ever created, revoked ones included."""
        with self.catalog.session() as s:
            return s.scalar(select(ApiKeyRow.id).limit(1)) is not None


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(row.id, row.name, row.hint, row.created_at, row.revoked_at)
