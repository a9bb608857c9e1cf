"""Fixtures for the service tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.support import Service, sample_files, served, service_settings, wait_for_job


@pytest.fixture(scope="session")
def indexed(tmp_path_factory, embedder) -> Iterator[Service]:
    """One real server with the five sample documents uploaded and indexed, shared by the
    modules that leave it as they found it (each test removes what it adds)."""
    with served(service_settings(tmp_path_factory.mktemp("api") / "data"), embedder) as service:
        accepted = service.http.post("/v1/documents", files=sample_files())
        assert accepted.status_code == 202, accepted.text
        job = wait_for_job(service.http, accepted.json()["job_id"])
        assert job["state"] == "done" and job["files_failed"] == 0, job
        yield service
