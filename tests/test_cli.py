"""The `ragtune` command as a user runs it: real processes, exit codes, JSON output."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_environment
from ragtune.config import Settings
from ragtune.store.milvus import MilvusStore


def run(args: list[str], data_dir: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    env = cli_environment(data_dir, **kwargs.pop("env", {}))
    return subprocess.run(
        [sys.executable, "-m", "ragtune.cli", *args], capture_output=True, text=True, env=env, timeout=300, **kwargs
    )


def test_ingest_ask_json_and_documents(tmp_path, sample_dir):
    data = tmp_path / "data"
    result = run(["ingest", str(sample_dir), "--tag", "samples"], data)
    assert result.returncode == 0, result.stderr
    assert "5 indexed" in result.stdout and "Traceback" not in result.stderr

    result = run(["ask", "Which Milvus URI selects a server?", "--json"], data)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert "19530" in payload["answer"] and payload["abstained"] is False
    citation = payload["citations"][0]
    assert (
        citation["number"] == 1
        and citation["chunk_id"]
        and Path(citation["source"]).name in {"configuration.txt", "architecture.html"}
    )
    assert set(payload["timings_ms"]) == {"retrieve", "generate", "total"}

    text = run(["ask", "What does the operations guide say about backups?"], data)
    assert (
        text.returncode == 0
        and "[1]" in text.stdout
        and "Sources:" in text.stdout
        and "operations-guide.pdf, page 1" in text.stdout
    )

    listing = json.loads(run(["documents", "--json"], data).stdout)
    assert listing["total"] == 5 and {d["status"] for d in listing["documents"]} == {"indexed"}


def test_follow_ups_in_a_stored_conversation_and_in_chat(tmp_path, sample_dir):
    data = tmp_path / "data"
    assert run(["ingest", str(sample_dir)], data).returncode == 0
    first = run(["ask", "What does the operations guide say about backups?", "--conversation", "ops"], data)
    assert first.returncode == 0 and "operations-guide.pdf" in first.stdout, first.stderr
    follow = run(["ask", "What does it say about alerts?", "--conversation", "ops", "--json"], data)
    payload = json.loads(follow.stdout)
    assert payload["conversation_id"] == "ops" and "operations guide" in payload["rewritten_question"]
    assert Path(payload["citations"][0]["source"]).name == "operations-guide.pdf"
    with sqlite3.connect(data / "catalog.db") as db:
        stored = db.execute(
            "SELECT question FROM conversation_turns WHERE conversation_id='ops' ORDER BY seq"
        ).fetchall()
    assert [q for (q,) in stored] == [
        "What does the operations guide say about backups?",
        "What does it say about alerts?",
    ]

    lines = "What does the operations guide say about backups?\nWhat does it say about alerts?\n/new\nWhat does it say about alerts?\n"
    chat = run(["chat"], data, input=lines)
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr.count("(searched: ") == 1 and "operations guide say about alerts?)" in chat.stderr
    assert "(new conversation)" in chat.stderr and chat.stdout.count("Sources:") >= 2
    assert chat.stdout.rstrip().endswith("I could not find the answer in the indexed documents.")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ask", "x", "--conversation", "no spaces"], "--conversation must be"),
        (["ask", "x", "--multi-query"], "multi_query needs an LLM backend"),
        (["ask", ""], "the question is empty"),
        (["ask", "   "], "the question is empty"),
        (["ask", "x", "--mode", "fuzzy"], "--mode must be one of"),
        (["ingest", "/no/such/path"], "no such file or directory"),
        (["ingest", ".", "--shard", "4/4"], "0 <= i < N"),
        (["documents", "--status", "weird"], "--status must be"),
        (["eval", "retrieval", "/no/such/dir"], "not a directory"),
    ],
)
def test_usage_errors_exit_2_without_traceback(tmp_path, args, message):
    result = run(args, tmp_path / "data")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_too_long_question_is_a_usage_error(tmp_path, sample_dir):
    data = tmp_path / "data"
    run(["ingest", str(sample_dir / "configuration.txt")], data)
    result = run(["ask", "why " * 2000], data)
    assert result.returncode == 2 and "over the limit of 4000" in result.stderr


def test_bad_settings_exit_2(tmp_path):
    env_result = subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "ask", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"RAGTUNE_DATA_DIR": str(tmp_path), "RAGTUNE_CHUNK_OVERLAP": "5000"},
    )
    assert env_result.returncode == 2 and "chunk_overlap must be smaller than chunk_size" in env_result.stderr


def test_hostile_inputs_are_recorded_as_failed(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("Ragtune indexes text files.")
    (docs / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (docs / "bad.md").write_bytes(b"\xc3\x28 invalid utf-8")
    (docs / "empty.txt").write_bytes(b"")
    (docs / "fake.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage")
    data = tmp_path / "data"
    result = run(["ingest", str(docs)], data)
    assert result.returncode == 0 and "1 indexed" in result.stdout and "4 failed" in result.stdout
    assert "Traceback" not in result.stderr
    failed = json.loads(run(["documents", "--status", "failed", "--json"], data).stdout)["documents"]
    assert {Path(d["source"]).name for d in failed} == {"binary.txt", "bad.md", "empty.txt", "fake.pdf"}
    assert all(d["error"] for d in failed)
    only_bad = run(["ingest", str(docs / "binary.txt")], data)
    assert only_bad.returncode == 1 and "binary file" in only_bad.stderr


def test_store_held_by_another_process_is_explained(tmp_path, sample_dir):
    settings = Settings(data_dir=tmp_path / "data")
    holder = MilvusStore(settings.resolved_milvus_uri(), settings.store.collection, 384)
    try:
        result = run(["ask", "anything"], settings.data_dir)
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"in use by pid {os.getpid()}" in result.stderr and "Traceback" not in result.stderr


def _indexed_count(catalog: Path) -> int:
    try:
        with sqlite3.connect(catalog, timeout=1) as db:
            return db.execute("select count(*) from documents where status = 'indexed'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_killed_ingest_resumes_without_duplicates(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraph = "The {i}th report describes river {i} and its tributaries in detail. " * 12
    for i in range(120):
        (docs / f"report{i:03d}.txt").write_text("\n\n".join(paragraph.format(i=i) for _ in range(4)))
    data = tmp_path / "data"
    env = cli_environment(data, RAGTUNE_EMBEDDING_BATCH_SIZE="16", RAGTUNE_INGEST_BATCH_CHUNKS="32")
    process = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", "ingest", str(docs)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while _indexed_count(data / "catalog.db") == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "ingest finished before it could be interrupted; make the corpus larger"
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: Milvus Lite's server process too
    process.wait()
    interrupted = _indexed_count(data / "catalog.db")
    assert 0 < interrupted < 120

    result = run(["ingest", str(docs), "--json"], data)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["unchanged"]) >= interrupted and report["catalog"]["indexed"] == 120

    settings = Settings(data_dir=data)
    store = MilvusStore(settings.resolved_milvus_uri(), settings.store.collection, 384)
    try:
        assert store.count() == report["catalog"]["chunks"]
        with sqlite3.connect(data / "catalog.db") as db:
            expected = dict(db.execute("select id, chunks from documents"))
        for doc_id, chunks in expected.items():
            ids = [hit.id for hit in store.chunks(doc_id)]
            assert len(ids) == len(set(ids)) == chunks
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_ingest_skips_fifos_and_links_out_of_the_folder(tmp_path):
    docs, outside = tmp_path / "docs", tmp_path / "outside"
    docs.mkdir()
    outside.mkdir()
    (docs / "good.txt").write_text("Ragtune indexes text files.")
    os.mkfifo(docs / "pipe.txt")  # reading it would block forever
    (outside / "secret.txt").write_text("The secret word is swordfish.")
    (docs / "secret.txt").symlink_to(outside / "secret.txt")
    (docs / "loop").symlink_to(docs, target_is_directory=True)
    data = tmp_path / "data"
    result = run(["ingest", str(docs), "--json"], data, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [Path(p).name for p in report["indexed"]] == ["good.txt"]
    assert {Path(s).name for s, _ in report["failed"]} == {"pipe.txt", "secret.txt"}
    followed = run(["ingest", str(docs), "--follow-links", "--json"], data)
    assert followed.returncode == 0, followed.stderr
    assert [Path(p).name for p in json.loads(followed.stdout)["indexed"]] == ["secret.txt"]


def test_unreachable_milvus_server_is_explained_quickly(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {
        "RAGTUNE_DATA_DIR": str(tmp_path / "data"),
        "RAGTUNE_MILVUS_URI": f"http://127.0.0.1:{port}",
        "RAGTUNE_MILVUS_TIMEOUT_SECONDS": "1",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "ask", "anything"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "RAGTUNE_MILVUS_URI" in result.stderr, result.stderr
    assert time.monotonic() - started < 40
