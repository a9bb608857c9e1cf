"""The request and response models of the collection and key routes (see `ragtune.api.schemas` for the rest)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ragtune.api.schemas import StrictModel, as_utc
from ragtune.store.keys import ApiKey
from ragtune.store.keys import CreatedKey as StoredKey


class CollectionOut(BaseModel):
    name: str
    documents: int = Field(description="Documents in it, of any status.")
    default: bool = Field(description="Whether uploads without a collection go here (RAGTUNE_COLLECTION).")


class CollectionList(BaseModel):
    default: str = Field(description="Where uploads without a collection go (RAGTUNE_COLLECTION).")
    collections: list[CollectionOut] = Field(description="The collections this API key may use, by name.")


class KeyOut(BaseModel):
    id: str
    name: str
    hint: str = Field(description="The key's first characters, to recognise it.")
    role: Literal["reader", "writer", "admin"]
    collections: list[str] = Field(description="The collections it may use; empty: every collection.")
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            name=key.name,
            hint=key.hint,
            role=key.role,
            collections=list(key.collections),
            created_at=as_utc(key.created_at),
            revoked_at=as_utc(key.revoked_at) if key.revoked_at else None,
        )


class KeyList(BaseModel):
    keys: list[KeyOut]


class KeyCreate(StrictModel):
    name: str = Field("", max_length=128, examples=["finance"])
    role: Literal["reader", "writer", "admin"] = Field(
        "reader", description="reader: ask and list; writer: also upload and delete; admin: also manage keys."
    )
    collections: list[str] = Field(
        default_factory=list, max_length=100, description="The collections it may use; empty: every collection."
    )


class CreatedKey(BaseModel):
    key: KeyOut
    secret: str = Field(description="The key itself, shown this once: send it as 'Authorization: Bearer <secret>'.")

    @classmethod
    def of(cls, created: StoredKey) -> CreatedKey:
        return cls(key=KeyOut.of(created.key), secret=created.secret)
