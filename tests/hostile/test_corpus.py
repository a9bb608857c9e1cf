"""The hostile corpus through both ways in: ``ragtune ingest`` of a folder, and
``POST /v1/documents``. Every file ends with a clear status and message, nothing answers
5xx, and the index grows by exactly the good files' chunks (a clean run's count)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_environment
from ragtune.api.uploads import safe_filename
from ragtune.config import Settings
from ragtune.ingest.chunking import chunk_document
from ragtune.ingest.loaders import load_bytes
from tests.api.support import served, service_settings, wait_for_job
from tests.hostile.corpus import Hostile, corpus, good_text

pytestmark = pytest.mark.slow

BASELINE = ("baseline.md", good_text("baseline").encode())


def clean_chunks(files: list[Hostile]) -> int:
    """The chunks a clean run makes of the good files alone."""
    size, overlap = Settings().ingest.chunk_size, Settings().ingest.chunk_overlap
    return sum(len(chunk_document(load_bytes(f.data, f.name), size, overlap)) for f in files)


def good(on_disk: bool) -> list[Hostile]:
    return [f for f in corpus() if f.expect == "indexed" and (f.on_disk or not on_disk)]


def bad(on_disk: bool) -> list[Hostile]:
    return [f for f in corpus() if f.expect == "refused" and (f.on_disk or not on_disk)]


def test_corpus_covers_the_attacks():
    names = [f.name for f in corpus()]
    assert len(names) >= 30 and len(set(names)) == len(names)
    sizes = {f.name: len(f.data) for f in corpus()}
    assert sizes["deep.html"] >= 10_000_000 and sizes["line.txt"] >= 40 * 1024 * 1024
    assert sizes["brackets.md"] >= 1_000_000 and sizes["quotes.md"] >= 1_000_000


# --- the CLI ---------------------------------------------------------------------------------


def ragtune(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ragtune.cli", *args],
        capture_output=True,
        text=True,
        env=cli_environment(data_dir),
        timeout=600,
    )


def index_counts(data_dir: Path) -> tuple[int, int]:
    """(chunks per the catalog, rows in the vector store), each read by a process of its own,
    as the CLI's next run must be able to open the Milvus Lite file the moment it exits."""
    listing = json.loads(ragtune(["documents", "--json", "--limit", "500"], data_dir).stdout)
    catalog = sum(d["chunks"] for d in listing["documents"] if d["status"] == "indexed")
    count = (
        "from ragtune.config import Settings; from ragtune.store.milvus import MilvusStore; "
        "s = Settings(); store = MilvusStore(s.resolved_milvus_uri(), s.store.collection, 384); "
        "print(store.count()); store.close()"
    )
    rows = subprocess.run(
        [sys.executable, "-c", count],
        capture_output=True,
        text=True,
        env=os.environ | {"RAGTUNE_DATA_DIR": str(data_dir)},
        check=True,
        timeout=120,
    )
    return catalog, int(rows.stdout.split()[-1])


def test_hostile_folder_through_the_cli(tmp_path):
    data_dir, docs = tmp_path / "data", tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / BASELINE[0]).write_bytes(BASELINE[1])
    assert ragtune(["ingest", str(tmp_path / "base")], data_dir).returncode == 0
    before = index_counts(data_dir)
    assert before[0] == before[1] > 0

    for f in corpus():
        if f.on_disk:
            (docs / f.name).write_bytes(f.data)
    # What only a disk has: a FIFO (reading one blocks forever), a link out of the folder,
    # a hidden file, and a folder named like a document.
    os.mkfifo(docs / "pipe.txt")
    (docs / "passwd.txt").symlink_to("/etc/passwd")
    (docs / ".hidden.md").write_bytes(good_text("hidden").encode())
    (docs / "folder.md").mkdir()

    result = ragtune(["ingest", str(docs), "--json"], data_dir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    indexed = {Path(p).name for p in report["indexed"]}
    failed = {Path(p).name: message for p, message in report["failed"]}
    passed_over = {Path(p).name for p in report["passed_over"]}

    assert indexed == {f.name for f in good(on_disk=True)}
    for f in bad(on_disk=True):
        message = failed.get(f.name) or ("passed over" if f.name in passed_over else "")
        assert message, f"{f.name} ({f.attack}) got no status"
        if f.name in failed:
            assert f.name in message and f.mentions in message, (f.name, message)
    assert passed_over == {"notes.exe", "README"}
    assert "a FIFO" in failed["pipe.txt"] and "--follow-links" in failed["passwd.txt"]
    assert ".hidden.md" not in indexed | set(failed) and "folder.md" not in indexed | set(failed)

    after = index_counts(data_dir)
    assert after[0] == after[1] == before[0] + clean_chunks(good(on_disk=True))

    again = json.loads(ragtune(["ingest", str(docs), "--json"], data_dir).stdout)
    assert again["indexed"] == [] and len(again["unchanged"]) == len(indexed)
    assert index_counts(data_dir) == after


# --- the API ---------------------------------------------------------------------------------


BOUNDARY = "hostile-corpus-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def raw_multipart(files: list[Hostile]) -> bytes:
    """Files as a hostile client sends them: the names' bytes as they are (httpx would
    percent-encode a NUL), and a declared type that is a lie for nearly every file."""
    body = b""
    for f in files:
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
        body += (head + "Content-Type: application/pdf\r\n\r\n").encode() + f.data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def test_hostile_uploads_through_the_api(tmp_path, onnx_embedder):
    settings = service_settings(tmp_path / "data", max_upload_bytes=32 * 1024 * 1024, max_files_per_request=64)
    with served(settings, onnx_embedder) as service:
        http, system = service.http, service.services.system

        def counts() -> tuple[int, int]:
            return system.catalog.counts()["chunks"], system.store.count()

        first = http.post("/v1/documents", files=[("files", BASELINE)])
        assert wait_for_job(http, first.json()["job_id"])["files_failed"] == 0
        before = counts()
        assert before[0] == before[1] > 0

        def post(files: list[Hostile]):
            response = http.post("/v1/documents", content=raw_multipart(files), headers={"content-type": MULTIPART})
            assert response.status_code < 500, response.text
            return response

        # The whole corpus in one batch: the bombs must not keep the good files beside them
        # from being indexed. A name too long for a part header fails the whole body, so alone.
        fits = [f for f in corpus() if len(f.name.encode()) < 4000]
        outcomes: dict[str, tuple[str, str]] = {}  # the name the server gives it -> (status, message)
        accepted = post(fits).json()
        for rejected in accepted["rejected"]:
            outcomes[rejected["filename"]] = (f"{rejected['status']} {rejected['code']}", rejected["message"])
        for file in wait_for_job(http, accepted["job_id"], timeout=300)["files"]:
            outcomes[file["filename"]] = (file["status"], file["error"])
        for f in corpus():
            if f not in fits:
                error = post([f]).json()["error"]
                outcomes[safe_filename(f.name)] = (f"400 {error['code']}", error["message"])

        for f in corpus():
            status, message = outcomes[safe_filename(f.name)]
            if f.expect == "indexed":
                assert status == "indexed", (f.name, f.attack, status, message)
            else:
                assert status not in {"indexed", "unchanged", "queued"}, (f.name, status)
                named = safe_filename(f.name) in message or status == "400 bad_request"  # the body went unread
                assert named and f.mentions in message, (f.name, message)
        assert outcomes["line.txt"][0] == "413 file_too_large"
        assert outcomes["notes.exe"][0] == outcomes["README"][0] == "415 unsupported_type"

        # Names reduced to their last printable component, never a path.
        sources = {d["source"] for d in http.get("/v1/documents", params={"limit": 500}).json()["documents"]}
        assert {"uploads/traversal.txt", "uploads/absolute.txt", "uploads/windows.md", "uploads/nulbyte.txt"} <= sources
        assert all(s.startswith("uploads/") and ".." not in s and "\0" not in s for s in sources)
        after = counts()
        assert after[0] == after[1] == before[0] + clean_chunks(good(on_disk=False))

        # Duplicates: twice in one request is refused whole; again later replaces nothing.
        plain = next(f for f in corpus() if f.name == "plain.txt")
        twice = http.post("/v1/documents", files=[("files", (plain.name, plain.data))] * 2)
        assert twice.status_code == 422 and twice.json()["error"]["code"] == "duplicate_filename"
        again = http.post("/v1/documents", files=[("files", (plain.name, plain.data))])
        [file] = wait_for_job(http, again.json()["job_id"])["files"]
        assert file["status"] == "unchanged" and counts() == after
