"""The chunk store: one Milvus collection holding text, BM25 sparse vectors and dense vectors.

The same code runs on Milvus Lite (a local data path, the default) and on a Milvus
server or cluster (``http://host:19530``). Milvus computes the BM25 sparse vector from the
text itself (a BM25 function on an analysed VARCHAR field), so the keyword index can never
drift from the stored text.

    >>> import numpy as np, tempfile
    >>> from ragtune.store.milvus import MilvusStore
    >>> store = MilvusStore(tempfile.mkdtemp() + "/milvus.db", "demo", dimension=4)
    >>> store.count()
    0
    >>> store.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.store.base import StoreError, StoreLockedError, StoreUnavailableError, is_server_uri
from ragtune.types import MAX_TAG_CHARS, MAX_TAGS, Chunk, Filters, Hit

_INSERT_BATCH = 500  # measured: 10k rows with BM25 insert in ~2.5 s at 500/batch, 125 s as one batch
# Milvus Lite's per-query cost grows with the batch (measured: 4.5 ms/query at 10, 14 ms at
# 50, minutes for 2,000), so large batches are cut into groups of this size.
_SEARCH_BATCH = 16
_MAX_TEXT = 65535
_OUTPUT_FIELDS = ["id", "doc_id", "text", "source", "title", "page", "heading", "tags"]
# English analysis for BM25: stop words out, stems folded, so "running" finds "runs".
BM25_ANALYZER = {
    "tokenizer": "standard",
    "filter": ["lowercase", {"type": "stop", "stop_words": ["_english_"]}, {"type": "stemmer", "language": "english"}],
}


def quote(value: str) -> str:
    r"""`value` as a Milvus string literal: backslash and double quote escaped, nothing else.

    Milvus' expression parser undoes ``\\`` and ``\"`` but not JSON's ``\u00e9`` (nor ``\t``),
    so non-ASCII text and control characters are written as themselves (checked against
    Milvus Lite: "résumé", "café", tabs, quotes and backslashes all match; a newline is
    rejected as an invalid expression).
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quoted_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def filter_expression(filters: Filters | None) -> str:
    """Milvus' boolean expression for `filters`; values are quoted (`quote`), never spliced in raw."""
    if filters is None:
        return ""
    clauses = []
    if filters.sources:
        clauses.append(f"source in {_quoted_list(filters.sources)}")
    if filters.doc_ids:
        clauses.append(f"doc_id in {_quoted_list(filters.doc_ids)}")
    if filters.tags:
        clauses.append(f"ARRAY_CONTAINS_ANY(tags, {_quoted_list(filters.tags)})")
    return " and ".join(clauses)


class _LiteLock:
    """Milvus Lite opens a data path from one process only; say who holds it, not just that."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path.with_name(data_path.name + ".owner")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self._fd)
            raise StoreLockedError(
                f"the Milvus Lite data at {data_path} is in use by {owner}. Milvus Lite allows one "
                "process per data path: stop that process, or talk to it (e.g. the API of a running "
                "`ragtune serve`), or use a Milvus server (RAGTUNE_MILVUS_URI=http://host:19530)"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:300]})".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


class MilvusStore:
    """Chunks with dense and BM25 vectors in one Milvus collection."""

    def __init__(self, uri: str, collection: str, dimension: int, token: str = "", timeout: float = 10.0) -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        if dimension <= 0:
            raise ValueError(f"dimension must be greater than 0; got {dimension}")
        self.uri, self.collection, self.dimension = uri, collection, dimension
        # Every call, and the connection itself, carries a deadline (StoreSettings.
        # milvus_timeout_seconds): without one pymilvus retries a dead server for minutes.
        self.timeout = timeout
        self._client: Any = None
        self._seen_rows = False  # see search_bm25
        self._lock: _LiteLock | None = None
        if not is_server_uri(uri):
            data_path = Path(uri).expanduser().resolve()
            data_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _LiteLock(data_path)
            uri = str(data_path)
        try:
            self._client = MilvusClient(uri=uri, token=token, timeout=timeout)
            self._ensure_collection()
        except MilvusException as exc:
            self.close()
            if is_server_uri(self.uri) and _is_connection_failure(exc):
                raise StoreUnavailableError(self._cannot_connect(exc)) from exc
            raise self._translate(exc) from exc
        except Exception as exc:
            self.close()
            if "opened by another program" in str(exc) or type(exc).__name__ == "ConnectionConfigException":
                raise StoreLockedError(f"the Milvus Lite data at {uri} is open in another process") from exc
            raise StoreUnavailableError(self._cannot_connect(exc)) from exc

    def _cannot_connect(self, exc: Exception) -> str:
        return (
            f"cannot connect to Milvus at {self.uri} within {self.timeout:g} s ({str(exc)[:200]}). "
            "Is the Milvus server running and reachable? Check RAGTUNE_MILVUS_URI (empty for the "
            "local Milvus Lite data path) and RAGTUNE_MILVUS_TIMEOUT_SECONDS"
        )

    # --- schema ------------------------------------------------------------------------
    def _ensure_collection(self) -> None:
        from pymilvus import DataType, Function, FunctionType

        client = self._client
        if client.has_collection(self.collection, timeout=self.timeout):
            described = client.describe_collection(self.collection, timeout=self.timeout)
            dims = [f.get("params", {}).get("dim") for f in described["fields"] if f["name"] == "dense"]
            if dims and int(dims[0]) != self.dimension:
                raise StoreError(
                    f"collection {self.collection!r} holds {dims[0]}-d vectors but the embedding model "
                    f"gives {self.dimension}-d; use another RAGTUNE_COLLECTION or re-index into a new one"
                )
            client.load_collection(self.collection, timeout=self.timeout)
            return
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
        schema.add_field(
            "text", DataType.VARCHAR, max_length=_MAX_TEXT, enable_analyzer=True, analyzer_params=BM25_ANALYZER
        )
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dimension)
        schema.add_field("source", DataType.VARCHAR, max_length=4096)
        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("page", DataType.INT64)
        schema.add_field("heading", DataType.VARCHAR, max_length=1024)
        schema.add_field(
            "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_TAGS, max_length=MAX_TAG_CHARS
        )
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        index = client.prepare_index_params()
        # Lite searches exactly (FLAT, a few ms at 10k chunks); a server picks its ANN index.
        index.add_index("dense", index_type="AUTOINDEX" if is_server_uri(self.uri) else "FLAT", metric_type="COSINE")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        client.create_collection(
            self.collection, schema=schema, index_params=index, consistency_level="Strong", timeout=self.timeout
        )

    # --- writes --------------------------------------------------------------------------
    def insert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> int:
        return self._write(self._client.insert, chunks, vectors)

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> int:
        """Writes the chunks, replacing rows with the same ids (a re-embedding)."""
        return self._write(self._client.upsert, chunks, vectors)

    def _write(self, write: Any, chunks: Sequence[Chunk], vectors: np.ndarray) -> int:
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        rows = [
            {
                "id": c.id,
                "doc_id": c.doc_id,
                "text": _fit(c.text, _MAX_TEXT),
                "dense": v.tolist(),
                "source": _fit(c.source, 4096),
                "title": _fit(c.title, 1024),
                "page": int(c.page),
                "heading": _fit(c.heading, 1024),
                "tags": [_fit(t, MAX_TAG_CHARS) for t in c.tags[:MAX_TAGS]],
            }
            for c, v in zip(chunks, vectors)
        ]
        for start in range(0, len(rows), _INSERT_BATCH):
            self._call(write, self.collection, rows[start : start + _INSERT_BATCH])
        return len(rows)

    def delete_documents(self, doc_ids: Iterable[str]) -> None:
        ids = list(doc_ids)
        if ids:
            self._seen_rows = False
            self._call(self._client.delete, self.collection, filter=filter_expression(Filters(doc_ids=tuple(ids))))

    # --- reads ---------------------------------------------------------------------------
    def search_dense(self, vectors: np.ndarray, limit: int, filters: Filters | None = None) -> list[list[Hit]]:
        return self._search([v.tolist() for v in np.atleast_2d(vectors)], "dense", "COSINE", limit, filters)

    def search_bm25(self, queries: list[str], limit: int, filters: Filters | None = None) -> list[list[Hit]]:
        # BM25 divides by the collection's average chunk length: with no rows (nothing
        # ingested yet, or everything deleted) Milvus builds a NaN query vector, logs an
        # assertion and fails. Nothing indexed means nothing found, as the dense search
        # says. Look before searching until rows have been seen (a count before every
        # search would slow every query); the except covers another process emptying it.
        if not self._seen_rows:
            if self.count() == 0:
                return [[] for _ in queries]
            self._seen_rows = True
        try:
            return self._search(queries, "sparse", "BM25", limit, filters)
        except StoreError as exc:
            if "NaN or Inf" in str(exc) and self.count() == 0:
                self._seen_rows = False
                return [[] for _ in queries]
            raise

    def _search(self, data: list[Any], field: str, metric: str, limit: int, filters: Filters | None) -> list[list[Hit]]:
        mode = "dense" if field == "dense" else "bm25"
        results: list[list[Hit]] = []
        for start in range(0, len(data), _SEARCH_BATCH):
            batch = self._call(
                self._client.search,
                self.collection,
                data=data[start : start + _SEARCH_BATCH],
                anns_field=field,
                limit=limit,
                filter=filter_expression(filters),
                output_fields=_OUTPUT_FIELDS,
                search_params={"metric_type": metric},
            )
            results.extend([_hit(h, mode) for h in hits] for hits in batch)
        return results

    def count(self, filters: Filters | None = None) -> int:
        rows = self._call(
            self._client.query,
            self.collection,
            filter=filter_expression(filters),
            output_fields=["count(*)"],
        )
        return int(rows[0]["count(*)"])

    def chunks(self, doc_id: str, limit: int = 16384) -> list[Hit]:
        # pymilvus 2.5 fails to decode an empty query result from a collection with an
        # ARRAY field ("Unsupported data type: 0"); count(*) is unaffected.
        if self.count(Filters(doc_ids=(doc_id,))) == 0:
            return []
        rows = self._call(
            self._client.query,
            self.collection,
            filter=filter_expression(Filters(doc_ids=(doc_id,))),
            output_fields=_OUTPUT_FIELDS,
            limit=limit,
        )
        return sorted((_hit({"entity": r, "distance": 0.0}, "") for r in rows), key=lambda h: h.id)

    def fetch(self, chunk_ids: Sequence[str]) -> list[Hit]:
        if not chunk_ids:
            return []
        expression = f"id in {_quoted_list(chunk_ids)}"
        # The same empty-result decoding failure as in `chunks`: look before querying.
        found = self._call(self._client.query, self.collection, filter=expression, output_fields=["count(*)"])
        if not int(found[0]["count(*)"]):
            return []
        rows = self._call(
            self._client.query, self.collection, filter=expression, output_fields=_OUTPUT_FIELDS, limit=len(chunk_ids)
        )
        return sorted((_hit({"entity": r, "distance": 0.0}, "") for r in rows), key=lambda h: h.id)

    def ping(self) -> None:
        """Raises StoreUnavailableError unless the collection answers."""
        self.count(Filters(doc_ids=("__ping__",)))

    def drop(self) -> None:
        self._call(self._client.drop_collection, self.collection)

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception):  # closing a dead connection must not mask the real error
                client.close()
            self._client = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- errors --------------------------------------------------------------------------
    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        from pymilvus.exceptions import MilvusException

        if self._client is None:
            raise StoreError("the store is closed")
        try:
            return method(*args, timeout=self.timeout, **kwargs)
        except MilvusException as exc:
            raise self._translate(exc) from exc
        except Exception as exc:  # grpc.RpcError / FutureTimeoutError that pymilvus lets through
            if is_server_uri(self.uri) and _is_connection_failure(exc):
                raise StoreUnavailableError(
                    f"Milvus at {self.uri} did not answer within {self.timeout:g} s ({str(exc)[:200]}); "
                    "check that the server is up"
                ) from exc
            raise

    def _translate(self, exc: Exception) -> StoreError:
        text = str(exc)
        if is_server_uri(self.uri) and _is_connection_failure(exc):
            return StoreUnavailableError(
                f"Milvus at {self.uri} is unreachable ({text[:200]}); check that the server is up"
            )
        return StoreError(f"Milvus error on {self.collection!r}: {text[:500]}")


_UNREACHABLE = ("unavailable", "connect", "deadline", "timeout", "timed out", "fail to", "not ready")


def _is_connection_failure(exc: BaseException) -> bool:
    """Whether `exc` says the server is unreachable or did not answer in time (gRPC
    DEADLINE_EXCEEDED / UNAVAILABLE, a connection that never became ready), not a bad request."""
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError
        with contextlib.suppress(Exception):
            if getattr(code(), "name", "") in ("DEADLINE_EXCEEDED", "UNAVAILABLE"):
                return True
    if isinstance(exc, TimeoutError) or type(exc).__name__ in ("FutureTimeoutError", "MilvusUnavailableException"):
        return True
    text = str(exc).lower()
    return any(s in text for s in _UNREACHABLE)


def _fit(text: str, limit: int) -> str:
    """Milvus limits VARCHAR by bytes; cut on a character boundary below the limit."""
    encoded = text.encode("utf-8")
    return text if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore")


def _hit(raw: dict[str, Any], mode: str) -> Hit:
    entity = raw["entity"]
    score = float(raw["distance"])
    return Hit(
        id=entity["id"],
        doc_id=entity["doc_id"],
        text=entity["text"],
        source=entity["source"],
        title=entity["title"],
        page=int(entity["page"]),
        heading=entity["heading"],
        tags=tuple(entity.get("tags") or ()),
        score=score,
        scores={mode: score} if mode else {},
    )
