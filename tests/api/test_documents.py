"""Documents over HTTP: upload → job progress → list → inspect → replace → delete."""

from __future__ import annotations

import json

from builders import pdf_bytes
from ragtune.ingest.formats import accept_attribute, supported_names
from ragtune.types import Filters
from tests.api.support import app_client, service_settings, wait_for_job

SAMPLE_NAMES = [
    "architecture.html",
    "configuration.txt",
    "fine-tuning.docx",
    "getting-started.md",
    "operations-guide.pdf",
]


def chunks_in_store(service, doc_id: str) -> int:
    return service.services.system.store.count(Filters(doc_ids=(doc_id,)))


def test_uploaded_samples_are_listed_with_status_and_chunks(indexed):
    listing = indexed.http.get("/v1/documents").json()
    assert listing["total"] == 5 and listing["offset"] == 0
    assert [d["source"] for d in listing["documents"]] == [f"uploads/{n}" for n in SAMPLE_NAMES]
    assert {d["status"] for d in listing["documents"]} == {"indexed"}
    pdf = next(d for d in listing["documents"] if d["source"].endswith(".pdf"))
    assert pdf["content_type"] == "application/pdf" and pdf["chunks"] > 0 and pdf["error"] == ""
    assert chunks_in_store(indexed, pdf["id"]) == pdf["chunks"]

    assert indexed.http.get(f"/v1/documents/{pdf['id']}").json() == pdf
    page = indexed.http.get("/v1/documents", params={"offset": 1, "limit": 2}).json()
    assert page["total"] == 5 and [d["source"] for d in page["documents"]] == [
        f"uploads/{n}" for n in SAMPLE_NAMES[1:3]
    ]
    assert indexed.http.get("/v1/documents", params={"status": "failed"}).json()["total"] == 0
    bad = indexed.http.get("/v1/documents", params={"status": "weird"})
    assert bad.status_code == 422 and "status" in bad.json()["error"]["message"]


def test_job_reports_progress_and_per_file_errors(indexed):
    files = [
        ("files", ("release-notes.md", b"# Release notes\n\nVersion 2 adds streaming answers over SSE.")),
        ("files", ("scan.pdf", pdf_bytes([""]))),  # a valid PDF without text, like a scan
    ]
    accepted = indexed.http.post("/v1/documents", files=files, data={"tags": ["notes", "v2"]})
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}"
    assert [(d["filename"], d["source"], d["content_type"]) for d in body["documents"]] == [
        ("release-notes.md", "uploads/release-notes.md", "text/markdown"),
        ("scan.pdf", "uploads/scan.pdf", "application/pdf"),
    ]
    job = wait_for_job(indexed.http, body["job_id"])
    assert (job["state"], job["files_total"], job["files_done"], job["files_failed"], job["attempts"]) == (
        "done",
        2,
        2,
        1,
        1,
    )
    notes, scan = job["files"]
    assert notes["status"] == "indexed" and notes["chunks"] == job["chunks"] > 0 and job["tags"] == ["notes", "v2"]
    assert scan["status"] == "failed" and "no extractable text" in scan["error"] and "OCR" in scan["error"]

    failed = indexed.http.get(f"/v1/documents/{scan['document_id']}").json()
    assert failed["status"] == "failed" and "no extractable text" in failed["error"]
    assert indexed.http.get(f"/v1/documents/{notes['document_id']}").json()["tags"] == ["notes", "v2"]
    for doc in (notes, scan):
        assert indexed.http.delete(f"/v1/documents/{doc['document_id']}").status_code == 200
    assert indexed.http.get("/v1/documents").json()["total"] == 5


def test_a_batch_keeps_its_good_files_and_names_each_rejected_one(indexed):
    files = [
        ("files", ("ferry.md", b"# Ferry\n\nThe ferry to the island leaves at noon.")),
        ("files", ("menu.txt", "café au lait".encode("latin-1"))),
        ("files", ("photo.gif", b"GIF89a" + bytes(range(256)) * 4)),
    ]
    accepted = indexed.http.post("/v1/documents", files=files)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert [d["source"] for d in body["documents"]] == ["uploads/ferry.md"]
    assert [(r["filename"], r["status"], r["code"]) for r in body["rejected"]] == [
        ("menu.txt", 422, "invalid_encoding"),
        ("photo.gif", 415, "unsupported_type"),
    ]
    assert "not valid UTF-8" in body["rejected"][0]["message"] and "photo.gif" in body["rejected"][1]["message"]
    job = wait_for_job(indexed.http, body["job_id"])
    assert (job["state"], job["files_total"], job["files_failed"], job["progress"]) == ("done", 1, 0, 1.0)
    assert job["current_file"] is None
    assert indexed.http.get("/v1/documents").json()["total"] == 6  # the rejected files are no documents
    assert indexed.http.delete(f"/v1/documents/{body['documents'][0]['document_id']}").status_code == 200

    clean = indexed.http.post("/v1/documents", files=files[:1])
    assert clean.json()["rejected"] == []
    wait_for_job(indexed.http, clean.json()["job_id"])
    indexed.http.delete(f"/v1/documents/{clean.json()['documents'][0]['document_id']}")


def test_an_upload_with_no_acceptable_file_is_a_4xx_naming_each(indexed):
    queued = indexed.services.queue.counts()["queued"]
    one = indexed.http.post("/v1/documents", files=[("files", ("menu.txt", b"caf\xe9"))])
    assert one.status_code == 422 and one.json()["error"]["code"] == "invalid_encoding"  # as before: its own error
    same = indexed.http.post(
        "/v1/documents",
        files=[("files", ("a.gif", b"GIF89a" + bytes(600))), ("files", ("b.bin", bytes(600)))],
    )
    assert same.status_code == 415 and same.json()["error"]["code"] == "unsupported_type"
    mixed = indexed.http.post(
        "/v1/documents",
        files=[("files", ("menu.txt", b"caf\xe9")), ("files", ("a.gif", b"GIF89a" + bytes(600)))],
    )
    error = mixed.json()["error"]
    assert mixed.status_code == 422 and error["code"] == "no_file_accepted"
    assert error["message"].startswith("none of the 2 files can be indexed: menu.txt is not valid UTF-8")
    assert "a.gif" in error["message"]
    assert indexed.services.queue.counts()["queued"] == queued
    assert indexed.http.get("/v1/documents").json()["total"] == 5


def test_uploading_a_file_again_replaces_its_chunks(indexed):
    first = indexed.http.post(
        "/v1/documents", files=[("files", ("runbook.md", b"# Runbook\n\nRestart the pod with kubectl."))]
    )
    doc_id = first.json()["documents"][0]["document_id"]
    wait_for_job(indexed.http, first.json()["job_id"])
    second_text = "# Runbook\n\n" + "\n\n".join(
        f"Step {i}: drain node {i} before the upgrade of the cluster." for i in range(40)
    )
    second = indexed.http.post("/v1/documents", files=[("files", ("runbook.md", second_text.encode()))])
    assert second.json()["documents"][0]["document_id"] == doc_id
    job = wait_for_job(indexed.http, second.json()["job_id"])
    record = indexed.http.get(f"/v1/documents/{doc_id}").json()
    assert record["chunks"] == job["chunks"] > 1 and chunks_in_store(indexed, doc_id) == record["chunks"]
    texts = [h.text for h in indexed.services.system.store.chunks(doc_id)]
    assert not any("kubectl" in t for t in texts)

    again = wait_for_job(
        indexed.http,
        indexed.http.post("/v1/documents", files=[("files", ("runbook.md", second_text.encode()))]).json()["job_id"],
    )
    assert again["files"][0]["status"] == "unchanged" and chunks_in_store(indexed, doc_id) == record["chunks"]
    indexed.http.delete(f"/v1/documents/{doc_id}")


def test_delete_removes_the_document_and_its_chunks(indexed):
    accepted = indexed.http.post(
        "/v1/documents", files=[("files", ("temp.txt", b"Temporary text about the staging cluster."))]
    ).json()
    doc_id = accepted["documents"][0]["document_id"]
    wait_for_job(indexed.http, accepted["job_id"])
    assert chunks_in_store(indexed, doc_id) == 1

    deleted = indexed.http.delete(f"/v1/documents/{doc_id}")
    assert deleted.status_code == 200 and deleted.json() == {
        "id": doc_id,
        "source": "uploads/temp.txt",
        "deleted": True,
    }
    assert chunks_in_store(indexed, doc_id) == 0
    missing = indexed.http.get(f"/v1/documents/{doc_id}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "document_not_found"
    again = indexed.http.delete(f"/v1/documents/{doc_id}")
    assert again.status_code == 404 and doc_id in again.json()["error"]["message"]


def test_a_queued_upload_cannot_be_deleted_until_its_job_ends(tmp_path, embedder):
    # No worker: the upload stays queued. A 404 here would let the job index it afterwards.
    with app_client(service_settings(tmp_path / "data", embedded_worker=False), embedder) as http:
        accepted = http.post("/v1/documents", files=[("files", ("later.md", b"# Later\n\nQueued text."))]).json()
        doc_id, job_id = accepted["documents"][0]["document_id"], accepted["job_id"]
        refused = http.delete(f"/v1/documents/{doc_id}")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "document_queued"
        assert job_id in refused.json()["error"]["message"]
        assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"


def test_unknown_job_and_route_are_json_404s(indexed):
    job = indexed.http.get("/v1/jobs/nope")
    assert job.status_code == 404 and job.json()["error"]["code"] == "job_not_found"
    route = indexed.http.get("/v2/nothing")
    assert route.status_code == 404 and route.json()["error"] == {
        "code": "not_found",
        "message": "no such path /v2/nothing; the API is described at /docs",
    }
    method = indexed.http.put("/v1/query")
    assert method.status_code == 405 and method.json()["error"]["code"] == "method_not_allowed"


def test_the_ui_and_the_upload_docs_list_the_registered_formats(indexed):
    page = indexed.http.get("/").text
    assert f'accept="{accept_attribute()}"' in page and "{{" not in page
    assert f"<small>{supported_names()}</small>" in page
    upload = indexed.http.get("/openapi.json").json()["components"]["schemas"]
    described = json.dumps(upload)
    assert f"One or more files: {supported_names()}." in described
