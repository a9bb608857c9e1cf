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
import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.store.base import StoreError, StoreLockedError, StoreUnavailableError, is_server_uri
from ragtune.store.expressions import filter_expression, quoted_list
from ragtune.store.lite_lock import LiteLock
from ragtune.types import MAX_TAG_CHARS, MAX_TAGS, Chunk, Filters, Hit

_INSERT_BATCH = 500  # measured: 10k rows with BM25 insert in ~2.5 s at 500/batch, 125 s as one batch
# Milvus Lite's per-query cost grows with the batch (measured: 4.5 ms/query at 10, 14 ms at
# 50, minutes for 2,000), so large batches are cut into groups of this size.
_SEARCH_BATCH = 16
_MAX_TEXT = 65535
_UPGRADE_SUFFIX = "__upgrading"
_OUTPUT_FIELDS = ["id", "doc_id", "text", "source", "title", "page", "heading", "tags", "collection", "metadata"]
# English analysis for BM25: stop words out, stems folded, so "running" finds "runs".
BM25_ANALYZER = {
    "tokenizer": "standard",
    "filter": ["lowercase", {"type": "stop", "stop_words": ["_english_"]}, {"type": "stemmer", "language": "english"}],
}


class MilvusStore:
    """Chunks with dense and BM25 vectors in one Milvus collection: `physical`, which holds the
    chunks of the store collection `collection` (RAGTUNE_COLLECTION; they differ once
    ``ragtune reindex`` has moved the chunks to a new Milvus collection)."""

    def __init__(
        self,
        uri: str,
        collection: str,
        dimension: int,
        token: str = "",
        timeout: float = 10.0,
        upgrade_server: bool = False,
        physical: str = "",
    ) -> None:
        """`upgrade_server`: upgrade an old collection on a Milvus server (`ragtune upgrade-store`);
        `physical`: the Milvus collection (default: `collection`)."""
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        if dimension <= 0:
            raise ValueError(f"dimension must be greater than 0; got {dimension}")
        self.uri, self.collection, self.physical, self.dimension = uri, collection, physical or collection, dimension
        self._upgrade_server = upgrade_server
        # Every call, and the connection itself, carries a deadline (StoreSettings.
        # milvus_timeout_seconds): without one pymilvus retries a dead server for minutes.
        self.timeout = timeout
        self._client: Any = None
        self._owns_client = True  # False in a `sibling`
        self._seen_rows = False  # see search_bm25
        self._lock: LiteLock | None = None
        if not is_server_uri(uri):
            data_path = Path(uri).expanduser().resolve()
            data_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = LiteLock(data_path)
            uri = str(data_path)
        try:
            self._client = MilvusClient(uri=uri, token=token, timeout=timeout)
            self._ensure_collection()
        except MilvusException as exc:
            self.close()
            if is_server_uri(self.uri) and _is_connection_failure(exc):
                raise StoreUnavailableError(self._cannot_connect(exc)) from exc
            raise self._translate(exc) from exc
        except StoreError:  # the store answered, and refused: its message says why
            self.close()
            raise
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
        client = self._client
        has = set(client.list_collections(timeout=self.timeout))
        fields = self._fields(self.physical) if self.physical in has else None
        if fields is not None:
            dimension = fields.get("dense", {}).get("params", {}).get("dim")
            if dimension and int(dimension) != self.dimension:
                raise StoreError(
                    f"collection {self.physical!r} holds {dimension}-d vectors but the embedding model "
                    f"gives {self.dimension}-d; use another RAGTUNE_COLLECTION or re-index into a new one"
                )
        if self._upgrade_name in has or (fields is not None and "collection" not in fields):
            if is_server_uri(self.uri) and not self._upgrade_server:
                # Every replica and worker opens the store as it starts; copies made by two of
                # them at once would drop each other's. On Milvus Lite the data path's lock
                # (`LiteLock`) already makes this process the only one.
                raise StoreError(
                    f"collection {self.physical!r} on {self.uri} was made before ragtune had collections and "
                    "metadata; stop every ragtune process using it, then upgrade it once: ragtune upgrade-store"
                )
            self.upgrade()
        elif fields is None:
            self._create(self.physical)
        client.load_collection(self.physical, timeout=self.timeout)

    def _fields(self, name: str) -> dict[str, dict[str, Any]]:
        """The collection's fields by name, as Milvus describes them."""
        described = self._client.describe_collection(name, timeout=self.timeout)
        return {f["name"]: f for f in described["fields"]}

    def _current(self, name: str) -> bool:
        """Whether the collection has the fields of collections and metadata."""
        return "collection" in self._fields(name)

    @property
    def _upgrade_name(self) -> str:
        """Where an upgrade copies the rows to (within Milvus' 255 characters)."""
        return self.physical[: 255 - len(_UPGRADE_SUFFIX)] + _UPGRADE_SUFFIX

    def upgrade(self) -> None:
        """Brings a collection from before collections and metadata to the current schema, its
        rows joining the default collection, or finishes an upgrade that was stopped. Milvus
        Lite 2.5 can neither add a field nor rename a collection, so the rows are copied out
        to a second collection and back into the collection made anew (BM25 vectors are
        rebuilt from the text). A copy's source is dropped only once the copy holds every row,
        so a process stopped at any point leaves a complete set of rows that the next call
        finishes from. Only one process may run it at a time (see `_ensure_collection`)."""
        client = self._client
        upgrade = self._upgrade_name
        has = set(client.list_collections(timeout=self.timeout))
        if self.physical in has and not self._current(self.physical):
            if upgrade in has:  # a first copy left half-made
                client.drop_collection(upgrade, timeout=self.timeout)
            self._create(upgrade)
            old_fields = [f for f in _OUTPUT_FIELDS if f not in ("collection", "metadata")]
            self._copy(self.physical, upgrade, old_fields, {"collection": self.collection, "metadata": {}})
            client.drop_collection(self.physical, timeout=self.timeout)
            has.discard(self.physical)
        elif upgrade not in has:
            return  # nothing to upgrade
        # the copy is complete: the collection is made anew from it (again, if a copy back was stopped)
        if self.physical in has:
            client.drop_collection(self.physical, timeout=self.timeout)
        self._create(self.physical)
        self._copy(upgrade, self.physical, _OUTPUT_FIELDS, {})
        client.drop_collection(upgrade, timeout=self.timeout)

    def _copy(self, source: str, target: str, fields: list[str], extra: dict[str, Any]) -> None:
        client = self._client
        client.load_collection(source, timeout=self.timeout)
        total = int(client.query(source, filter="", output_fields=["count(*)"])[0]["count(*)"])
        if total == 0:
            return
        # Stop at the count, never asking for the page after the last: pymilvus 2.5 fails to
        # decode an empty page of a collection with an ARRAY field (see `chunks`).
        rows = client.query_iterator(source, batch_size=_INSERT_BATCH, output_fields=[*fields, "dense"])
        copied = 0
        while copied < total:
            batch = rows.next()
            if not batch:
                break
            client.upsert(target, [{**r, **extra} for r in batch])  # a page read twice is written once
            copied += len(batch)
        rows.close()
        if copied != total:
            raise StoreError(f"upgrading {self.physical!r} copied {copied} of {total} rows; start again to retry")

    def _create(self, name: str) -> None:
        from pymilvus import DataType, Function, FunctionType

        client = self._client
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
        # ragtune's collections are a field, not Milvus collections: one query can search all
        # the collections a reader holds. (A Milvus partition key would suit a server, but
        # Milvus Lite 2.5 hangs creating one.)
        schema.add_field("collection", DataType.VARCHAR, max_length=255)
        schema.add_field("metadata", DataType.JSON)
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
            name, schema=schema, index_params=index, consistency_level="Strong", timeout=self.timeout
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
                "collection": c.collection or self.collection,
                "metadata": c.metadata,
            }
            for c, v in zip(chunks, vectors)
        ]
        for start in range(0, len(rows), _INSERT_BATCH):
            self._call(write, self.physical, rows[start : start + _INSERT_BATCH])
        return len(rows)

    def delete_documents(self, doc_ids: Iterable[str]) -> None:
        ids = list(doc_ids)
        if ids:
            self._seen_rows = False
            self._call(self._client.delete, self.physical, filter=filter_expression(Filters(doc_ids=tuple(ids))))

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
                self.physical,
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
            self.physical,
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
            self.physical,
            filter=filter_expression(Filters(doc_ids=(doc_id,))),
            output_fields=_OUTPUT_FIELDS,
            limit=limit,
        )
        return sorted((_hit({"entity": r, "distance": 0.0}, "") for r in rows), key=lambda h: h.id)

    def fetch(self, chunk_ids: Sequence[str]) -> list[Hit]:
        if not chunk_ids:
            return []
        expression = f"id in {quoted_list(chunk_ids)}"
        # The same empty-result decoding failure as in `chunks`: look before querying.
        found = self._call(self._client.query, self.physical, filter=expression, output_fields=["count(*)"])
        if not int(found[0]["count(*)"]):
            return []
        rows = self._call(
            self._client.query, self.physical, filter=expression, output_fields=_OUTPUT_FIELDS, limit=len(chunk_ids)
        )
        return sorted((_hit({"entity": r, "distance": 0.0}, "") for r in rows), key=lambda h: h.id)

    def ping(self) -> None:
        """Raises StoreUnavailableError unless the collection answers."""
        self.count(Filters(doc_ids=("__ping__",)))

    def drop(self) -> None:
        self._call(self._client.drop_collection, self.physical)

    # --- the connection's other Milvus collections (`ragtune.ingest.reembed`) ----------------
    def physical_collections(self) -> set[str]:
        """The names of the Milvus collections on this store's connection."""
        return set(self._call(self._client.list_collections))

    def sibling(self, physical: str, dimension: int) -> MilvusStore:
        """This store over another Milvus collection of its connection, made for `dimension`-d
        vectors if missing. It shares the connection (Milvus Lite serves a data path to one
        client only): closing it leaves the connection and the data path's lock to this store."""
        from pymilvus.exceptions import MilvusException

        if self._client is None:
            raise StoreError("the store is closed")
        other = copy.copy(self)
        other.physical, other.dimension, other._seen_rows = physical, dimension, False
        other._owns_client, other._lock = False, None
        try:
            other._ensure_collection()
        except MilvusException as exc:
            raise other._translate(exc) from exc
        return other

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None and self._owns_client:
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
        return StoreError(f"Milvus error on {self.physical!r}: {text[:500]}")


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
        collection=entity.get("collection") or "",
        metadata=dict(entity.get("metadata") or {}),
    )
