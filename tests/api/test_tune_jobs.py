"""`/v1/tune/...`: a tuning job over HTTP writes its questions, trains, measures and reports, one at a time."""

from __future__ import annotations

import json
from pathlib import Path

from tests.api.support import SAMPLES, app_client, sample_files, service_settings, wait_for_job, wait_until
from tests.builders import tiny_sentence_model

# Large enough steps for a random 2-layer model to learn something in a few seconds.
JOB = {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "per_chunk": 2, "holdout": 0.4}


def test_an_embedder_job_reports_before_and_after_and_leaves_the_served_model(tmp_path):
    base = tiny_sentence_model(tmp_path / "base", (p.read_text(errors="replace") for p in SAMPLES.iterdir()))
    settings = service_settings(tmp_path / "data", embedding_model=str(base), embedding_backend="torch")
    with app_client(settings, None) as client:
        accepted = client.post("/v1/documents", files=sample_files())
        assert wait_for_job(client, accepted.json()["job_id"])["state"] == "done"

        assert client.post("/v1/tune/embedder", json={**JOB, "batch_size": 1}).status_code == 422
        assert client.post("/v1/tune/answerer", json={}).json()["error"]["code"] == "generator_not_local"
        started = client.post("/v1/tune/embedder", json=JOB)
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        busy = client.post("/v1/tune/embedder", json=JOB)
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "tune_busy"
        assert client.post("/v1/admin/reload").json()["error"]["code"] == "tune_busy"

        def finished() -> dict | None:
            job = client.get(f"/v1/tune/jobs/{job_id}").json()
            return job if job["state"] in ("done", "failed") else None

        job = wait_until(finished, timeout=300, what="the tuning job", interval=0.5)
        assert job["state"] == "done", job["error"]
        assert job["progress"] == 1.0 and job["params"]["epochs"] == 2
        report = job["report"]
        assert report["kind"] == "embedder" and report["main_metric"] == "hybrid_ndcg@10"
        assert set(report["before"]) == set(report["after"]) >= {"dense_ndcg@10", "hybrid_recall@5"}
        assert report["promoted"] is False and report["decision"] is None  # not asked to promote
        assert Path(report["model"]) == (settings.data_dir / "tune" / job_id / "model").resolve()
        assert (Path(report["model"]) / "config.json").is_file()
        assert (settings.data_dir / "tune" / job_id / "report.json").is_file()
        manifest = json.loads((settings.data_dir / "tune" / job_id / "questions" / "manifest.json").read_text())
        assert manifest["source"]["index"] and manifest["writer"] == "rules"
        assert (manifest["per_chunk"], manifest["holdout"], manifest["unanswerable"]) == (2, 0.4, 0.0)
        assert manifest["chunk_size"] == settings.ingest.chunk_size and manifest["embedding_model"] == str(base)
        assert client.get("/v1/tune/jobs").json()["jobs"][0]["id"] == job_id
        assert client.get("/ready").json()["serving"]["embedder"] == str(base)  # nothing promoted
        assert client.get("/v1/tune/promotions").json() == {"promotions": []}
        assert client.get("/v1/tune/jobs/nope").status_code == 404


def test_a_job_left_running_by_a_stopped_service_is_failed_at_the_next_start(tmp_path, embedder):
    from ragtune.store.tune_jobs import TuneJobStore
    from ragtune.system import open_catalog

    settings = service_settings(tmp_path / "data")
    catalog = open_catalog(settings)
    jobs = TuneJobStore(catalog)
    left = jobs.advance(jobs.create("embedder", {}, stages=4).id, "training and measuring", done=1)
    catalog.close()
    with app_client(settings, embedder) as client:
        job = client.get(f"/v1/tune/jobs/{left.id}").json()
        assert job["state"] == "failed" and "stopped before the job finished" in job["error"]
        assert job["stage"] == "training and measuring" and job["progress"] == 0.25
