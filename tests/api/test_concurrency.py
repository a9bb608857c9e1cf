"""16 clients mixing uploads, queries and deletes against one real server for a bounded time,
then an integrity check: every indexed document's catalog chunk count equals its rows in
Milvus, no orphan rows, no document left pending, every job finished.

RAGTUNE_LOAD_SECONDS (default 20) sets how long the clients run; RAGTUNE_LOAD_REPORT names a
JSON file for the figures (BENCHMARKS.md quotes a 60 s run).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ragtune.types import Filters
from tests.api.support import served, service_settings, wait_for_job

CLIENTS = 16
QUESTIONS = ("What does note 3 say about retrieval?", "Which port is mentioned?", "How are chunks stored?")


def _client_loop(url: str, client: int, until: float, log: list[tuple[str, int, float]], jobs: list[str]) -> None:
    rng = random.Random(client)
    mine: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as http:
        n = 0
        while time.monotonic() < until:
            n += 1
            roll = rng.random()
            started = time.monotonic()
            if roll < 0.25:
                text = f"# Note {client}-{n}\n\nClient {client} wrote note {n} about retrieval on port {8000 + n}."
                response = http.post("/v1/documents", files=[("files", (f"c{client}-{n}.md", text.encode()))])
                if response.status_code == 202:
                    body = response.json()
                    jobs.append(body["job_id"])
                    mine.append(body["documents"][0]["document_id"])
                kind = "upload"
            elif roll < 0.4 and mine:
                response = http.delete(f"/v1/documents/{mine.pop(rng.randrange(len(mine)))}")
                kind = "delete"
            else:
                response = http.post("/v1/query", json={"question": rng.choice(QUESTIONS)})
                kind = "query"
            log.append((kind, response.status_code, time.monotonic() - started))


@pytest.mark.slow
def test_mixed_load_keeps_catalog_and_store_consistent(tmp_path, embedder):
    seconds = float(os.environ.get("RAGTUNE_LOAD_SECONDS", "20"))
    settings = service_settings(tmp_path / "data", rate_limit_burst=100_000, job_poll_seconds=0.2)
    with served(settings, embedder) as service:
        log: list[tuple[str, int, float]] = []
        jobs: list[str] = []
        until = time.monotonic() + seconds
        with ThreadPoolExecutor(CLIENTS) as pool:
            for future in [pool.submit(_client_loop, service.url, i, until, log, jobs) for i in range(CLIENTS)]:
                future.result()
        statuses = Counter((kind, status) for kind, status, _ in log)
        assert not [key for key in statuses if key[1] >= 500], statuses
        assert statuses[("query", 200)] > 0 and statuses[("upload", 202)] > 0

        finished = [wait_for_job(service.http, job, timeout=600) for job in jobs]
        assert all(job["state"] == "done" for job in finished)

        system = service.services.system
        records, total = system.catalog.list(limit=100_000)
        assert total == len(records)
        assert not [r.source for r in records if r.status != "indexed"]  # nothing pending or failed
        for record in records:
            assert system.store.count(Filters(doc_ids=(record.id,))) == record.chunks, record.source
        assert system.store.count() == sum(r.chunks for r in records)  # no orphan rows

        latencies = sorted(seconds for _, _, seconds in log)
        figures = {
            "clients": CLIENTS,
            "seconds": seconds,
            "requests": len(log),
            "by_kind_and_status": {f"{kind} {status}": n for (kind, status), n in sorted(statuses.items())},
            "errors_5xx": sum(n for (_, status), n in statuses.items() if status >= 500),
            "p50_s": round(latencies[len(latencies) // 2], 3),
            "p95_s": round(latencies[int(len(latencies) * 0.95)], 3),
            "documents_indexed": len(records),
            "jobs": len(jobs),
        }
        if report := os.environ.get("RAGTUNE_LOAD_REPORT"):
            Path(report).write_text(json.dumps(figures, indent=1) + "\n")
