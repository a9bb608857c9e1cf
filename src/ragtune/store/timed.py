"""`TimedStore`: any `VectorStore`, each call's duration reported by operation.

It wraps a store before the store is handed to the components, so retrieval and ingestion
are timed alike; the service reports the durations to Prometheus.

    >>> import numpy as np, tempfile
    >>> from ragtune.store.milvus import MilvusStore
    >>> from ragtune.store.timed import TimedStore
    >>> seen = []
    >>> store = TimedStore(MilvusStore(tempfile.mkdtemp() + "/m.db", "demo", dimension=4), lambda op, s: seen.append(op))
    >>> store.count(), seen
    (0, ['count'])
    >>> store.close()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from ragtune.store.base import VectorStore
from ragtune.types import Chunk, Filters, Hit

Observe = Callable[[str, float], None]  # (operation, seconds)


class TimedStore:
    """A `VectorStore` that reports how long each call of `inner` took to `observe`."""

    def __init__(self, inner: VectorStore, observe: Observe) -> None:
        self.inner = inner
        self._observe = observe

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._observe(operation, time.perf_counter() - started)

    @property
    def uri(self) -> str:
        return self.inner.uri

    @property
    def collection(self) -> str:
        return self.inner.collection

    @property
    def physical(self) -> str:
        return self.inner.physical

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def insert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> int:
        with self._timed("insert"):
            return self.inner.insert(chunks, vectors)

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> int:
        with self._timed("upsert"):
            return self.inner.upsert(chunks, vectors)

    def delete_documents(self, doc_ids: Iterable[str]) -> None:
        with self._timed("delete"):
            self.inner.delete_documents(doc_ids)

    def search_dense(self, vectors: np.ndarray, limit: int, filters: Filters | None = None) -> list[list[Hit]]:
        with self._timed("search_dense"):
            return self.inner.search_dense(vectors, limit, filters)

    def search_bm25(self, queries: list[str], limit: int, filters: Filters | None = None) -> list[list[Hit]]:
        with self._timed("search_bm25"):
            return self.inner.search_bm25(queries, limit, filters)

    def count(self, filters: Filters | None = None) -> int:
        with self._timed("count"):
            return self.inner.count(filters)

    def chunks(self, doc_id: str, limit: int = 16384) -> list[Hit]:
        with self._timed("query"):
            return self.inner.chunks(doc_id, limit)

    def fetch(self, chunk_ids: Sequence[str]) -> list[Hit]:
        with self._timed("query"):
            return self.inner.fetch(chunk_ids)

    def ping(self) -> None:
        with self._timed("ping"):
            self.inner.ping()

    def drop(self) -> None:
        with self._timed("drop"):
            self.inner.drop()

    def physical_collections(self) -> set[str]:
        return self.inner.physical_collections()

    def sibling(self, physical: str, dimension: int) -> VectorStore:
        # Untimed: a sibling is a reindex's shadow collection, not what the service serves.
        return self.inner.sibling(physical, dimension)

    def close(self) -> None:
        self.inner.close()
