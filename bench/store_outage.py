"""How a frozen (SIGSTOP) and a stopped Milvus server look through the API: seconds and status of
each request, and how long recovery takes once the server is back. Writes
bench/results/store_outage.json (BENCHMARKS.md, "a frozen or stopped vector store")."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.api.support: the real server helpers

from ragtune.embed.embedders import LocalEmbedder
from tests.api.support import MilvusServer, app_client, service_settings, wait_for_job, wait_until

QUESTION = {"question": "Which port does the Milvus server listen on?"}
CHAT = {"model": "ragtune", "messages": [{"role": "user", "content": QUESTION["question"]}]}


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    milvus = MilvusServer(tmp / "milvus" / "server.db").start()
    results: dict[str, object] = {}

    def timed(name: str, call: Callable[[], object]) -> None:
        started = time.monotonic()
        response = call()
        results[name] = [round(time.monotonic() - started, 2), getattr(response, "status_code", None)]

    def recovery(name: str, client) -> None:
        started = time.monotonic()
        wait_until(lambda: client.get("/ready").status_code == 200, 60, "/ready to recover")
        results[name] = round(time.monotonic() - started, 2)

    settings = service_settings(tmp / "data", milvus_uri=milvus.uri)
    with app_client(settings, LocalEmbedder(batch_size=32)) as client:
        doc = ("milvus.md", b"# Milvus\n\nThe Milvus server listens on port 19530.")
        wait_for_job(client, client.post("/v1/documents", files=[("files", doc)]).json()["job_id"])
        pid = milvus._server._p.pid
        os.kill(pid, signal.SIGSTOP)
        timed("frozen /ready", lambda: client.get("/ready"))
        timed("frozen /metrics", lambda: client.get("/metrics"))
        timed("frozen /v1/query", lambda: client.post("/v1/query", json=QUESTION))
        timed("frozen /v1/query stream", lambda: client.post("/v1/query", json=QUESTION | {"stream": True}))
        timed("frozen /v1/chat/completions", lambda: client.post("/v1/chat/completions", json=CHAT))
        os.kill(pid, signal.SIGCONT)
        recovery("frozen: recovered after SIGCONT", client)
        milvus.stop()
        timed("stopped /ready", lambda: client.get("/ready"))
        timed("stopped /v1/query", lambda: client.post("/v1/query", json=QUESTION))
        milvus.start()
        recovery("stopped: recovered after restart", client)
        timed("after /v1/query", lambda: client.post("/v1/query", json=QUESTION))
    milvus.stop()
    report = {"milvus_timeout_seconds": settings.store.milvus_timeout_seconds, "seconds_and_status": results}
    out = Path(__file__).parent / "results" / "store_outage.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
