"""What a chunk store is: the `VectorStore` protocol every component is typed against, and its errors.

`MilvusStore` implements it (Milvus Lite or a server); `TimedStore` wraps any store and times
each call. A component never needs to know which it holds.

    >>> from ragtune.store.base import is_server_uri
    >>> is_server_uri("http://milvus:19530"), is_server_uri("grpc://milvus:19530"), is_server_uri("./data/milvus.db")
    (True, True, False)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from ragtune.types import Chunk, Filters, Hit

SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")


def is_server_uri(uri: str) -> bool:
    """A Milvus server address; anything else is a Milvus Lite data path."""
    return uri.startswith(SERVER_SCHEMES)


class StoreError(RuntimeError):
    """The vector store cannot serve the request; the message says what to do."""


class StoreLockedError(StoreError):
    """Another process holds the Milvus Lite data path."""


class StoreUnavailableError(StoreError):
    """The Milvus server cannot be reached."""


class VectorStore(Protocol):
    """Chunks with their dense vectors and a BM25 index over their text, searchable by both."""

    @property
    def uri(self) -> str: ...

    @property
    def collection(self) -> str:
        """The store collection (RAGTUNE_COLLECTION): what the catalog's records are kept under."""
        ...

    @property
    def physical(self) -> str:
        """The Milvus collection holding its chunks (``ragtune reindex`` builds the next one beside it)."""
        ...

    @property
    def dimension(self) -> int: ...

    def insert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> int: ...

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> int: ...

    def delete_documents(self, doc_ids: Iterable[str]) -> None: ...

    def search_dense(self, vectors: np.ndarray, limit: int, filters: Filters | None = None) -> list[list[Hit]]: ...

    def search_bm25(self, queries: list[str], limit: int, filters: Filters | None = None) -> list[list[Hit]]: ...

    def count(self, filters: Filters | None = None) -> int: ...

    def chunks(self, doc_id: str, limit: int = 16384) -> list[Hit]:
        """The stored chunks of one document, in order."""
        ...

    def fetch(self, chunk_ids: Sequence[str]) -> list[Hit]:
        """The stored chunks with these ids (those that exist), in id order."""
        ...

    def ping(self) -> None:
        """Raises StoreUnavailableError unless the store answers."""
        ...

    def drop(self) -> None: ...

    def physical_collections(self) -> set[str]:
        """The names of the Milvus collections on this store's connection."""
        ...

    def sibling(self, physical: str, dimension: int) -> VectorStore:
        """This store over another Milvus collection of the same connection, made if missing;
        closing it leaves the connection open."""
        ...

    def close(self) -> None: ...
