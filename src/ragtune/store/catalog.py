"""The catalog: which documents exist, their content hash, status and error.

SQLite in the data directory by default, PostgreSQL (``postgresql://…``) when several
processes (API replicas, indexing workers) share one catalog.

    >>> from ragtune.store.catalog import Catalog, IndexedDocument, PendingDocument
    >>> catalog = Catalog("sqlite://")
    >>> catalog.mark_pending([PendingDocument("d1", "/docs/a.md", "hash-a")])
    >>> catalog.mark_indexed([IndexedDocument("d1", chunks=3, content_type="text/markdown", title="A")])
    >>> catalog.get("d1").status, catalog.get("d1").chunks
    ('indexed', 3)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from ragtune.store.tables import TableBase, create_tables, utc_now
from ragtune.types import MetaValue

PENDING, INDEXED, FAILED = "pending", "indexed", "failed"


class CatalogError(RuntimeError):
    """The catalog database cannot be used."""


class DocumentRow(TableBase):
    __tablename__ = "documents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A source names one document per collection; the index is made in `_upgrade_documents`
    # too, since catalogs from before collections had a unique index on the source alone.
    collection: Mapped[str] = mapped_column(String(255), default="", server_default=text("''"))
    source: Mapped[str] = mapped_column(String(4096), index=True)
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), index=True, default=PENDING)
    error: Mapped[str] = mapped_column(Text, default="")
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    content_type: Mapped[str] = mapped_column(String(128), default="")
    title: Mapped[str] = mapped_column(String(1024), default="")
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)

    __table_args__ = (Index("ux_documents_collection_source", "collection", "source", unique=True),)


class EmbedderRow(TableBase):
    """Which embedder produced the vectors of a store collection, and which Milvus collection
    holds them (see `ragtune.ingest.reembed`): `physical` ('' for the store collection's own
    name, as before ``ragtune reindex`` built new ones). `shadow` is the other Milvus collection
    of the store collection, if any: the one a reindex is filling with `shadow_model`'s vectors,
    or (`shadow_model` '') the previous one, which a switch left to drop."""

    __tablename__ = "embedders"

    collection: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(4096))
    backend: Mapped[str] = mapped_column(String(32))
    dimension: Mapped[int] = mapped_column(Integer)
    physical: Mapped[str] = mapped_column(String(255), default="", server_default=text("''"))
    shadow: Mapped[str] = mapped_column(String(255), default="", server_default=text("''"))
    shadow_model: Mapped[str] = mapped_column(String(4096), default="", server_default=text("''"))
    shadow_backend: Mapped[str] = mapped_column(String(32), default="", server_default=text("''"))
    shadow_dimension: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)


@dataclass(frozen=True)
class EmbedderRecord:
    model: str
    backend: str
    dimension: int

    def __str__(self) -> str:
        return f"{self.model} ({self.backend}, {self.dimension}-d)"


@dataclass(frozen=True)
class DocumentRecord:
    id: str
    source: str
    content_hash: str
    status: str
    error: str
    chunks: int
    content_type: str
    title: str
    size_bytes: int
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    collection: str = ""
    metadata: dict[str, MetaValue] = field(default_factory=dict)

    @classmethod
    def of(cls, row: DocumentRow) -> DocumentRecord:
        return cls(
            row.id,
            row.source,
            row.content_hash,
            row.status,
            row.error,
            row.chunks,
            row.content_type,
            row.title,
            row.size_bytes,
            tuple(row.tags or ()),
            row.created_at,
            row.updated_at,
            row.collection,
            dict(row.meta or {}),
        )


@dataclass(frozen=True)
class PendingDocument:
    id: str
    source: str
    content_hash: str
    size_bytes: int = 0
    tags: tuple[str, ...] = ()
    collection: str = ""
    metadata: dict[str, MetaValue] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexedDocument:
    id: str
    chunks: int
    content_type: str
    title: str


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        # WAL lets readers (the API) run while a writer (an ingest) commits; the busy
        # timeout makes concurrent writers wait instead of failing with "database is locked".
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def _upgrade_documents(connection: Any, default_collection: str) -> None:
    """Brings a catalog from before collections up to date: its unique index on the source
    alone becomes unique per collection, and its documents join the default collection."""
    table = DocumentRow.__table__
    unique_on_source = [
        i["name"]
        for i in inspect(connection).get_indexes(DocumentRow.__tablename__)
        if i["unique"] and i["column_names"] == ["source"]
    ]
    for name in unique_on_source:
        connection.execute(text(f"DROP INDEX {connection.dialect.identifier_preparer.quote(name)}"))
    for index in table.indexes:  # type: ignore[attr-defined]
        index.create(connection, checkfirst=True)
    if default_collection:
        connection.execute(
            update(DocumentRow).where(DocumentRow.collection == "").values(collection=default_collection)
        )


def _check_written(s: Session, written_to: tuple[str, str] | None) -> None:
    """Refuses (CatalogError, rolling the transaction back) a document's change whose chunks
    went to a Milvus collection that ``ragtune reindex`` has since switched away from: those
    chunks are gone with it, and the document must stay as it was (pending: the next ingest
    redoes it). Called after the transaction's first write, so SQLite holds its write lock and
    the switch (`ragtune.store.reindexing`) cannot commit in between; on PostgreSQL the shared
    row lock orders the two."""
    if written_to is None:
        return
    collection, physical = written_to
    s.flush()
    query = select(EmbedderRow.physical).where(EmbedderRow.collection == collection).with_for_update(read=True)
    active = s.scalar(query) or collection
    if active != physical:
        raise CatalogError(
            f"`ragtune reindex` moved {collection!r} to Milvus collection {active!r} while this process wrote "
            f"to {physical!r}: restart it (or POST /v1/admin/reload) and repeat this change"
        )


class Catalog:
    """`default_collection` (RAGTUNE_COLLECTION) is the collection of documents recorded
    before there were collections."""

    def __init__(self, url: str, default_collection: str = "") -> None:
        try:
            self.engine = create_engine(url, pool_pre_ping=True)
        except Exception as exc:  # bad URL or missing driver: say which
            raise CatalogError(f"cannot open catalog {url!r}: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine)
        try:
            with self.engine.begin() as connection:
                create_tables(connection)
                _upgrade_documents(connection, default_collection)
        except Exception as exc:
            raise CatalogError(f"cannot open catalog {url!r}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.default_collection = default_collection

    def session(self) -> Session:
        return self._sessions()

    def ensure_tables(self, *rows: type[TableBase]) -> None:
        """Creates the tables of `rows` where missing (and their missing columns): for the stores
        whose tables were registered after this catalog opened. One transaction, which takes
        PostgreSQL's schema lock (`create_tables`)."""
        with self.engine.begin() as connection:
            create_tables(connection, [TableBase.metadata.tables[row.__tablename__] for row in rows])

    # --- reads -------------------------------------------------------------------------
    def get(self, doc_id: str) -> DocumentRecord | None:
        with self.session() as s:
            row = s.get(DocumentRow, doc_id)
            return DocumentRecord.of(row) if row else None

    def find(self, source_or_id: str, collection: str | None = None) -> DocumentRecord | None:
        """The document with this id, or with this source in `collection` (default: the default one)."""
        collection = self.default_collection if collection is None else collection
        with self.session() as s:
            row = s.get(DocumentRow, source_or_id) or s.scalar(
                select(DocumentRow).where(DocumentRow.source == source_or_id, DocumentRow.collection == collection)
            )
            return DocumentRecord.of(row) if row else None

    def titles(self, sources: Iterable[str], collections: tuple[str, ...] = ()) -> dict[str, str]:
        """source -> title for those of `sources` in the catalog (in `collections`, if given); one query."""
        wanted = set(sources)
        if not wanted:
            return {}
        with self.session() as s:
            query = select(DocumentRow.source, DocumentRow.title).where(DocumentRow.source.in_(wanted))
            if collections:
                query = query.where(DocumentRow.collection.in_(collections))
            return dict(s.execute(query).all())

    def states(self) -> dict[str, tuple[str, str]]:
        """doc_id -> (content_hash, status) for every document; one query for large runs."""
        with self.session() as s:
            return {
                i: (h, st)
                for i, h, st in s.execute(select(DocumentRow.id, DocumentRow.content_hash, DocumentRow.status))
            }

    def sources_under(self, prefix: str, collection: str) -> dict[str, str]:
        """source -> doc_id for every document of `collection` whose source starts with `prefix`."""
        with self.session() as s:
            rows = s.execute(
                select(DocumentRow.source, DocumentRow.id).where(
                    DocumentRow.source.startswith(prefix, autoescape=True), DocumentRow.collection == collection
                )
            )
            return dict(rows.all())

    def list(
        self, offset: int = 0, limit: int = 50, status: str | None = None, collections: tuple[str, ...] = ()
    ) -> tuple[list[DocumentRecord], int]:
        """Documents by collection and source; `collections` limits them to these (empty: all)."""
        with self.session() as s:
            query = select(DocumentRow)
            total_query = select(func.count()).select_from(DocumentRow)
            if status:
                query = query.where(DocumentRow.status == status)
                total_query = total_query.where(DocumentRow.status == status)
            if collections:
                query = query.where(DocumentRow.collection.in_(collections))
                total_query = total_query.where(DocumentRow.collection.in_(collections))
            ordered = query.order_by(DocumentRow.collection, DocumentRow.source)
            rows = s.scalars(ordered.offset(offset).limit(limit)).all()
            return [DocumentRecord.of(r) for r in rows], int(s.scalar(total_query) or 0)

    def collections(self) -> dict[str, int]:
        """Every collection that holds a document, with its number of documents."""
        with self.session() as s:
            rows = s.execute(
                select(DocumentRow.collection, func.count())
                .group_by(DocumentRow.collection)
                .order_by(DocumentRow.collection)
            )
            return {name: int(n) for name, n in rows.all()}

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(
                select(DocumentRow.status, func.count(), func.coalesce(func.sum(DocumentRow.chunks), 0)).group_by(
                    DocumentRow.status
                )
            ).all()
        counts = {PENDING: 0, INDEXED: 0, FAILED: 0, "chunks": 0}
        for status, n, chunks in rows:
            counts[status] = int(n)
            counts["chunks"] += int(chunks) if status == INDEXED else 0
        return counts

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    def embedder(self, collection: str) -> EmbedderRecord | None:
        """The embedder recorded for `collection`, if any (a reindex may record none: model '')."""
        with self.session() as s:
            row = s.get(EmbedderRow, collection)
            return EmbedderRecord(row.model, row.backend, row.dimension) if row and row.model else None

    def physical(self, collection: str) -> str:
        """The Milvus collection that holds the store collection `collection`'s chunks."""
        with self.session() as s:
            row = s.get(EmbedderRow, collection)
            return row.physical if row is not None and row.physical else collection

    def record_embedder(self, collection: str, embedder: EmbedderRecord) -> None:
        for attempt in range(2):  # a process starting beside this one may insert the row first
            try:
                with self.session() as s, s.begin():
                    row = s.get(EmbedderRow, collection) or EmbedderRow(collection=collection)
                    row.model, row.backend, row.dimension = embedder.model, embedder.backend, embedder.dimension
                    s.add(row)
                return
            except IntegrityError:
                if attempt:
                    raise

    # --- writes ------------------------------------------------------------------------
    # Status changes are written a batch per transaction: one commit (an fsync) per file
    # took a fifth of the time of indexing a folder of small files.
    def mark_pending(self, docs: Iterable[PendingDocument]) -> None:
        """Record that these documents are being indexed (their chunks may be partial)."""
        with self.session() as s, s.begin():
            for doc in docs:
                row = s.get(DocumentRow, doc.id) or DocumentRow(id=doc.id, source=doc.source)
                row.content_hash, row.status, row.error = doc.content_hash, PENDING, ""
                row.size_bytes, row.tags = doc.size_bytes, list(doc.tags)
                row.collection, row.meta = doc.collection, dict(doc.metadata)
                s.add(row)

    def mark_indexed(self, docs: Iterable[IndexedDocument], written_to: tuple[str, str] | None = None) -> None:
        """`written_to`: (store collection, Milvus collection) the chunks were stored in; see `_check_written`."""
        with self.session() as s, s.begin():
            for doc in docs:
                row = s.get(DocumentRow, doc.id)
                if row is None:
                    raise CatalogError(f"document {doc.id} vanished from the catalog while it was being indexed")
                row.status, row.error, row.chunks = INDEXED, "", doc.chunks
                row.content_type, row.title = doc.content_type, doc.title[:1024]
            _check_written(s, written_to)

    def mark_failed(self, doc_id: str, source: str, error: str, size_bytes: int = 0, collection: str = "") -> None:
        """Record a failure; a previously indexed version keeps its hash and chunks."""
        with self.session() as s, s.begin():
            row = s.get(DocumentRow, doc_id)
            if row is None:
                row = DocumentRow(
                    id=doc_id,
                    source=source,
                    collection=collection,
                    content_hash="",
                    chunks=0,
                    size_bytes=size_bytes,
                    tags=[],
                    meta={},
                )
                s.add(row)
            elif row.status == INDEXED and row.chunks:
                error = f"{error} (the previously indexed version is still searchable)"
            row.status, row.error = FAILED, error[:4000]

    def delete(self, doc_id: str, written_to: tuple[str, str] | None = None) -> bool:
        """`written_to`: (store collection, Milvus collection) the chunks were deleted from; see `_check_written`."""
        with self.session() as s, s.begin():
            row = s.get(DocumentRow, doc_id)
            if row is None:
                return False
            s.delete(row)
            _check_written(s, written_to)
            return True

    def close(self) -> None:
        self.engine.dispose()
