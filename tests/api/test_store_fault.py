"""A Milvus server that goes away: /ready and queries answer 503 at once; on its return the
service recovers without a restart. Against milvus-lite's real gRPC server on loopback."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.api.support import MilvusServer, app_client, service_settings, wait_for_job, wait_until

QUESTION = {"question": "Which port does the Milvus server listen on?"}
DOC = ("milvus.md", b"# Milvus\n\nThe Milvus server listens on port 19530 for gRPC clients.")


@pytest.fixture
def milvus(tmp_path):
    server = MilvusServer(tmp_path / "milvus" / "server.db").start()
    yield server
    server.stop()


@pytest.mark.slow
def test_store_outage_is_503_and_the_service_recovers(tmp_path, embedder, milvus):
    with app_client(service_settings(tmp_path / "data", milvus_uri=milvus.uri), embedder) as client:
        accepted = client.post("/v1/documents", files=[("files", DOC)]).json()
        assert wait_for_job(client, accepted["job_id"])["state"] == "done"
        doc_id = accepted["documents"][0]["document_id"]
        assert client.get("/ready").status_code == 200
        assert "19530" in client.post("/v1/query", json=QUESTION).json()["answer"]

        milvus.stop()
        started = time.monotonic()
        ready = client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False and body["checks"]["store"]["ok"] is False
        assert body["checks"]["catalog"]["ok"] and body["checks"]["embedder"]["ok"]
        assert (
            body["error"]["code"] == "not_ready"
            and f"Milvus at {milvus.uri} does not accept connections" in body["error"]["message"]
        )

        for request in (QUESTION, QUESTION | {"retrieve_only": True}):
            down = client.post("/v1/query", json=request)
            assert down.status_code == 503 and down.headers["Retry-After"] == "5"
            assert (
                down.json()["error"]["code"] == "store_unavailable"
                and "check that the server is up" in down.json()["error"]["message"]
            )
        assert client.delete(f"/v1/documents/{doc_id}").status_code == 503
        assert "ragtune_ready 0.0" in client.get("/metrics").text
        assert client.get("/health").status_code == 200  # liveness does not depend on the store
        assert time.monotonic() - started < 10  # failing fast, not waiting out client retries

        # An upload during the outage is accepted and waits in the queue.
        queued = client.post(
            "/v1/documents", files=[("files", ("later.md", b"# Later\n\nIndexed after the outage."))]
        ).json()
        time.sleep(1.5)
        assert client.get(f"/v1/jobs/{queued['job_id']}").json()["state"] == "queued"

        milvus.start()
        wait_until(lambda: client.get("/ready").status_code == 200, 60, "/ready to recover")
        assert "19530" in client.post("/v1/query", json=QUESTION).json()["answer"]
        job = wait_for_job(client, queued["job_id"])
        assert job["state"] == "done" and job["attempts"] == 1
        assert client.get(f"/v1/documents/{doc_id}").json()["status"] == "indexed"


@pytest.mark.slow
def test_a_frozen_store_is_503_within_its_deadline_and_metrics_still_answer(tmp_path, embedder, milvus):
    """SIGSTOP: the server still accepts connections but never answers. Each route gives up
    after its deadline (2 s for /ready, RAGTUNE_MILVUS_TIMEOUT_SECONDS for data calls)."""
    settings = service_settings(tmp_path / "data", milvus_uri=milvus.uri, milvus_timeout_seconds=2)
    with app_client(settings, embedder) as client:
        accepted = client.post("/v1/documents", files=[("files", DOC)]).json()
        assert wait_for_job(client, accepted["job_id"])["state"] == "done"
        assert client.get("/ready").status_code == 200
        pid = milvus._server._p.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            ready = client.get("/ready")
            assert ready.status_code == 503 and "did not answer within 2 s" in ready.json()["error"]["message"]
            assert "ragtune_ready 0.0" in client.get("/metrics").text  # the last verdict, not a new wait
            down = client.post("/v1/query", json=QUESTION)
            assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
            streamed = client.post("/v1/query", json=QUESTION | {"stream": True})
            assert streamed.status_code == 503 or "store_unavailable" in streamed.text
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: client.get("/ready").status_code == 200, 60, "/ready to recover")
        assert "19530" in client.post("/v1/query", json=QUESTION).json()["answer"]
