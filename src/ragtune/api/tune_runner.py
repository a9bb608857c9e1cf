"""Runs `/v1/tune/...` jobs: one at a time, in a thread of the service, recorded in the catalog.

Tuning trains a model for minutes on a CPU, so a request only starts the job; the client polls
`GET /v1/tune/jobs/{id}` for its stage, as it does for ingestion jobs. One job runs at a time
(a second answers 409): two trainings would share the same cores and each take twice as long.
A job that promotes its model also reloads the service (`ragtune.api.serving.Reloader`), so
the answer to the last poll is served by the new model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ragtune.config import Settings
from ragtune.store.tune_jobs import TuneJob, TuneJobStore
from ragtune.tune.report import TuneReport

log = logging.getLogger("ragtune.api")

# A job's work: given its own empty folder, it names each stage it starts (and may log more) through
# the callback, and returns its report.
TuneWork = Callable[[Path, Callable[[str], None]], TuneReport]


class TuneBusyError(RuntimeError):
    """A tuning job is running already."""


class TuneRunner:
    def __init__(self, jobs: TuneJobStore, settings: Settings, after_promotion: Callable[[], object]) -> None:
        """`settings`: as configured, before promotions (what `promote` checks explicit settings on)."""
        self.jobs, self.settings = jobs, settings
        self._after_promotion = after_promotion
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        jobs.fail_unfinished()  # a job of a previous process cannot resume halfway through training

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, kind: str, params: dict[str, object], stages: list[str], work: TuneWork) -> TuneJob:
        """Records the job and starts it; TuneBusyError when one is running."""
        with self._lock:
            if self.busy:
                raise TuneBusyError("a tuning job is running; wait for it (GET /v1/tune/jobs) before starting another")
            job = self.jobs.create(kind, params, stages=len(stages))
            self._thread = threading.Thread(
                target=self._run, args=(job.id, stages, work), name="ragtune-tune", daemon=True
            )
            self._thread.start()
            return job

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self, job_id: str, stages: list[str], work: TuneWork) -> None:
        done = 0

        def progress(stage: str) -> None:
            # A named stage moves the count on; any other message (a step's own log line) only says where it is.
            nonlocal done
            if stage in stages:
                done = stages.index(stage)
            self.jobs.advance(job_id, stage[:128], done)

        try:
            report = work(self.settings.data_dir / "tune" / job_id, progress)
            if report.promoted:
                progress("reloading")
                self._after_promotion()
            self.jobs.finish(job_id, asdict(report))
        except Exception as exc:  # the job's record is where the client learns why
            log.exception("tuning job %s failed", job_id)
            self.jobs.fail(job_id, f"{type(exc).__name__}: {exc}")
