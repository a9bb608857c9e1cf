"""Tuning jobs started over HTTP (`POST /v1/tune/embedder|answerer`), kept in the catalog database.

A job runs inside the service process that accepted it (it reads that process's index and,
with Milvus Lite, only that process may). Its row says which stage it is in, so a client polls
it like an ingestion job; a job the process did not finish (a restart, a crash) is marked
failed by the next start, since training cannot resume halfway through a stage.

    >>> from ragtune.store.catalog import Catalog
    >>> from ragtune.store.tune_jobs import TuneJobStore
    >>> jobs = TuneJobStore(Catalog("sqlite://"))
    >>> job = jobs.create("embedder", {"epochs": 1}, stages=4)
    >>> jobs.advance(job.id, "training", done=2).stage, jobs.get(job.id).stages_done
    ('training', 2)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from ragtune.store.catalog import Catalog
from ragtune.store.tables import TableBase, utc_now

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


class TuneJobRow(TableBase):
    __tablename__ = "tune_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    stage: Mapped[str] = mapped_column(String(128), default="")
    stages_done: Mapped[int] = mapped_column(Integer, default=0)
    stages_total: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    report: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)


@dataclass(frozen=True)
class TuneJob:
    id: str
    kind: str
    state: str
    stage: str
    stages_done: int
    stages_total: int
    params: dict[str, Any]
    report: dict[str, Any] | None
    error: str
    created_at: datetime
    updated_at: datetime


class TuneJobStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        catalog.ensure_tables(TuneJobRow)

    def create(self, kind: str, params: dict[str, Any], stages: int) -> TuneJob:
        with self.catalog.session() as s, s.begin():
            row = TuneJobRow(id=uuid.uuid4().hex, kind=kind, state=QUEUED, params=params, stages_total=stages)
            s.add(row)
            s.flush()
            return _job(row)

    def advance(self, job_id: str, stage: str, done: int) -> TuneJob:
        """The job is running `stage`, after `done` stages."""
        return self._set(job_id, state=RUNNING, stage=stage, stages_done=done)

    def finish(self, job_id: str, report: dict[str, Any]) -> TuneJob:
        return self._set(job_id, state=DONE, stage="done", report=report, stages_done=TuneJobRow.stages_total)

    def fail(self, job_id: str, error: str) -> TuneJob:
        return self._set(job_id, state=FAILED, error=error[:4000])

    def fail_unfinished(self) -> int:
        """Marks the jobs a previous process left queued or running as failed; returns how many."""
        with self.catalog.session() as s, s.begin():
            result = s.execute(
                update(TuneJobRow)
                .where(TuneJobRow.state.in_((QUEUED, RUNNING)))
                .values(state=FAILED, error="the service stopped before the job finished; start it again")
            )
            return int(result.rowcount)  # type: ignore[attr-defined]  # DML results carry rowcount

    def get(self, job_id: str) -> TuneJob | None:
        with self.catalog.session() as s:
            row = s.get(TuneJobRow, job_id)
            return _job(row) if row is not None else None

    def list(self, limit: int = 50) -> list[TuneJob]:
        """Newest first."""
        with self.catalog.session() as s:
            rows = s.scalars(select(TuneJobRow).order_by(TuneJobRow.created_at.desc()).limit(limit)).all()
            return [_job(row) for row in rows]

    def _set(self, job_id: str, **values: Any) -> TuneJob:
        with self.catalog.session() as s, s.begin():
            s.execute(update(TuneJobRow).where(TuneJobRow.id == job_id).values(**values, updated_at=utc_now()))
            row = s.get(TuneJobRow, job_id)
            assert row is not None, job_id
            return _job(row)


def _job(row: TuneJobRow) -> TuneJob:
    return TuneJob(
        row.id,
        row.kind,
        row.state,
        row.stage,
        row.stages_done,
        row.stages_total,
        dict(row.params or {}),
        dict(row.report) if row.report is not None else None,
        row.error,
        row.created_at,
        row.updated_at,
    )
