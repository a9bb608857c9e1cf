"""Slides and sheets uploaded over HTTP are indexed like any document; a damaged workbook and
an image bomb are refused at upload, naming the file."""

from __future__ import annotations

from builders import png_declaring, pptx_bytes, xlsx_bytes
from ragtune.ingest.formats import CSV, PPTX
from tests.api.support import wait_for_job


def test_pptx_and_csv_uploads_are_indexed_and_bad_ones_refused(indexed):
    deck = pptx_bytes([("Harbour", "The harbour office opens at eight.", "Mention the ferry.")])
    rows = "\n".join(["berth,vessel"] + [f"{i},Vessel {i}" for i in range(150)])
    files = [
        ("files", ("harbour.pptx", deck)),
        ("files", ("berths.csv", rows.encode())),
        ("files", ("ledger.xlsx", xlsx_bytes({"Ledger": [["a", "b"]]})[:-200])),
        ("files", ("bomb.png", png_declaring(100_000, 100_000))),
    ]
    accepted = indexed.http.post("/v1/documents", files=files)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert [(d["filename"], d["content_type"]) for d in body["documents"]] == [
        ("harbour.pptx", PPTX.content_type),
        ("berths.csv", CSV.content_type),
    ]
    assert [(r["filename"], r["status"], r["code"]) for r in body["rejected"]] == [
        ("ledger.xlsx", 415, "unsupported_type"),
        ("bomb.png", 422, "image_limit"),
    ]
    assert "damaged zip archive" in body["rejected"][0]["message"]
    job = wait_for_job(indexed.http, body["job_id"])
    assert (job["state"], job["files_total"], job["files_failed"]) == ("done", 2, 0), job
    try:
        for uploaded in body["documents"]:
            document = indexed.http.get(f"/v1/documents/{uploaded['document_id']}").json()
            assert document["status"] == "indexed" and document["chunks"] >= 1, document
        berths = indexed.http.get(f"/v1/documents/{body['documents'][1]['document_id']}").json()
        assert berths["chunks"] > 1  # 150 rows: several chunks, each led by the header
        answer = indexed.http.post("/v1/query", json={"question": "When does the harbour office open?"}).json()
        assert answer["citations"][0]["source"] == "uploads/harbour.pptx"
    finally:
        for uploaded in body["documents"]:
            assert indexed.http.delete(f"/v1/documents/{uploaded['document_id']}").status_code == 200
