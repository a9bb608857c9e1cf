"""Hostile inputs: each is refused with a clear 4xx JSON error and the index stays as it was."""

from __future__ import annotations

import io
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from builders import docx_bytes, encrypted_pdf_bytes, pdf_bytes, zip_bomb_docx
from tests.api.support import sample_files, served, service_settings, wait_for_job, wait_until

MAX_UPLOAD = 64 * 1024
MAX_UNCOMPRESSED = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory, embedder):
    settings = service_settings(
        tmp_path_factory.mktemp("hostile") / "data",
        max_upload_bytes=MAX_UPLOAD,
        max_files_per_request=3,
        max_uncompressed_bytes=MAX_UNCOMPRESSED,
    )
    with served(settings, embedder) as service:
        for batch in (sample_files()[:3], sample_files()[3:]):
            job = wait_for_job(service.http, service.http.post("/v1/documents", files=batch).json()["job_id"])
            assert job["files_failed"] == 0, job
        yield service


def snapshot(service) -> tuple[int, int, int]:
    """(indexed documents, their chunks per the catalog, chunks in the store)."""
    counts = service.services.system.catalog.counts()
    return counts["indexed"], counts["chunks"], service.services.system.store.count()


@pytest.fixture
def intact(service):
    before = snapshot(service)
    assert before[0] == 5 and before[1] == before[2] > 0
    yield
    assert snapshot(service) == before
    assert service.http.get("/v1/documents").json()["total"] == 5


def upload(service, *files: tuple[str, bytes]):
    return service.http.post("/v1/documents", files=[("files", f) for f in files])


def other_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "not a word document")
    return out.getvalue()


@pytest.mark.parametrize(
    ("filename", "data", "status", "code", "message"),
    [
        ("big.txt", b"word " * (MAX_UPLOAD // 5 + 1), 413, "file_too_large", "RAGTUNE_MAX_UPLOAD_BYTES"),
        ("photo.gif", b"GIF89a" + bytes(range(256)) * 4, 415, "unsupported_type", "is named .gif"),
        ("notes.txt", b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 600, 415, "unsupported_type", "binary file"),
        ("report.pdf", b"this is plain text named like a PDF", 415, "unsupported_type", "does not start with %PDF-"),
        ("archive.docx", other_zip(), 415, "unsupported_type", "not a Word document"),
        ("bomb.docx", zip_bomb_docx(50 * 1024 * 1024), 413, "decompression_limit", "RAGTUNE_MAX_UNCOMPRESSED_BYTES"),
        (
            "broken.pdf",
            b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\ngarbage",
            422,
            "damaged_pdf",
            "damaged or truncated PDF",
        ),
        ("truncated.pdf", pdf_bytes(["Half a document."])[:300], 422, "damaged_pdf", "damaged or truncated PDF"),
        (
            "secret.pdf",
            encrypted_pdf_bytes("The launch code is 1234."),
            422,
            "encrypted_pdf",
            "upload a decrypted copy",
        ),
        (
            "menu.txt",
            "café au lait".encode("latin-1"),
            422,
            "invalid_encoding",
            "not valid UTF-8 (byte 0xe9 at offset 3)",
        ),
        ("empty.md", b"  \n\n ", 422, "empty_file", "is empty"),
    ],
)
def test_bad_upload_is_refused_clearly(service, intact, filename, data, status, code, message):
    response = upload(service, (filename, data))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]
    assert Path(filename).name.split(".")[0] in error["message"]  # names the file


def test_zip_bomb_fits_the_upload_limit(service):
    # The bomb is refused for what it would inflate to, not for its (small) size.
    assert len(zip_bomb_docx(50 * 1024 * 1024)) < MAX_UPLOAD


def test_one_bad_file_is_refused_alone(service, intact):
    response = upload(service, ("good.md", b"# Fine\n\nA perfectly good file."), ("menu.txt", b"caf\xe9"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert [d["filename"] for d in body["documents"]] == ["good.md"]
    [rejected] = body["rejected"]
    assert (rejected["filename"], rejected["status"], rejected["code"]) == ("menu.txt", 422, "invalid_encoding")
    assert "menu.txt" in rejected["message"]
    job = wait_for_job(service.http, body["job_id"])
    assert (job["files_total"], job["files_failed"]) == (1, 0)
    assert service.http.delete(f"/v1/documents/{body['documents'][0]['document_id']}").status_code == 200


def test_a_request_whose_every_file_is_bad_queues_nothing(service, intact):
    response = upload(service, ("menu.txt", b"caf\xe9"), ("empty.md", b"  \n"))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "no_file_accepted" and "menu.txt" in error["message"] and "empty.md" in error["message"]
    assert service.services.queue.counts()["queued"] == 0


def test_too_many_files_and_oversize_body(service, intact):
    files = [(f"n{i}.md", b"# note") for i in range(4)]
    many = upload(service, *files)
    assert (
        many.status_code == 413
        and many.json()["error"]["code"] == "too_many_files"
        and "RAGTUNE_MAX_FILES_PER_REQUEST" in many.json()["error"]["message"]
    )
    body = upload(service, ("huge.txt", b"x" * (3 * MAX_UPLOAD + 2 * 1024 * 1024)))
    assert body.status_code == 413 and body.json()["error"]["code"] == "payload_too_large"


def test_duplicate_names_in_one_upload(service, intact):
    response = upload(service, ("a/notes.md", b"# one"), ("b/notes.md", b"# two"))
    assert response.status_code == 422 and "uploads/notes.md" in response.json()["error"]["message"]


def test_path_traversal_filename_is_only_a_name(service):
    target = Path("/tmp/ragtune-traversal-probe.md")
    target.unlink(missing_ok=True)
    before = snapshot(service)
    response = upload(
        service,
        ("../../../../../tmp/ragtune-traversal-probe.md", b"# Probe\n\nTraversal probe text."),
        ("..\\..\\windows\\evil.md", b"# Evil\n\nBackslash traversal."),
    )
    assert response.status_code == 202
    sources = [d["source"] for d in response.json()["documents"]]
    assert sources == ["uploads/ragtune-traversal-probe.md", "uploads/evil.md"]
    wait_for_job(service.http, response.json()["job_id"])
    assert not target.exists()
    data_dir = service.services.settings.data_dir
    assert not any(p.name.endswith(("probe.md", "evil.md")) for p in data_dir.parent.rglob("*"))
    for doc in response.json()["documents"]:
        assert service.http.delete(f"/v1/documents/{doc['document_id']}").status_code == 200
    assert snapshot(service) == before


def test_huge_question_and_unknown_fields(service, intact):
    huge = service.http.post("/v1/query", json={"question": "why " * 25_600})  # 100 KB
    assert huge.status_code == 422
    assert huge.json()["error"] == {
        "code": "invalid_question",
        "message": "the question is 102399 characters, over the limit of 4000 (RAGTUNE_MAX_QUESTION_CHARS)",
    }
    unknown = service.http.post("/v1/query", json={"question": "hi", "temperature": 0.1})
    assert (
        unknown.status_code == 422
        and "temperature: Extra inputs are not permitted" in unknown.json()["error"]["message"]
    )
    not_utf8 = service.http.post(
        "/v1/query", content=b'{"question": "caf\xe9"}', headers={"Content-Type": "application/json"}
    )
    assert not_utf8.status_code == 400 and not_utf8.json()["error"] == {
        "code": "invalid_encoding",
        "message": "the request body is not valid UTF-8 (byte 0xe9 at offset 17); send UTF-8 JSON",
    }


def test_deletes_during_queries(service):
    before = snapshot(service)
    throwaway = [
        (f"scratch-{i}.md", f"# Scratch {i}\n\nScratch note {i} about hybrid retrieval and BM25.".encode())
        for i in range(3)
    ]
    accepted = upload(service, *throwaway).json()
    wait_for_job(service.http, accepted["job_id"])
    ids = [d["document_id"] for d in accepted["documents"]]
    stop = threading.Event()
    answered: list[int] = []

    def ask_repeatedly() -> None:
        while not stop.is_set() and len(answered) < 300:
            answered.append(
                service.http.post(
                    "/v1/query", json={"question": "What does the scratch note say about BM25?"}
                ).status_code
            )

    with ThreadPoolExecutor(5) as pool:
        askers = [pool.submit(ask_repeatedly) for _ in range(3)]
        wait_until(lambda: len(answered) >= 3, 60, "queries to start")
        # Each document deleted twice at once: one 200, one 404 (or both 200 if they interleave
        # before either removed the catalog row); never a 5xx.
        deletes = list(pool.map(lambda i: service.http.delete(f"/v1/documents/{i}").status_code, ids + ids))
        during = len(answered)
        wait_until(lambda: len(answered) >= during + 3, 60, "queries after the deletes")
        stop.set()
        for asker in askers:
            asker.result()
    statuses = answered
    assert set(deletes) <= {200, 404} and deletes.count(200) >= len(ids)
    assert statuses and set(statuses) == {200}
    assert snapshot(service) == before
    assert all(service.http.get(f"/v1/documents/{i}").status_code == 404 for i in ids)


def test_a_valid_docx_still_indexes_after_all_that(service):
    response = upload(
        service, ("fine.docx", docx_bytes([("Heading 1", "Rotation"), ("Normal", "Rotate keys every 90 days.")]))
    )
    job = wait_for_job(service.http, response.json()["job_id"])
    assert job["files"][0]["status"] == "indexed"
    answer = service.http.post("/v1/query", json={"question": "How often should keys be rotated?"}).json()
    assert "90 days" in answer["answer"]
    service.http.delete(f"/v1/documents/{job['files'][0]['document_id']}")
