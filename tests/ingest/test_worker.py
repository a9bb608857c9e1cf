"""The in-process worker against a real pipeline: outcomes per file, hand-back on shutdown,
retry after a failure that may pass."""

from __future__ import annotations

import threading

from ragtune.ingest import indexer
from ragtune.ingest.chunking import document_id
from ragtune.ingest.worker import Worker
from ragtune.store.base import StoreUnavailableError
from ragtune.store.jobs import DONE, FILE_FAILED, FILE_INDEXED, FILE_UNCHANGED, QUEUED, JobQueue, NewFile


def upload(name: str, data: bytes) -> NewFile:
    return NewFile(name, f"uploads/{name}", document_id(f"uploads/{name}"), data)


def test_worker_records_each_file_and_resumes_after_a_hand_back(system, settings):
    queue = JobQueue(system.catalog)
    worker = Worker(system.ingestor, queue, settings.service)
    good, bad = upload("good.md", b"# Good\n\nThe staging cluster runs in Frankfurt."), upload("bad.txt", b"caf\xe9")
    job = queue.enqueue([good, bad])

    stopping = threading.Event()
    stopping.set()
    worker._stop = stopping  # as `run` does when the server shuts down
    assert worker.run_once()
    handed_back = queue.get(job.id)
    assert handed_back.state == QUEUED and handed_back.attempts == 0 and handed_back.files_done == 0

    worker._stop = threading.Event()
    assert worker.run_once() and not worker.run_once()  # one job, then none
    done = queue.get(job.id)
    assert (done.state, done.attempts, done.files_done, done.files_failed) == (DONE, 1, 2, 1)
    assert [f.status for f in done.files] == [FILE_INDEXED, FILE_FAILED]
    assert "not valid UTF-8" in done.files[1].error and done.chunks == system.catalog.get(good.doc_id).chunks == 1

    again = queue.enqueue([good])
    worker.run_once()
    assert queue.get(again.id).files[0].status == FILE_UNCHANGED and system.store.count() == 1


def test_worker_waits_out_a_store_outage_and_releases_a_failed_attempt(system, settings, monkeypatch):
    queue = JobQueue(system.catalog)
    outage = {"problem": "Milvus at http://milvus:19530 does not accept connections"}
    worker = Worker(system.ingestor, queue, settings.service, store_ready=lambda: outage["problem"])
    job = queue.enqueue([upload("a.md", b"# A\n\nText.")])
    assert not worker.run_once() and queue.get(job.id).attempts == 0  # not claimed during the outage

    outage["problem"] = None

    def server_gone(*_):  # the server dies while the job writes its chunks
        raise StoreUnavailableError("Milvus at http://milvus:19530 is unreachable")

    monkeypatch.setattr(system.store, "insert", server_gone)
    assert worker.run_once()
    released = queue.get(job.id)
    assert released.state == QUEUED and released.attempts == 1
    assert (
        released.error
        == "attempt 1 failed, will retry: StoreUnavailableError: Milvus at http://milvus:19530 is unreachable"
    )
    assert system.catalog.get(job.files[0].doc_id).status == "pending"  # redone, without duplicates, on retry


def test_worker_records_progress_within_a_large_file(system, settings, monkeypatch):
    monkeypatch.setattr(indexer, "PROGRESS_SLICE", 2)  # a report every two chunks embedded
    queue = JobQueue(system.catalog)
    worker = Worker(system.ingestor, queue, settings.service)
    text = "\n\n".join(f"Section {i}. " + f"The node pool {i} is drained before the upgrade. " * 18 for i in range(6))
    job = queue.enqueue([upload("small.md", b"# Small\n\nOne chunk."), upload("big.md", text.encode())])
    seen: list[tuple[int, int, int]] = []
    record = queue.record_progress

    def spy(job_id: str, worker_id: str, seq: int, embedded: int, total: int) -> bool:
        assert record(job_id, worker_id, seq, embedded, total)
        current = queue.get(job_id).current
        seen.append((current.seq, current.chunks_embedded, current.chunks_total))
        return True

    monkeypatch.setattr(queue, "record_progress", spy)
    assert worker.run_once()
    total = system.catalog.get(job.files[1].doc_id).chunks
    assert total > 4
    assert seen[0] == (0, 0, 1) and seen[1] == (0, 1, 1)
    big = [embedded for seq, embedded, _ in seen if seq == 1]
    assert big == [*range(0, total, 2), total] and {t for s, _, t in seen if s == 1} == {total}
