"""Context expansion: neighbours by position, runs merged, overlaps cut, citations on the right chunk."""

from __future__ import annotations

import numpy as np
import pytest

from ragtune.ingest.chunking import chunk_document
from ragtune.retrieve.context import expand_context, neighbour_ids, shared_overlap
from ragtune.store.milvus import MilvusStore
from ragtune.types import Hit, LoadedDocument, Section

SENTENCES = [f"Sentence number {n} talks about topic {n} in some detail." for n in range(40)]


@pytest.fixture
def store(tmp_path):
    doc = LoadedDocument("/docs/long.txt", "text/plain", "Long", [Section(" ".join(SENTENCES))])
    other = LoadedDocument("/docs/other.txt", "text/plain", "Other", [Section(" ".join(SENTENCES[:12]))])
    chunks = chunk_document(doc, chunk_size=200, chunk_overlap=60) + chunk_document(other, 200, 60)
    store = MilvusStore(str(tmp_path / "milvus.db"), "context", dimension=4)
    store.insert(chunks, np.random.default_rng(0).normal(size=(len(chunks), 4)).astype(np.float32))
    yield store, chunks
    store.close()


def as_hit(chunk, score: float) -> Hit:
    return Hit(chunk.id, chunk.doc_id, chunk.text, chunk.source, chunk.title, chunk.page, chunk.heading, (), score)


def test_neighbour_ids_stay_inside_the_document():
    assert neighbour_ids("abc-00000", 2) == ["abc-00001", "abc-00002"]
    assert neighbour_ids("not-a-chunk-id", 1) == []


def test_overlap_is_the_shared_suffix_and_prefix():
    assert shared_overlap("alpha beta gamma delta epsilon", "gamma delta epsilon zeta", min_chars=5) == 19
    assert shared_overlap("abc", "xyz") == 0
    assert shared_overlap("the cat", "the dog", min_chars=1) == 1  # "t"
    assert shared_overlap("the cat", "the dog") == 0  # a one-letter match is a coincidence


def test_window_zero_is_the_hits_unchanged(store):
    s, chunks = store
    hits = [as_hit(chunks[5], 1.0)]
    assert expand_context(s, hits, 0) == hits


def test_neighbours_join_in_document_order_without_repeating_the_overlap(store):
    s, chunks = store
    long = [c for c in chunks if c.source == "/docs/long.txt"]
    assert len(long) >= 8
    hits = [as_hit(long[5], 0.9), as_hit(long[1], 0.5)]
    context = expand_context(s, hits, 1)
    # Two runs (4..6 first: its hit ranked first, then 0..2), each chunk once.
    assert [h.id for h in context] == [long[i].id for i in (4, 5, 6, 0, 1, 2)]
    assert context[0].score == pytest.approx(0.9) and context[3].score == pytest.approx(0.5)
    # Each piece's text is its own chunk's text, its overlap with the chunk before it cut.
    for piece in context:
        original = next(c for c in long if c.id == piece.id)
        assert piece.text and piece.text in original.text
    run = " ".join(h.text for h in context[:3])
    assert all(run.count(sentence) <= 1 for sentence in SENTENCES)
    assert all(sentence in run for sentence in SENTENCES if sentence in long[5].text)


def test_touching_windows_merge_into_one_run_and_documents_stay_apart(store):
    s, chunks = store
    long = [c for c in chunks if c.source == "/docs/long.txt"]
    other = [c for c in chunks if c.source == "/docs/other.txt"]
    hits = [as_hit(long[2], 0.9), as_hit(other[0], 0.8), as_hit(long[4], 0.7)]
    context = expand_context(s, hits, 1)
    ids = [h.id for h in context]
    assert ids == [long[i].id for i in (1, 2, 3, 4, 5)] + [other[0].id, other[1].id]
    assert len(ids) == len(set(ids))


def test_the_last_chunk_has_no_next_neighbour(store):
    s, chunks = store
    long = [c for c in chunks if c.source == "/docs/long.txt"]
    context = expand_context(s, [as_hit(long[-1], 1.0)], 2)
    assert [h.id for h in context] == [c.id for c in long[-3:]]


def test_a_hit_inside_another_hits_window_still_brings_its_own_neighbours(store):
    s, chunks = store
    long = [c for c in chunks if c.source == "/docs/long.txt"]
    context = expand_context(s, [as_hit(long[5], 0.9), as_hit(long[4], 0.8)], 1)
    assert [h.id for h in context] == [long[i].id for i in (3, 4, 5, 6)]
