"""The ingestion job queue: uploaded files wait in the catalog database until a worker claims them.

The queue lives in the same database as the catalog (SQLite for one process, PostgreSQL when
`ragtune worker` processes scale out), so a job survives a restart and any worker can take it.
A worker claims a job with ``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL) followed by a
compare-and-set ``UPDATE``, so two workers never run the same job at once, and holds it with a
lease it renews by heartbeat: when a worker dies its lease runs out and the next claim takes
the job again. A retried job resumes at its first unfinished file; re-indexing a file whose
chunks were half written is safe because the Ingestor deletes a document's chunks before
inserting them again.

    >>> from ragtune.store.catalog import Catalog
    >>> from ragtune.store.jobs import JobQueue, NewFile
    >>> queue = JobQueue(Catalog("sqlite://"))
    >>> job = queue.enqueue([NewFile("a.md", "uploads/a.md", "d1", b"# A")])
    >>> claimed = queue.claim("worker-1", lease_seconds=30, max_attempts=3)
    >>> claimed.id == job.id, claimed.attempts, queue.get(job.id).state
    (True, 1, 'running')
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from ragtune.store.catalog import Catalog
from ragtune.store.tables import TableBase, rows_changed, utc_now
from ragtune.types import NO_LABELS, Labels, MetaValue

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
JOB_STATES = (QUEUED, RUNNING, DONE, FAILED)
# Outcomes of one file of a job; QUEUED until a worker has processed it.
FILE_INDEXED, FILE_UNCHANGED, FILE_FAILED = "indexed", "unchanged", "failed"


class JobRow(TableBase):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    collection: Mapped[str] = mapped_column(String(255), default="", server_default=text("''"))
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict, server_default=text("'{}'"))
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    claimed_by: Mapped[str] = mapped_column(String(255), default="")
    # Epoch seconds: compared in SQL by every worker, so no time zone handling can differ.
    available_at: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)


class JobFileRow(TableBase):
    __tablename__ = "job_files"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(4096))
    doc_id: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    # The upload itself, so a worker on another machine needs only the database; emptied
    # once the job ends.
    data: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")


class JobFileCrashRow(TableBase):
    """How many workers died while on one file: past `max_attempts` that file is failed and the
    job goes on with the rest, so one poisonous file cannot cost the others their attempts."""

    __tablename__ = "job_file_crashes"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    crashes: Mapped[int] = mapped_column(Integer, default=0)


class JobProgressRow(TableBase):
    """How far the worker is within the file it is indexing now: one row per job, rewritten as
    the file's chunks are embedded (a table of its own, so databases made before it only gain
    a table, never a column)."""

    __tablename__ = "job_progress"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    chunks_embedded: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class NewFile:
    filename: str  # as the client named it, for display only
    source: str  # the document source it is indexed under
    doc_id: str
    data: bytes


@dataclass(frozen=True)
class JobFile:
    seq: int
    filename: str
    source: str
    doc_id: str
    size_bytes: int
    status: str
    chunks: int
    error: str


@dataclass(frozen=True)
class FileProgress:
    """The file a running job is on (`seq`) and how many of its chunks are embedded."""

    seq: int
    chunks_embedded: int
    chunks_total: int


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    tags: tuple[str, ...]
    files_total: int
    files_done: int
    files_failed: int
    chunks: int
    attempts: int
    error: str
    claimed_by: str
    created_at: datetime
    updated_at: datetime
    files: tuple[JobFile, ...]
    current: FileProgress | None = None
    collection: str = ""
    metadata: dict[str, MetaValue] = field(default_factory=dict)

    @property
    def labels(self) -> Labels:
        """What every document of the job is filed under."""
        return Labels(self.collection, self.tags, self.metadata)


class JobQueue:
    """Ingestion jobs in the catalog database, claimed by workers under a lease."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        catalog.ensure_tables(JobRow, JobFileRow, JobProgressRow, JobFileCrashRow)

    # --- producer ------------------------------------------------------------------------
    def enqueue(self, files: list[NewFile], labels: Labels = NO_LABELS) -> Job:
        if not files:
            raise ValueError("a job needs at least one file")
        job_id = uuid.uuid4().hex
        with self.catalog.session() as s, s.begin():
            row = JobRow(id=job_id, state=QUEUED, files_total=len(files), available_at=0.0, tags=list(labels.tags))
            row.collection, row.meta = labels.collection, dict(labels.metadata)
            s.add(row)
            s.flush()  # the job row first: job_files references it
            for seq, f in enumerate(files):
                s.add(
                    JobFileRow(
                        job_id=job_id,
                        seq=seq,
                        filename=f.filename[:255],
                        source=f.source,
                        doc_id=f.doc_id,
                        size_bytes=len(f.data),
                        data=f.data,
                    )
                )
        job = self.get(job_id)
        assert job is not None
        return job

    # --- reads ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self.catalog.session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                return None
            files = s.execute(
                select(
                    JobFileRow.seq,
                    JobFileRow.filename,
                    JobFileRow.source,
                    JobFileRow.doc_id,
                    JobFileRow.size_bytes,
                    JobFileRow.status,
                    JobFileRow.chunks,
                    JobFileRow.error,
                )
                .where(JobFileRow.job_id == job_id)
                .order_by(JobFileRow.seq)
            ).all()
            progress = s.get(JobProgressRow, job_id)
            return Job(
                row.id,
                row.state,
                tuple(row.tags or ()),
                row.files_total,
                row.files_done,
                row.files_failed,
                row.chunks,
                row.attempts,
                row.error,
                row.claimed_by,
                row.created_at,
                row.updated_at,
                tuple(JobFile(*f) for f in files),
                FileProgress(progress.seq, progress.chunks_embedded, progress.chunks_total) if progress else None,
                row.collection,
                dict(row.meta or {}),
            )

    def file_data(self, job_id: str, seq: int) -> bytes:
        """One file's bytes, read only when a worker reaches it (a job may hold many MB)."""
        with self.catalog.session() as s:
            data = s.scalar(select(JobFileRow.data).where(JobFileRow.job_id == job_id, JobFileRow.seq == seq))
        if data is None:
            raise KeyError(f"job {job_id} has no file {seq}")
        return bytes(data)

    def waiting_for(self, doc_id: str) -> str | None:
        """The id of a job that still has this document's upload to index, if any."""
        with self.catalog.session() as s:
            return s.scalar(
                select(JobFileRow.job_id)
                .join(JobRow, JobRow.id == JobFileRow.job_id)
                .where(JobFileRow.doc_id == doc_id, JobFileRow.status == QUEUED, JobRow.state.in_((QUEUED, RUNNING)))
                .limit(1)
            )

    def counts(self) -> dict[str, int]:
        with self.catalog.session() as s:
            rows = s.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all()
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({state: int(n) for state, n in rows})
        return counts

    # --- workers -------------------------------------------------------------------------
    def claim(self, worker_id: str, lease_seconds: float, max_attempts: int) -> Job | None:
        """The oldest job that is queued, or running under an expired lease, now leased to
        `worker_id`; None when there is none.

        An expired lease means the worker died (killed, out of memory) on the job's first
        unfinished file: that file is charged one crash, and once it has `max_attempts` it is
        failed and the job goes on with the rest. Every crash is charged to some file, so a job
        is retried at most files x max_attempts times."""
        now = time.time()
        claimable = or_(
            and_(JobRow.state == QUEUED, JobRow.available_at <= now),
            and_(JobRow.state == RUNNING, JobRow.lease_until < now),
        )
        with self.catalog.session() as s, s.begin():
            candidate = s.execute(
                select(JobRow.id, JobRow.state)
                .where(claimable)
                .order_by(JobRow.created_at, JobRow.id)
                .limit(1)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
            ).first()
            if candidate is None:
                return None
            job_id, state = candidate
            # Compare-and-set: on SQLite (no row locks) a racing claimer matches 0 rows.
            claimed = rows_changed(
                s,
                update(JobRow)
                .where(JobRow.id == job_id, claimable)
                .values(
                    state=RUNNING, claimed_by=worker_id, lease_until=now + lease_seconds, attempts=JobRow.attempts + 1
                ),
            )
            if claimed and state == RUNNING:
                self._charge_crash(s, job_id, max_attempts)
        return self.get(job_id) if claimed else None

    @staticmethod
    def _charge_crash(s: Session, job_id: str, max_attempts: int) -> None:
        seq = s.scalar(select(func.min(JobFileRow.seq)).where(JobFileRow.job_id == job_id, JobFileRow.status == QUEUED))
        if seq is None:  # it died after its last file: nothing to blame
            return
        row = s.get(JobFileCrashRow, (job_id, seq))
        if row is None:
            row = JobFileCrashRow(job_id=job_id, seq=seq, crashes=0)
            s.add(row)
        row.crashes += 1
        if row.crashes < max_attempts:
            return
        s.execute(
            update(JobFileRow)
            .where(JobFileRow.job_id == job_id, JobFileRow.seq == seq)
            .values(
                status=FILE_FAILED,
                data=b"",
                error=f"the worker stopped {row.crashes} times while indexing this file (killed, out of "
                "memory?); see the worker logs. The job's other files went on.",
            )
        )
        s.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(files_done=JobRow.files_done + 1, files_failed=JobRow.files_failed + 1)
        )

    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Extends the lease; False when the job is no longer this worker's (its lease ran
        out and another worker took it), and the caller must stop working on it."""
        with self.catalog.session() as s, s.begin():
            return bool(
                rows_changed(
                    s,
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.claimed_by == worker_id, JobRow.state == RUNNING)
                    .values(lease_until=time.time() + lease_seconds),
                )
            )

    def record_progress(self, job_id: str, worker_id: str, seq: int, chunks_embedded: int, chunks_total: int) -> bool:
        """Records how many chunks of file `seq` are embedded so far (so progress moves within a
        large file, not only per file); False if the job is no longer ours."""
        with self.catalog.session() as s, s.begin():
            owned = s.scalar(
                select(func.count())
                .select_from(JobRow)
                .where(JobRow.id == job_id, JobRow.claimed_by == worker_id, JobRow.state == RUNNING)
            )
            if not owned:
                return False
            values = {"seq": seq, "chunks_embedded": chunks_embedded, "chunks_total": chunks_total}
            if not rows_changed(s, update(JobProgressRow).where(JobProgressRow.job_id == job_id).values(**values)):
                s.add(JobProgressRow(job_id=job_id, **values))
            return True

    def record_file(self, job_id: str, worker_id: str, seq: int, status: str, chunks: int, error: str = "") -> bool:
        """Records one file's outcome and the job's progress; False if the job is no longer ours."""
        with self.catalog.session() as s, s.begin():
            owned = rows_changed(
                s,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.claimed_by == worker_id, JobRow.state == RUNNING)
                .values(
                    files_done=JobRow.files_done + 1,
                    files_failed=JobRow.files_failed + (1 if status == FILE_FAILED else 0),
                    chunks=JobRow.chunks + chunks,
                ),
            )
            if not owned:
                return False
            s.execute(
                update(JobFileRow)
                .where(JobFileRow.job_id == job_id, JobFileRow.seq == seq)
                .values(status=status, chunks=chunks, error=error[:4000], data=b"")
            )
            return True

    def finish(self, job_id: str, worker_id: str) -> bool:
        """Marks the job done (its per-file outcomes say what failed); False if not ours."""
        with self.catalog.session() as s, s.begin():
            done = rows_changed(
                s,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.claimed_by == worker_id, JobRow.state == RUNNING)
                .values(state=DONE, lease_until=0.0),
            )
            if done:
                s.execute(update(JobFileRow).where(JobFileRow.job_id == job_id).values(data=b""))
            return bool(done)

    def give_back(self, job_id: str, worker_id: str) -> bool:
        """Returns a job to the queue without counting the attempt (the worker is shutting
        down between two files); the next claim resumes at its first unfinished file."""
        with self.catalog.session() as s, s.begin():
            return bool(
                rows_changed(
                    s,
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.claimed_by == worker_id, JobRow.state == RUNNING)
                    .values(state=QUEUED, attempts=JobRow.attempts - 1, lease_until=0.0, available_at=0.0),
                )
            )

    def release(self, job_id: str, worker_id: str, error: str, max_attempts: int, retry_after: float) -> str:
        """After a failure that may pass (store or database unreachable): back to the queue
        after `retry_after` seconds, or failed once `max_attempts` claims are used up.
        Returns the job's new state."""
        with self.catalog.session() as s, s.begin():
            row = s.get(JobRow, job_id)
            if row is None or row.claimed_by != worker_id or row.state != RUNNING:
                return row.state if row is not None else FAILED
            if row.attempts >= max_attempts:
                row.state, row.error = FAILED, f"failed {row.attempts} times; last error: {error}"[:4000]
                s.execute(update(JobFileRow).where(JobFileRow.job_id == job_id).values(data=b""))
            else:
                row.state, row.error = QUEUED, f"attempt {row.attempts} failed, will retry: {error}"[:4000]
                row.available_at = time.time() + retry_after
            row.lease_until = 0.0
            return row.state
