"""Scale-out ingestion: `ragtune worker` processes sharing a real PostgreSQL catalog and a Milvus
server. Many jobs are each processed exactly once; a worker killed mid-job has its job
finished by the other, without duplicate chunks. The catalog's other shared state (conversations,
the reindex bookkeeping and its lease) works on the same PostgreSQL server."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragtune.types import Filters
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

LEASE_SECONDS = 3


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on a loopback port; yields its SQLAlchemy URL."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (scripts/system-deps/postgresql.sh installs them)")
    root = Path(tempfile.mkdtemp(prefix="ragtune-pg-"))  # under /tmp, reachable by the postgres user
    demote = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)

        def demote() -> None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    port = free_port()
    subprocess.run(
        [bindir / "initdb", "-D", root / "data", "-U", "ragtune", "-A", "trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        preexec_fn=demote,
        timeout=120,
    )
    log = (root / "postgres.log").open("w")
    server = subprocess.Popen(
        [
            bindir / "postgres",
            "-D",
            root / "data",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            root,
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=demote,
    )
    try:
        import psycopg

        def connects() -> bool:
            try:
                with psycopg.connect(
                    f"postgresql://ragtune@127.0.0.1:{port}/postgres", connect_timeout=2, autocommit=True
                ) as conn:
                    conn.execute("CREATE DATABASE ragtune")
                return True
            except psycopg.OperationalError:
                return False

        wait_until(connects, 60, "PostgreSQL to accept connections", interval=0.2)
        yield f"postgresql+psycopg://ragtune@127.0.0.1:{port}/ragtune"
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        server.wait(60)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def milvus(tmp_path_factory) -> Iterator[MilvusServer]:
    server = MilvusServer(tmp_path_factory.mktemp("milvus") / "server.db").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def workers(postgres, milvus, tmp_path_factory) -> Iterator[list[WorkerProcess]]:
    log_dir = tmp_path_factory.mktemp("workers")
    env = os.environ | {
        "RAGTUNE_CATALOG_URL": postgres,
        "RAGTUNE_MILVUS_URI": milvus.uri,
        "RAGTUNE_DATA_DIR": str(log_dir / "data"),
        "RAGTUNE_TORCH_THREADS": "1",
        "RAGTUNE_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        "RAGTUNE_JOB_POLL_SECONDS": "0.2",
    }
    started = [WorkerProcess(name, env, log_dir) for name in ("a", "b")]
    try:
        for worker in started:
            wait_until(lambda w=worker: "started" in w.log or w.process.poll() is not None, 180, "a worker to start")
            assert worker.process.poll() is None, worker.log
        yield started
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.terminate()
                worker.process.wait(60)


@pytest.fixture(scope="module")
def api(postgres, milvus, workers, tmp_path_factory, embedder):
    """The API with its own worker off: it only queues jobs for the worker processes."""
    settings = service_settings(
        tmp_path_factory.mktemp("api") / "data", catalog_url=postgres, milvus_uri=milvus.uri, embedded_worker=False
    )
    with app_client(settings, embedder) as client:
        yield client


def store_chunk_ids(api, doc_ids: list[str]) -> list[str]:
    # The API's own store: a second pymilvus client on the same URI would share, and on
    # close tear down, the API's connection.
    store = api.app.state.services.system.store
    ids = [h.id for doc_id in doc_ids for h in store.chunks(doc_id)]
    assert store.count(Filters(doc_ids=tuple(doc_ids))) == len(ids)
    return ids


def test_many_jobs_each_processed_exactly_once(api, workers):
    jobs = []
    for i in range(12):
        body = f"# Note {i}\n\nNote number {i} records that shard {i} of the index was rebuilt on day {i}.".encode()
        accepted = api.post("/v1/documents", files=[("files", (f"note-{i}.md", body))])
        assert accepted.status_code == 202
        jobs.append(accepted.json())
    finished = [wait_for_job(api, j["job_id"], timeout=180) for j in jobs]
    assert all(j["state"] == "done" and j["attempts"] == 1 and j["files"][0]["status"] == "indexed" for j in finished)

    claims = [job for w in workers for job in w.claimed()]
    assert sorted(claims) == sorted(j["job_id"] for j in jobs)  # every job claimed once, by one worker
    assert all(w.claimed() for w in workers), "both workers should have taken jobs"

    doc_ids = [j["documents"][0]["document_id"] for j in jobs]
    chunk_ids = store_chunk_ids(api, doc_ids)
    assert len(chunk_ids) == len(set(chunk_ids)) == sum(j["chunks"] for j in finished)
    answer = api.post("/v1/query", json={"question": "Which shard was rebuilt on day 7?"}).json()
    assert "day 7" in answer["answer"]


def test_killed_worker_job_is_finished_by_the_other_without_duplicates(api, workers):
    texts = {
        f"manual-{n}.md": "\n\n".join(
            f"Section {n}.{i}: the maintenance procedure step {i} of manual {n} requires checking replica {i % 7} "
            f"and confirming the backup of volume {i % 11} before continuing with the next step." * 4
            for i in range(150)
        )
        for n in range(4)
    }
    accepted = api.post(
        "/v1/documents", files=[("files", (name, text.encode())) for name, text in texts.items()]
    ).json()
    job_id = accepted["job_id"]

    def mid_job() -> dict | None:
        job = api.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] == "running" and 1 <= job["files_done"] < job["files_total"] else None

    wait_until(mid_job, 180, "the job to be part-way through", interval=0.05)
    victim = next(w for w in workers if job_id in w.claimed())
    survivor = next(w for w in workers if w is not victim)
    victim.process.kill()
    victim.process.wait(30)

    done = wait_for_job(api, job_id, timeout=240)
    assert done["state"] == "done" and done["attempts"] == 2 and done["files_failed"] == 0
    assert victim.claimed().count(job_id) == 1 and survivor.claimed().count(job_id) == 1
    assert all(f["status"] == "indexed" for f in done["files"])

    expected = clean_chunk_counts(texts, accepted["documents"])
    for doc_id, count in expected.items():
        record = api.get(f"/v1/documents/{doc_id}").json()
        assert record["status"] == "indexed" and record["chunks"] == count
    chunk_ids = store_chunk_ids(api, list(expected))
    assert len(chunk_ids) == len(set(chunk_ids)) == sum(expected.values())


def test_conversations_on_postgresql(postgres):
    from ragtune.store.catalog import Catalog
    from ragtune.store.conversations import Conversations
    from tests.store.test_conversations import exercise

    catalog = Catalog(postgres)
    try:
        exercise(Conversations(catalog))
    finally:
        catalog.close()


def test_reindex_bookkeeping_on_postgresql(postgres):
    """The copies, the one-transaction switch and the lease (row locks, a racing first claim) on
    PostgreSQL, in a database of their own."""
    import psycopg

    from ragtune.store.catalog import Catalog
    from tests.store.test_reindexing import (
        claim_at_once,
        one_run_at_a_time,
        switch_waits_for_every_copy,
        with_documents,
    )

    server = postgres.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE reindexing")
    catalog = with_documents(Catalog(postgres.rsplit("/", 1)[0] + "/reindexing"))
    try:
        switch_waits_for_every_copy(catalog)
        one_run_at_a_time(catalog)
        # Two runs claiming a collection nobody holds, at once: one gets it.
        assert sorted(claim_at_once(catalog, "raced")) == ["busy", "claimed"]
    finally:
        catalog.close()
