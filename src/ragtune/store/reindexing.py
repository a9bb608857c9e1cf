"""A reindex's bookkeeping in the catalog database: the shadow Milvus collection it fills, the
embedder it fills it with, which documents it has copied there, and the switch.

``ragtune reindex`` (`ragtune.ingest.reembed.reindex`) re-embeds a store collection into a
new Milvus collection beside the live one. The store collection's embedder row names both
(`EmbedderRow`: `physical` the live one, `shadow` the one being filled and its embedder).
`reindex_copies` lists the documents copied so far, each with the content hash and
``updated_at`` it had when its chunks were read: a stopped run resumes with the rest, and a
document ingested, changed or deleted since it was copied counts as left to copy or to remove.
The switch makes the shadow the live collection and records its embedder in one transaction,
and only while nothing is left. One run at a time per store collection: a run holds the
collection's lease (`reindex_leases`) and renews it as it copies; another run is refused while
the lease is current, and takes it over once it has run out (its holder died).

    >>> from ragtune.store.catalog import Catalog, EmbedderRecord, PendingDocument
    >>> from ragtune.store.reindexing import Reindexing
    >>> catalog = Catalog("sqlite://")
    >>> catalog.mark_pending([PendingDocument("d1", "/a.md", "h1")])
    >>> plan = Reindexing(catalog, "ragtune")
    >>> plan.claim(lease_seconds=60)
    >>> Reindexing(catalog, "ragtune").claim(lease_seconds=60)
    Traceback (most recent call last):
    ...
    ragtune.store.reindexing.ReindexBusyError: a reindex of 'ragtune' is running (...); ...
    >>> plan.begin("ragtune__1", EmbedderRecord("new-model", "torch", 8))
    >>> plan.copied(plan.stale(limit=10))
    >>> plan.stale(limit=10), plan.switch(previous_dimension=4)
    ([], True)
    >>> catalog.physical("ragtune"), str(catalog.embedder("ragtune")), plan.shadow()
    ('ragtune__1', 'new-model (torch, 8-d)', Shadow(physical='ragtune', dimension=4, embedder=None))
    >>> plan.release()
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Float, Select, String, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from ragtune.store.catalog import Catalog, CatalogError, DocumentRecord, DocumentRow, EmbedderRecord, EmbedderRow
from ragtune.store.tables import TableBase, rows_changed


class ReindexCopyRow(TableBase):
    """A document whose chunks a reindex has copied into the shadow collection, at this version."""

    __tablename__ = "reindex_copies"

    collection: Mapped[str] = mapped_column(String(255), primary_key=True)  # the store collection
    doc_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    doc_updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReindexLeaseRow(TableBase):
    """The run reindexing a store collection, until `lease_until` (epoch seconds) unless it renews."""

    __tablename__ = "reindex_leases"

    collection: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))  # host:pid:random, for the message
    lease_until: Mapped[float] = mapped_column(Float)


class ReindexBusyError(CatalogError):
    """Another run holds the collection's reindex lease."""


def _gone(owner: str) -> bool:
    """Whether `owner` (host:pid:…) is a process of this host that no longer runs: a run killed
    here need not wait for its lease to run out. Hosts are told apart by name, as containers
    and pods are by default; two containers given one hostname would need the lease to run out."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@dataclass(frozen=True)
class Shadow:
    """The store collection's other Milvus collection."""

    physical: str
    dimension: int
    embedder: EmbedderRecord | None  # what a reindex fills it with; None: the previous one, to drop


class _Unfinished(Exception):
    """Documents are left to copy or remove: the switch waits."""


class Reindexing:
    """The reindex bookkeeping of the store collection `collection`."""

    def __init__(self, catalog: Catalog, collection: str) -> None:
        self.catalog, self.collection = catalog, collection
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        catalog.ensure_tables(ReindexCopyRow, ReindexLeaseRow)

    # --- one run at a time -------------------------------------------------------------------
    def claim(self, lease_seconds: float) -> None:
        """Takes the collection's lease for `lease_seconds`; ReindexBusyError while another
        run's lease is current."""
        now = time.time()
        lease = ReindexLeaseRow
        try:
            with self.catalog.session() as s, s.begin():
                row = s.get(lease, self.collection)
                if row is None:
                    s.add(lease(collection=self.collection, owner=self.owner, lease_until=now + lease_seconds))
                    return
                held_by, until = row.owner, row.lease_until
                if held_by != self.owner and until > now and not _gone(held_by):
                    raise self._busy(held_by, until - now)
                # Ours, or its holder died (the lease ran out, or its process is gone): taken over
                # only if no other run took it over since it was read.
                taken = rows_changed(
                    s,
                    update(lease)
                    .where(lease.collection == self.collection, lease.owner == held_by, lease.lease_until == until)
                    .values(owner=self.owner, lease_until=now + lease_seconds)
                    .execution_options(synchronize_session=False),
                )
                if not taken:
                    raise self._busy("another process", lease_seconds)
        except IntegrityError:  # another run inserted the lease first
            raise self._busy("another process", lease_seconds) from None

    def renew(self, lease_seconds: float) -> None:
        """Extends this run's lease; ReindexBusyError when another run took it over (this one
        stalled for longer than its lease), which this run must not undo."""
        with self.catalog.session() as s, s.begin():
            renewed = rows_changed(
                s,
                update(ReindexLeaseRow)
                .where(ReindexLeaseRow.collection == self.collection, ReindexLeaseRow.owner == self.owner)
                .values(lease_until=time.time() + lease_seconds),
            )
        if not renewed:
            raise ReindexBusyError(
                f"this reindex of {self.collection!r} stalled past its lease and another run took it over; "
                "that run goes on from here"
            )

    def release(self) -> None:
        with self.catalog.session() as s, s.begin():
            s.execute(
                delete(ReindexLeaseRow).where(
                    ReindexLeaseRow.collection == self.collection, ReindexLeaseRow.owner == self.owner
                )
            )

    def _busy(self, owner: str, seconds_left: float) -> ReindexBusyError:
        return ReindexBusyError(
            f"a reindex of {self.collection!r} is running ({owner}); wait for it to finish. If that process "
            f"died, its lease runs out within {seconds_left:.0f} s and a new run resumes its work"
        )

    def shadow(self) -> Shadow | None:
        with self.catalog.session() as s:
            row = s.get(EmbedderRow, self.collection)
            if row is None or not row.shadow:
                return None
            target = EmbedderRecord(row.shadow_model, row.shadow_backend, row.shadow_dimension)
            return Shadow(row.shadow, row.shadow_dimension, target if row.shadow_model else None)

    def begin(self, physical: str, embedder: EmbedderRecord) -> None:
        """Records `physical` as the shadow, to be filled with `embedder`'s vectors, and forgets
        what an earlier shadow held."""
        with self.catalog.session() as s, s.begin():
            # No row yet (a store collection never opened with its vectors checked): the live
            # vectors' embedder stays unknown ('') until `check_embedder` or the switch records one.
            row = s.get(EmbedderRow, self.collection) or EmbedderRow(
                collection=self.collection, model="", backend="", dimension=0
            )
            row.shadow, row.shadow_model = physical, embedder.model
            row.shadow_backend, row.shadow_dimension = embedder.backend, embedder.dimension
            s.add(row)
            s.execute(delete(ReindexCopyRow).where(ReindexCopyRow.collection == self.collection))

    # --- progress --------------------------------------------------------------------------
    def stale(self, limit: int) -> list[DocumentRecord]:
        """Up to `limit` documents not in the shadow as they are now (never copied, or changed since)."""
        with self.catalog.session() as s:
            rows = s.scalars(self._stale(select(DocumentRow)).order_by(DocumentRow.id).limit(limit)).all()
            return [DocumentRecord.of(row) for row in rows]

    def left(self) -> tuple[int, int]:
        """(documents, chunks) left to copy."""
        with self.catalog.session() as s:
            query = self._stale(select(func.count(), func.coalesce(func.sum(DocumentRow.chunks), 0)))
            documents, chunks = s.execute(query).one()
            return int(documents), int(chunks)

    def removed(self, limit: int) -> list[str]:
        """Up to `limit` ids of copied documents that the catalog no longer has."""
        with self.catalog.session() as s:
            return list(s.scalars(self._removed(select(ReindexCopyRow.doc_id)).limit(limit)).all())

    def done(self) -> int:
        """How many documents are in the shadow (some perhaps at an older version)."""
        with self.catalog.session() as s:
            query = select(func.count()).where(ReindexCopyRow.collection == self.collection)
            return int(s.scalar(query.select_from(ReindexCopyRow)) or 0)

    def copied(self, docs: Iterable[DocumentRecord]) -> None:
        """Records that the shadow holds these documents' chunks as of these records."""
        with self.catalog.session() as s, s.begin():
            for doc in docs:
                s.merge(
                    ReindexCopyRow(
                        collection=self.collection,
                        doc_id=doc.id,
                        content_hash=doc.content_hash,
                        doc_updated_at=doc.updated_at,
                    )
                )

    def forget(self, doc_ids: Sequence[str]) -> None:
        """Records that the shadow no longer holds these documents."""
        with self.catalog.session() as s, s.begin():
            s.execute(
                delete(ReindexCopyRow).where(
                    ReindexCopyRow.collection == self.collection, ReindexCopyRow.doc_id.in_(doc_ids)
                )
            )

    # --- the switch --------------------------------------------------------------------------
    def switch(self, previous_dimension: int) -> bool:
        """Makes the shadow the live collection and its embedder the recorded one, the live
        collection (of `previous_dimension`-d vectors) becoming the shadow to drop: one
        transaction, which changes nothing and returns False while documents are left to copy
        or remove."""
        try:
            with self.catalog.session() as s, s.begin():
                row = s.get(EmbedderRow, self.collection)
                if row is None or not row.shadow_model:
                    raise CatalogError(f"no reindex of {self.collection!r} is in progress")
                previous = row.physical or self.collection
                row.physical, row.model, row.backend, row.dimension = (
                    row.shadow,
                    row.shadow_model,
                    row.shadow_backend,
                    row.shadow_dimension,
                )
                row.shadow, row.shadow_model, row.shadow_backend, row.shadow_dimension = (
                    previous,
                    "",
                    "",
                    previous_dimension,
                )
                # Written first, then checked: SQLite then holds its write lock, so no document
                # can change between the check and the commit; on PostgreSQL the embedder row's
                # lock orders the switch with `catalog._check_written`.
                s.flush()
                if self._left_in(s):
                    raise _Unfinished
                s.execute(delete(ReindexCopyRow).where(ReindexCopyRow.collection == self.collection))
        except _Unfinished:
            return False
        return True

    def dropped(self) -> None:
        """Forgets the shadow, once its Milvus collection is dropped."""
        with self.catalog.session() as s, s.begin():
            row = s.get(EmbedderRow, self.collection)
            if row is not None:
                row.shadow, row.shadow_model, row.shadow_backend, row.shadow_dimension = "", "", "", 0

    # --- queries -----------------------------------------------------------------------------
    def _stale(self, query: Select) -> Select:
        copy = ReindexCopyRow
        joined = and_(copy.collection == self.collection, copy.doc_id == DocumentRow.id)
        changed = or_(
            copy.doc_id.is_(None),
            copy.content_hash != DocumentRow.content_hash,
            copy.doc_updated_at != DocumentRow.updated_at,
        )
        return query.select_from(DocumentRow).outerjoin(copy, joined).where(changed)

    def _removed(self, query: Select) -> Select:
        copy = ReindexCopyRow
        gone = query.select_from(copy).outerjoin(DocumentRow, DocumentRow.id == copy.doc_id)
        return gone.where(copy.collection == self.collection, DocumentRow.id.is_(None))

    def _left_in(self, s: Session) -> bool:
        stale = s.scalar(self._stale(select(DocumentRow.id)).limit(1))
        return stale is not None or s.scalar(self._removed(select(ReindexCopyRow.doc_id)).limit(1)) is not None
