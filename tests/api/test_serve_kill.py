"""kill -9 in the middle of a multi-file upload job, of `ragtune serve` (with its in-process
worker) and of a standalone `ragtune worker` on the SQLite catalog: after a restart the job
resumes at its first unfinished file, and the index equals a clean run's: every file
indexed once, no lost and no duplicate chunk. (Two workers on PostgreSQL, one killed, are
in test_worker_postgres.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import THREADS
from ragtune.config import Settings
from ragtune.store.milvus import MilvusStore
from tests.api.support import (
    MilvusServer,
    WorkerProcess,
    app_client,
    clean_chunk_counts,
    free_port,
    service_settings,
    wait_for_job,
    wait_until,
)

pytestmark = pytest.mark.slow


@contextmanager
def _serve(data: Path, port: int) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    env = os.environ | {
        "RAGTUNE_DATA_DIR": str(data),
        "RAGTUNE_PORT": str(port),
        "RAGTUNE_TORCH_THREADS": str(THREADS),
        "RAGTUNE_EMBEDDING_BATCH_SIZE": "16",
        "RAGTUNE_RATE_LIMIT_BURST": "10000",
        "RAGTUNE_JOB_LEASE_SECONDS": "3",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: Milvus Lite's server process dies with it
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:

        def ready() -> bool:
            try:
                return http.get("/ready").status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, "ragtune serve exited during start-up"
                return False

        try:
            wait_until(ready, 180, "ragtune serve to be ready", interval=0.3)
            yield process, http
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(60)


def manuals() -> dict[str, str]:
    """Five files of some 50 chunks each: a job long enough to be killed part-way through."""
    return {
        f"manual-{n}.md": "\n\n".join(
            f"Section {n}.{i}: step {i} of manual {n} checks replica {i % 7} and the backup of volume {i % 11}. " * 4
            for i in range(120)
        )
        for n in range(5)
    }


def assert_clean_index(store: MilvusStore, texts: dict[str, str], documents: list[dict]) -> None:
    expected = clean_chunk_counts(texts, documents)
    for doc_id, count in expected.items():
        ids = [hit.id for hit in store.chunks(doc_id)]
        assert len(ids) == len(set(ids)) == count, doc_id
    assert store.count() == sum(expected.values())


def test_killed_serve_resumes_its_job_without_loss_or_duplicates(tmp_path):
    texts = manuals()
    data = tmp_path / "data"
    with _serve(data, free_port()) as (process, http):
        accepted = http.post("/v1/documents", files=[("files", (n, t.encode())) for n, t in texts.items()]).json()
        job_id = accepted["job_id"]

        def mid_job() -> bool:
            job = http.get(f"/v1/jobs/{job_id}").json()
            return job["state"] == "running" and 1 <= job["files_done"] < job["files_total"]

        wait_until(mid_job, 240, "the job to be part-way through", interval=0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    with _serve(data, free_port()) as (_, http):
        done = wait_for_job(http, job_id, timeout=300)
        assert done["state"] == "done" and done["files_failed"] == 0 and done["attempts"] == 2
        assert [f["status"] for f in done["files"]] == ["indexed"] * len(texts)

    store = MilvusStore(str(data / "milvus.db"), Settings().store.collection, 384)
    try:
        assert_clean_index(store, texts, accepted["documents"])
    finally:
        store.close()


def test_killed_standalone_worker_on_sqlite_resumes_without_loss_or_duplicates(tmp_path, embedder):
    texts = manuals()
    server = MilvusServer(tmp_path / "milvus" / "server.db").start()
    data = tmp_path / "data"
    env = os.environ | {
        "RAGTUNE_DATA_DIR": str(data),  # the catalog: data/catalog.db, shared with the API
        "RAGTUNE_MILVUS_URI": server.uri,
        "RAGTUNE_TORCH_THREADS": str(THREADS),
        "RAGTUNE_EMBEDDING_BATCH_SIZE": "16",
        "RAGTUNE_JOB_LEASE_SECONDS": "3",
        "RAGTUNE_JOB_POLL_SECONDS": "0.2",
    }
    settings = service_settings(data, milvus_uri=server.uri, embedded_worker=False)
    workers: list[WorkerProcess] = []
    try:
        with app_client(settings, embedder) as api:
            accepted = api.post("/v1/documents", files=[("files", (n, t.encode())) for n, t in texts.items()]).json()
            job_id = accepted["job_id"]
            workers.append(WorkerProcess("first", env, tmp_path))

            def mid_job() -> bool:
                job = api.get(f"/v1/jobs/{job_id}").json()
                return job["state"] == "running" and 1 <= job["files_done"] < job["files_total"]

            wait_until(mid_job, 240, "the job to be part-way through", interval=0.05)
            workers[0].process.kill()
            workers[0].process.wait(30)
            assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "running"  # its lease still held

            workers.append(WorkerProcess("second", env, tmp_path))
            done = wait_for_job(api, job_id, timeout=300)
            assert done["state"] == "done" and done["files_failed"] == 0 and done["attempts"] == 2
            assert [f["status"] for f in done["files"]] == ["indexed"] * len(texts)
            assert workers[0].claimed() == workers[1].claimed() == [job_id]
            # The API's own store client: a second pymilvus client on one URI shares its connection.
            assert_clean_index(api.app.state.services.system.store, texts, accepted["documents"])
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.terminate()
                worker.process.wait(60)
        server.stop()
