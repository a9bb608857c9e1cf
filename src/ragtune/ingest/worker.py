"""The ingestion worker: claims queued jobs and indexes their files, one file at a time.

It runs as a thread inside ``ragtune serve`` (the default) or as ``ragtune worker``
processes sharing a PostgreSQL catalog and a Milvus server. While it works on a job a
heartbeat thread renews the job's lease; if the worker dies the lease runs out and another
worker takes the job over from its first unfinished file (see `ragtune.store.jobs`).

    worker = Worker(system.ingestor, JobQueue(system.catalog), settings.service)
    worker.run_once()        # True when a job was processed
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

from ragtune.config import ServiceSettings
from ragtune.ingest.indexer import Ingestor
from ragtune.store.jobs import FILE_FAILED, FILE_INDEXED, FILE_UNCHANGED, QUEUED, Job, JobQueue

log = logging.getLogger("ragtune.worker")

_RETRY_AFTER_SECONDS = 5.0  # before a job whose attempt hit an outage is claimed again


class _Heartbeat:
    """Renews a job's lease every third of the lease until stopped; `lost` turns True when the
    job was taken over (this worker's lease had run out), and the worker must then stop."""

    def __init__(self, queue: JobQueue, job_id: str, worker_id: str, lease_seconds: float) -> None:
        self.queue, self.job_id, self.worker_id, self.lease_seconds = queue, job_id, worker_id, lease_seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                if not self.queue.heartbeat(self.job_id, self.worker_id, self.lease_seconds):
                    self.lost = True
                    return
            except Exception as exc:  # a database hiccup: the lease still has two thirds left
                log.warning("heartbeat for job %s failed: %s", self.job_id, exc)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(
        self,
        ingestor: Ingestor,
        queue: JobQueue,
        settings: ServiceSettings,
        worker_id: str | None = None,
        store_ready: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.ingestor, self.queue, self.settings = ingestor, queue, settings
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.store_ready = store_ready  # None when the store is reachable, else the reason
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._store_problem: str | None = None

    def wake(self) -> None:
        """Look for a job now instead of at the next poll (called after an upload)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Processes jobs until `stop` is set; a job in progress is handed back to the queue
        after its current file."""
        self._stop = stop
        log.info("worker %s started", self.id)
        while not stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # the catalog is unreachable or locked: keep the loop alive
                log.exception("worker %s could not claim a job; retrying", self.id)
                worked = False
            if not worked:
                self._wake.wait(self.settings.job_poll_seconds)
                self._wake.clear()
        log.info("worker %s stopped", self.id)

    def run_once(self) -> bool:
        """Claims and processes one job; False when there was none to claim."""
        problem = self.store_ready()
        if problem != self._store_problem:  # log the outage once, and its end
            if problem:
                log.warning("worker %s waits for the vector store: %s", self.id, problem)
            else:
                log.info("worker %s: the vector store is reachable again", self.id)
            self._store_problem = problem
        if problem:
            return False  # claiming now would only burn one of the job's attempts on the outage
        job = self.queue.claim(self.id, self.settings.job_lease_seconds, self.settings.job_max_attempts)
        if job is None:
            return False
        log.info("worker %s claimed job %s (attempt %d, %d files)", self.id, job.id, job.attempts, job.files_total)
        with _Heartbeat(self.queue, job.id, self.id, self.settings.job_lease_seconds) as heartbeat:
            try:
                self._process(job, heartbeat)
            except Exception as exc:
                state = self.queue.release(
                    job.id,
                    self.id,
                    f"{type(exc).__name__}: {exc}",
                    self.settings.job_max_attempts,
                    _RETRY_AFTER_SECONDS,
                )
                log.exception("job %s attempt %d failed; it is now %s", job.id, job.attempts, state)
        return True

    def _process(self, job: Job, heartbeat: _Heartbeat) -> None:
        for file in job.files:
            if file.status != QUEUED:  # finished by an earlier attempt
                continue
            if heartbeat.lost:
                log.warning("job %s was taken over by another worker; stopping", job.id)
                return
            if self._stop.is_set():
                self.queue.give_back(job.id, self.id)
                log.info("worker %s stopping: job %s handed back at file %d", self.id, job.id, file.seq)
                return
            data = self.queue.file_data(job.id, file.seq)

            def progress(embedded: int, total: int, seq: int = file.seq) -> None:
                self.queue.record_progress(job.id, self.id, seq, embedded, total)

            report = self.ingestor.ingest_bytes(data, file.source, job.labels, on_progress=progress)
            if report.failed:
                status, chunks, error = FILE_FAILED, 0, report.failed[0][1]
            elif report.unchanged:
                record = self.ingestor.catalog.get(file.doc_id)
                status, chunks, error = FILE_UNCHANGED, record.chunks if record else 0, ""
            else:
                status, chunks, error = FILE_INDEXED, report.chunks, ""
            if not self.queue.record_file(job.id, self.id, file.seq, status, chunks, error):
                log.warning("job %s was taken over by another worker; stopping", job.id)
                return
        if self.queue.finish(job.id, self.id):
            log.info("job %s done", job.id)
