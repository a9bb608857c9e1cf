"""`ragtune reindex` (`ragtune.ingest.reembed.reindex`): a shadow collection filled beside the live
one and one switch, resumable, reconciled with what ingestion did meanwhile, any dimension."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from ragtune.config import Settings
from ragtune.embed import Embedder
from ragtune.ingest import reembed as reembed_module
from ragtune.ingest.reembed import EmbedderMismatchError, reembed, reindex
from ragtune.store.base import StoreError
from ragtune.store.catalog import PENDING, EmbedderRecord
from ragtune.store.reindexing import Reindexing
from ragtune.system import System, build
from ragtune.types import LoadedDocument, Section

TOPICS = ["volcanoes", "glaciers", "rivers", "deserts", "forests", "oceans", "caves", "islands", "canyons", "lakes"]
QUERY = "Where does the lava of volcanoes come from?"


class Stop(RuntimeError):
    """A crash injected into a run."""


class HashEmbedder:
    """A stand-in for a new model of any dimension: words hashed into buckets (no model to load).
    `on_embed(call)` runs before each embedding call (1, 2, …), to stop a run or act mid-run."""

    backend = "torch"

    def __init__(self, name: str, dimension: int, on_embed: Callable[[int], None] | None = None) -> None:
        self.name, self.dimension, self.on_embed = name, dimension, on_embed
        self.calls = 0
        self.texts: list[str] = []

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        if self.on_embed is not None:
            self.on_embed(self.calls)
        self.texts.extend(texts)
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)

    def _vector(self, text: str) -> np.ndarray:
        vector = np.full(self.dimension, 1e-3, dtype=np.float32)  # never all zero
        for word in re.findall(r"\w+", text.lower()):
            vector[zlib.crc32(word.encode()) % self.dimension] += 1.0
        return vector / np.linalg.norm(vector)


def _doc(i: int, extra: str = "") -> LoadedDocument:
    topic = TOPICS[i % len(TOPICS)]
    text = f"Document {i} is about {topic}. The {topic} of the world are studied by many people. {extra}"
    return LoadedDocument(f"doc-{i}.md", "text/markdown", f"Doc {i}", [Section(text)])


@contextmanager
def _system(settings: Settings, embedder: Embedder, check_vectors: bool = True) -> Iterator[System]:
    with build(settings, embedder=embedder, generator=False, check_vectors=check_vectors) as system:
        yield system


def _indexed(settings: Settings, embedder: Embedder, n: int = 10) -> None:
    with _system(settings, embedder) as system:
        system.ingestor.ingest_documents([_doc(i) for i in range(n)])


def _search(system: System, embedder: Embedder) -> list[tuple[str, float]]:
    hits = system.store.search_dense(embedder.embed([QUERY]), limit=5)[0]
    return [(h.id, round(h.score, 5)) for h in hits]


def _stored(system: System) -> dict[str, tuple[str, str, np.ndarray]]:
    """id -> (doc_id, text, vector) of every chunk in the live collection."""
    store = system.store
    rows = store._client.query(store.physical, filter='id != ""', output_fields=["id", "doc_id", "text", "dense"])
    return {r["id"]: (r["doc_id"], r["text"], np.asarray(r["dense"], dtype=np.float32)) for r in rows}


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two chunks (documents) per embedding call, four per catalog page: many batches from few documents."""
    monkeypatch.setattr(reembed_module, "_REEMBED_BATCH", 2)
    monkeypatch.setattr(reembed_module, "_PAGE", 4)


def test_reindex_switches_to_a_new_collection_of_another_dimension(settings, embedder):
    _indexed(settings, embedder)
    new = HashEmbedder("hash-64", 64)
    with _system(settings, new, check_vectors=False) as system:
        chunks = system.store.count()
        report = reindex(system.catalog, system.store, new, progress=False)
        assert (report.chunks, report.documents, report.copied, report.resumed) == (chunks, 10, 10, 0)
        assert (report.collection, report.previous) == ("ragtune__1", "ragtune")
        assert system.store.physical_collections() == {"ragtune__1"}  # the previous one is dropped
        assert system.catalog.physical("ragtune") == "ragtune__1"
        assert system.catalog.embedder("ragtune") == EmbedderRecord("hash-64", "torch", 64)
        assert Reindexing(system.catalog, "ragtune").shadow() is None
        with pytest.raises(StoreError):  # a store still holding the previous collection fails, never mixes
            system.store.search_dense(embedder.embed([QUERY]), limit=5)
        with pytest.raises(StoreError):
            system.ingestor.ingest_documents([_doc(30)])
        assert system.catalog.find("doc-30.md").status == PENDING  # for the next ingest to redo
    with _system(settings, new) as system:  # a system built afterwards opens the new collection
        assert (system.store.physical, system.store.dimension) == ("ragtune__1", 64)
        stored = _stored(system)
        assert len(stored) == chunks
        for _, text, vector in stored.values():
            np.testing.assert_allclose(vector, new.embed([text])[0], atol=1e-6)
        top = system.store.search_dense(new.embed([QUERY]), limit=1)[0][0]
        assert top.doc_id == system.catalog.find("doc-0.md").id  # about volcanoes
    with pytest.raises(EmbedderMismatchError):
        build(settings, embedder=embedder, generator=False)


def test_a_stopped_run_resumes_with_the_documents_left(settings, embedder, small_batches):
    _indexed(settings, embedder)

    def stop_at_the_third_batch(call: int) -> None:
        if call == 3:
            raise Stop("killed")

    with _system(settings, embedder) as system:
        before = _search(system, embedder)
    with _system(settings, embedder, check_vectors=False) as system:
        with pytest.raises(Stop):
            reembed(system.catalog, system.store, HashEmbedder("hash-32", 32, stop_at_the_third_batch))
        plan = Reindexing(system.catalog, "ragtune")
        assert plan.done() == 4 and plan.shadow().physical == "ragtune__1"  # two batches of two copied
        assert system.catalog.physical("ragtune") == "ragtune"
        assert _search(system, embedder) == before  # still the old vectors, the old embedder
    with _system(settings, embedder) as system:  # the old embedder still opens the index
        assert _search(system, embedder) == before
    resumed = HashEmbedder("hash-32", 32)
    with _system(settings, resumed, check_vectors=False) as system:
        report = reindex(system.catalog, system.store, resumed, progress=False)
    assert (report.resumed, report.copied, report.documents, report.collection) == (4, 6, 10, "ragtune__1")
    assert len(resumed.texts) == report.chunks - 4  # only the rest was embedded
    with _system(settings, resumed) as system:
        stored = _stored(system)
        assert {doc_id for doc_id, _, _ in stored.values()} == {
            system.catalog.find(f"doc-{i}.md").id for i in range(10)
        }
        for _, text, vector in stored.values():  # those of the stopped run as those of this one
            np.testing.assert_allclose(vector, resumed.embed([text])[0], atol=1e-6)


def test_queries_use_the_old_vectors_until_the_switch_and_changes_meanwhile_are_reconciled(
    settings, embedder, small_batches
):
    _indexed(settings, embedder)
    with _system(settings, embedder) as system:
        before = _search(system, embedder)
        live = system.store
        ids = {i: system.catalog.find(f"doc-{i}.md").id for i in range(10)}
        order = sorted(ids, key=ids.__getitem__)  # the order documents are copied in
        copied, changed, uncopied = order[0], order[1], order[-1]

        def meanwhile(call: int) -> None:
            if call != 3:  # two batches, the first four documents, are in the shadow by now
                return
            assert _search(system, embedder) == before  # the store opened before the run
            opened_now = live.sibling(system.catalog.physical("ragtune"), embedder.dimension)
            assert opened_now.physical == "ragtune"  # what a store opened now would read
            hits = opened_now.search_dense(embedder.embed([QUERY]), limit=5)[0]
            assert [(h.id, round(h.score, 5)) for h in hits] == before
            # ingestion goes on into the live collection, with the old embedder
            system.ingestor.ingest_documents([_doc(changed, "Changed: lava tubes."), _doc(20)])
            assert system.ingestor.delete(f"doc-{copied}.md") and system.ingestor.delete(f"doc-{uncopied}.md")

        new = HashEmbedder("hash-48", 48, meanwhile)
        report = reindex(system.catalog, system.store, new, progress=False)
        assert report.removed == 1  # one deleted document had been copied, the other not yet
        assert report.documents == 9  # 10 - 2 deleted + 1 ingested
    with _system(settings, new) as system:
        stored = _stored(system)
        docs = {doc_id for doc_id, _, _ in stored.values()}
        assert docs == {ids[i] for i in order[1:-1]} | {system.catalog.find("doc-20.md").id}
        assert any("lava tubes" in text for doc_id, text, _ in stored.values() if doc_id == ids[changed])
        for _, text, vector in stored.values():  # the documents ingested meanwhile re-embedded too
            np.testing.assert_allclose(vector, new.embed([text])[0], atol=1e-6)
        assert system.store.count() == system.catalog.counts()["chunks"]


def test_another_embedder_discards_a_stopped_runs_shadow(settings, embedder, small_batches):
    _indexed(settings, embedder, n=6)

    def stop(call: int) -> None:
        if call == 2:
            raise Stop("killed")

    with _system(settings, embedder, check_vectors=False) as system:
        with pytest.raises(Stop):
            reembed(system.catalog, system.store, HashEmbedder("hash-a", 32, stop))
        assert Reindexing(system.catalog, "ragtune").done() == 2
        other = HashEmbedder("hash-b", 24)
        report = reindex(system.catalog, system.store, other, progress=False)
        assert (report.resumed, report.copied, report.collection) == (0, 6, "ragtune__2")
        assert len(other.texts) == report.chunks  # everything again
        assert system.store.physical_collections() == {"ragtune__2"}  # hash-a's shadow dropped too
        assert system.catalog.embedder("ragtune") == EmbedderRecord("hash-b", "torch", 24)


def test_a_previous_collection_left_by_a_stop_after_the_switch_is_dropped_next_time(settings, embedder, monkeypatch):
    _indexed(settings, embedder, n=3)
    real_drop = reembed_module._drop_shadow

    def stopped(plan: Reindexing, store: object) -> None:
        raise Stop("killed after the switch")

    with _system(settings, embedder, check_vectors=False) as system:
        monkeypatch.setattr(reembed_module, "_drop_shadow", stopped)
        with pytest.raises(Stop):
            reembed(system.catalog, system.store, HashEmbedder("hash-a", 16))
        monkeypatch.setattr(reembed_module, "_drop_shadow", real_drop)
        assert system.catalog.physical("ragtune") == "ragtune__1"
        assert system.store.physical_collections() == {"ragtune", "ragtune__1"}
        assert Reindexing(system.catalog, "ragtune").shadow().embedder is None  # recorded: to drop
    again = HashEmbedder("hash-b", 16)
    with _system(settings, again, check_vectors=False) as system:
        assert system.store.physical == "ragtune__1"
        report = reindex(system.catalog, system.store, again, progress=False)
        assert (report.collection, report.previous) == ("ragtune__2", "ragtune__1")
        assert system.store.physical_collections() == {"ragtune__2"}


def test_a_second_run_is_refused_while_another_holds_the_collection(settings, embedder):
    from ragtune.store.reindexing import ReindexBusyError, ReindexLeaseRow

    _indexed(settings, embedder, n=2)
    new = HashEmbedder("hash-16", 16)
    with _system(settings, new, check_vectors=False) as system:
        Reindexing(system.catalog, "ragtune").claim(lease_seconds=60)  # as a run in another process
        with system.catalog.session() as s, s.begin():  # ... on another host, alive
            s.get(ReindexLeaseRow, "ragtune").owner = "other-host:1:x"
        with pytest.raises(ReindexBusyError, match="wait for it to finish"):
            reindex(system.catalog, system.store, new, progress=False)
        assert new.calls == 0 and Reindexing(system.catalog, "ragtune").shadow() is None  # nothing begun
        with system.catalog.session() as s, s.begin():  # that run finished
            s.delete(s.get(ReindexLeaseRow, "ragtune"))
        assert reindex(system.catalog, system.store, new, progress=False).documents == 2
        with system.catalog.session() as s:
            assert s.get(ReindexLeaseRow, "ragtune") is None  # released
