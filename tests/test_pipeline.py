"""End to end through the library API: ingest the sample documents, answer, update, delete."""

from pathlib import Path

import pytest

from conftest import THREADS
from ragtune.ingest.indexer import discover, in_shard
from ragtune.store.catalog import FAILED, INDEXED


def test_samples_index_and_answer_with_citations(system, sample_dir):
    report = system.ingestor.ingest_paths([sample_dir], progress=False)
    assert len(report.indexed) == 5 and not report.failed
    answer = system.rag.ask("How many characters do neighbouring chunks share by default?")
    assert "200" in answer.text and not answer.abstained
    assert answer.citations and answer.citations[0].number == 1
    assert Path(answer.citations[0].source).parent == sample_dir.resolve()
    assert set(answer.timings_ms) == {"retrieve", "generate", "total"}

    pdf_answer = system.rag.ask("When should I alert on retrieval latency?")
    assert "500 milliseconds" in pdf_answer.text
    assert pdf_answer.citations[0].page == 2 and pdf_answer.citations[0].source.endswith("operations-guide.pdf")

    docx_answer = system.rag.ask("How many gradient accumulation steps for a global batch of 128 with micro-batch 4?")
    assert "32 steps" in docx_answer.text
    assert docx_answer.citations[0].heading == "Global batch size"


def test_off_topic_question_abstains(system, sample_dir):
    system.ingestor.ingest_paths([sample_dir], progress=False)
    answer = system.rag.ask("What is the boiling point of liquid nitrogen?")
    assert answer.abstained and answer.citations == []


def test_reingest_is_idempotent_and_tracks_changes(system, sample_dir):
    first = system.ingestor.ingest_paths([sample_dir], progress=False)
    chunks_before = system.store.count()
    again = system.ingestor.ingest_paths([sample_dir], progress=False)
    assert again.indexed == [] and len(again.unchanged) == len(first.indexed)
    assert system.store.count() == chunks_before

    notes = sample_dir / "configuration.txt"
    notes.write_text("RAGTUNE_TOP_K now defaults to seven chunks per answer.\n", encoding="utf-8")
    changed = system.ingestor.ingest_paths([sample_dir], progress=False)
    assert changed.indexed == [str(notes.resolve())]
    record = system.catalog.find(str(notes.resolve()))
    assert record.chunks == 1 and len(system.store.chunks(record.id)) == 1
    assert "seven" in system.rag.ask("What is the default of RAGTUNE_TOP_K now?").text

    notes.unlink()
    removed = system.ingestor.ingest_paths([sample_dir], progress=False)
    assert removed.removed == [str(notes.resolve())]
    assert system.catalog.get(record.id) is None and system.store.chunks(record.id) == []

    guide = str((sample_dir / "getting-started.md").resolve())
    doc_id = system.catalog.find(guide).id
    assert system.ingestor.delete(guide)
    assert system.store.chunks(doc_id) == [] and system.catalog.find(guide) is None
    assert not system.ingestor.delete(guide)


def test_bad_files_fail_alone_and_keep_the_index_intact(system, sample_dir):
    system.ingestor.ingest_paths([sample_dir], progress=False)
    before = (system.store.count(), system.catalog.counts()[INDEXED])
    (sample_dir / "garbage.txt").write_bytes(bytes(range(256)) * 4)
    (sample_dir / "latin1.md").write_bytes(b"caf\xe9")
    (sample_dir / "empty.html").write_bytes(b"")
    # A previously good file turns bad: its indexed version must survive.
    guide = sample_dir / "getting-started.md"
    guide.write_bytes(b"\xff\xfe broken")
    report = system.ingestor.ingest_paths([sample_dir], progress=False)
    assert len(report.failed) == 4 and report.indexed == []
    assert (system.store.count(), system.catalog.counts()[INDEXED]) == (before[0], before[1] - 1)
    failed = {Path(r.source).name: r.error for r in system.catalog.list(status=FAILED)[0]}
    assert "binary file" in failed["garbage.txt"] and "not valid UTF-8" in failed["latin1.md"]
    assert "is empty" in failed["empty.html"] and "still searchable" in failed["getting-started.md"]
    assert "make demo" in system.rag.ask("How do I install ragtune?").text


def test_thousands_of_files_are_discovered_lazily_and_sharded(tmp_path):
    root = tmp_path / "many"
    for i in range(2000):
        folder = root / f"d{i % 20}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.txt").write_text(f"file {i}")
    (root / ".git").mkdir()
    (root / ".git" / "x.txt").write_text("hidden")
    (root / "image.gif").write_bytes(b"GIF89a")
    files = list(discover([root]))
    assert len(files) == 2000
    shards = [set(discover([root], (i, 4))) for i in range(4)]
    assert set().union(*shards) == set(files)
    assert sum(len(s) for s in shards) == 2000 and all(300 < len(s) < 700 for s in shards)
    assert in_shard("d1/f1.txt", (0, 1))


@pytest.mark.slow
def test_a_folder_of_a_thousand_files_indexes_completely(system, tmp_path):
    root = tmp_path / "many"
    for i in range(1000):
        folder = root / f"team{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"note{i}.txt").write_text(f"Note {i}: the on-call rota for week {i} lists engineer number {i * 7}.")
    report = system.ingestor.ingest_paths([root], progress=False)
    assert len(report.indexed) == 1000 and report.chunks == 1000 and not report.failed
    assert system.catalog.counts()[INDEXED] == 1000 and system.store.count() == 1000
    hits = system.retriever.run("on-call rota for week 437", top_k=1, mode="bm25")
    assert hits[0].source.endswith("note437.txt")


def test_a_context_window_reads_neighbouring_chunks_and_cites_the_one_quoted(tmp_path, embedder):
    from ragtune.config import Settings
    from ragtune.system import build

    # Short chunks, so each fact sits in its own chunk and the neighbours hold the others.
    facts = [
        f"The {name} reactor was commissioned in {1950 + n} near the {name} river."
        for n, name in enumerate(["Amber", "Birch", "Cedar", "Dunlin", "Egret", "Fennel", "Garnet", "Heron"])
    ]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "reactors.txt").write_text(" ".join(facts))
    windows = {}
    for window in (0, 1):
        settings = Settings(data_dir=tmp_path / "data", torch_threads=THREADS, chunk_size=120, chunk_overlap=40)
        settings = settings.model_copy(
            update={"retrieval": settings.retrieval.model_copy(update={"context_window": window})}
        )
        with build(settings, embedder=embedder) as system:
            system.ingestor.ingest_paths([docs], progress=False)
            answer = system.rag.ask("When was the Egret reactor commissioned?", top_k=1)
            stored = {h.id: h.text for h in system.store.chunks(answer.hits[0].doc_id)}
        windows[window] = answer
        assert "1954" in answer.text
        for citation in answer.citations:  # a citation quotes text of the very chunk it names
            assert citation.snippet in stored[citation.chunk_id]
    assert len(windows[0].hits) == 1
    ids = [h.id for h in windows[1].hits]
    assert len(ids) == 3 and ids == sorted(ids) and windows[0].hits[0].id == ids[1]
