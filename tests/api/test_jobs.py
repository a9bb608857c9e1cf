"""The job queue's rules on SQLite: order, exclusive claims, leases, attempts, hand-back."""

from __future__ import annotations

import time

import pytest

from ragtune.store.catalog import Catalog
from ragtune.store.jobs import DONE, FAILED, FILE_FAILED, FILE_INDEXED, QUEUED, RUNNING, JobQueue, NewFile
from ragtune.types import Labels


@pytest.fixture
def queue(tmp_path) -> JobQueue:
    return JobQueue(Catalog(f"sqlite:///{tmp_path / 'catalog.db'}"))


def new_files(*names: str) -> list[NewFile]:
    return [NewFile(n, f"uploads/{n}", f"doc-{n}", f"text of {n}".encode()) for n in names]


def test_claims_oldest_first_and_never_twice(queue):
    first = queue.enqueue(new_files("a.md"))
    second = queue.enqueue(new_files("b.md", "c.md"), Labels(tags=("t",)))
    claimed = queue.claim("w1", lease_seconds=30, max_attempts=3)
    assert claimed.id == first.id and claimed.state == RUNNING and claimed.claimed_by == "w1" and claimed.attempts == 1
    other = queue.claim("w2", lease_seconds=30, max_attempts=3)
    assert other.id == second.id and other.tags == ("t",) and [f.seq for f in other.files] == [0, 1]
    assert queue.claim("w3", lease_seconds=30, max_attempts=3) is None
    assert queue.counts() == {QUEUED: 0, RUNNING: 2, DONE: 0, FAILED: 0}


def test_progress_and_finish_only_by_the_owner(queue):
    job = queue.enqueue(new_files("a.md", "b.md"))
    queue.claim("w1", 30, 3)
    assert queue.file_data(job.id, 1) == b"text of b.md"
    assert not queue.record_file(job.id, "intruder", 0, FILE_INDEXED, 4)
    assert queue.record_file(job.id, "w1", 0, FILE_INDEXED, 4)
    assert queue.record_file(job.id, "w1", 1, FILE_FAILED, 0, "b.md is not valid UTF-8")
    assert not queue.finish(job.id, "intruder")
    assert queue.finish(job.id, "w1")
    done = queue.get(job.id)
    assert (done.state, done.files_done, done.files_failed, done.chunks) == (DONE, 2, 1, 4)
    assert [(f.status, f.error) for f in done.files] == [(FILE_INDEXED, ""), (FILE_FAILED, "b.md is not valid UTF-8")]
    assert queue.file_data(job.id, 0) == b""  # uploads are not kept once their job ended


def test_expired_lease_is_claimed_again_and_the_old_owner_loses_it(queue):
    job = queue.enqueue(new_files("a.md"))
    queue.claim("dead", lease_seconds=0.2, max_attempts=3)
    assert queue.claim("w2", 30, 3) is None  # the lease still runs
    time.sleep(0.3)
    retried = queue.claim("w2", 30, 3)
    assert retried.id == job.id and retried.attempts == 2 and retried.claimed_by == "w2"
    assert not queue.heartbeat(job.id, "dead", 30)  # the first worker must stop
    assert queue.heartbeat(job.id, "w2", 30)


def test_a_file_whose_workers_keep_dying_is_failed_and_the_others_go_on(queue):
    job = queue.enqueue(new_files("a.md", "poison.md", "c.md"))
    claimed = queue.claim("w0", lease_seconds=0.05, max_attempts=2)
    assert queue.record_file(job.id, "w0", 0, FILE_INDEXED, 2)
    for crash in (1, 2):  # each worker dies on poison.md: its lease runs out
        time.sleep(0.1)
        claimed = queue.claim(f"w{crash}", lease_seconds=0.05, max_attempts=2)
        assert claimed is not None and claimed.state == "running"
    statuses = [f.status for f in claimed.files]
    assert statuses == [FILE_INDEXED, FILE_FAILED, QUEUED]  # only the file it died on, after 2 crashes
    assert "the worker stopped 2 times while indexing this file" in claimed.files[1].error
    assert claimed.files_done == 2 and claimed.files_failed == 1
    assert queue.record_file(job.id, "w2", 2, FILE_INDEXED, 1) and queue.finish(job.id, "w2")
    done = queue.get(job.id)
    assert done.state == DONE and done.files_failed == 1 and done.files_done == 3


def test_a_worker_dying_after_the_last_file_charges_no_file(queue):
    job = queue.enqueue(new_files("a.md"))
    queue.claim("w0", lease_seconds=0.05, max_attempts=1)
    queue.record_file(job.id, "w0", 0, FILE_INDEXED, 2)
    time.sleep(0.1)
    resumed = queue.claim("w1", 30, max_attempts=1)
    assert [f.status for f in resumed.files] == [FILE_INDEXED] and resumed.files_failed == 0
    assert queue.finish(job.id, "w1") and queue.get(job.id).state == DONE


def test_release_retries_later_then_fails(queue):
    job = queue.enqueue(new_files("a.md"))
    queue.claim("w", 30, max_attempts=2)
    assert queue.release(job.id, "w", "Milvus unreachable", max_attempts=2, retry_after=0.2) == QUEUED
    assert queue.claim("w", 30, 2) is None  # not before retry_after
    time.sleep(0.3)
    assert queue.claim("w", 30, 2).attempts == 2
    assert queue.release(job.id, "w", "Milvus unreachable", max_attempts=2, retry_after=0.2) == FAILED
    assert "failed 2 times; last error: Milvus unreachable" in queue.get(job.id).error


def test_waiting_for_names_only_jobs_that_will_still_index_the_file(queue):
    job = queue.enqueue(new_files("a.md", "b.md"))
    assert queue.waiting_for("doc-a.md") == job.id and queue.waiting_for("doc-zzz") is None
    queue.claim("w", 30, max_attempts=1)
    assert queue.record_file(job.id, "w", 0, "indexed", 1)
    assert queue.waiting_for("doc-a.md") is None and queue.waiting_for("doc-b.md") == job.id  # running
    assert queue.release(job.id, "w", "Milvus unreachable", max_attempts=1, retry_after=0) == FAILED
    assert queue.waiting_for("doc-b.md") is None  # a failed job never reaches its queued files


def test_give_back_does_not_count_an_attempt(queue):
    job = queue.enqueue(new_files("a.md", "b.md"))
    queue.claim("w", 30, 3)
    queue.record_file(job.id, "w", 0, FILE_INDEXED, 2)
    assert queue.give_back(job.id, "w")
    resumed = queue.claim("w2", 30, 3)
    assert resumed.attempts == 1 and [f.status for f in resumed.files] == [FILE_INDEXED, QUEUED]


def test_progress_within_a_file_only_by_the_owner_and_in_the_api_view(queue):
    from ragtune.api.schemas import JobOut

    job = queue.enqueue(new_files("a.md", "big.md"))
    queue.claim("w1", 30, 3)
    queue.record_file(job.id, "w1", 0, FILE_INDEXED, 4)
    assert not queue.record_progress(job.id, "intruder", 1, 10, 40)
    assert queue.record_progress(job.id, "w1", 1, 0, 40)
    assert queue.record_progress(job.id, "w1", 1, 10, 40)  # rewritten, not added
    running = JobOut.of(queue.get(job.id))
    assert running.current_file is not None
    assert (running.current_file.seq, running.current_file.filename) == (1, "big.md")
    assert (running.current_file.chunks_embedded, running.current_file.chunks_total) == (10, 40)
    assert running.progress == (1 + 10 / 40) / 2

    queue.record_file(job.id, "w1", 1, FILE_INDEXED, 40)
    queue.finish(job.id, "w1")
    done = JobOut.of(queue.get(job.id))
    assert done.current_file is None and done.progress == 1.0
    assert JobOut.of(queue.enqueue(new_files("c.md"))).progress == 0.0
