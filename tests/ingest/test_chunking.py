import itertools
import re

import pytest

from ragtune.ingest.chunking import chunk_document, document_id, split_spans, split_text
from ragtune.types import Labels, LoadedDocument, Section

PROSE = " ".join(f"Sentence number {i} talks about topic{i % 7} and its details." for i in range(200))


@pytest.mark.parametrize(("size", "overlap"), [(1000, 200), (300, 50), (120, 0)])
def test_chunks_fit_and_never_cut_a_word(size, overlap):
    spans = split_spans(PROSE, size, overlap)
    words = set(PROSE.split())
    for start, end in spans:
        assert end - start <= size
        piece = PROSE[start:end]
        assert set(piece.split()) <= words, "a chunk edge fell inside a word"
        assert start == 0 or PROSE[start - 1].isspace()
        assert end == len(PROSE) or PROSE[end].isspace()
    # Every word of the text is in some chunk, in order.
    covered = " ".join(PROSE[s:e] for s, e in spans)
    assert set(covered.split()) == words


def test_neighbours_share_about_the_overlap():
    spans = split_spans(PROSE, 1000, 200)
    assert len(spans) > 5
    for (s1, e1), (s2, e2) in itertools.pairwise(spans):
        shared = e1 - s2
        assert 0 < shared <= 200
        assert s2 > s1 and e2 > e1


def test_paragraph_boundaries_are_preferred():
    text = "First paragraph is here.\n\nSecond paragraph follows it.\n\nThird one."
    assert split_text(text, 35, 0) == ["First paragraph is here.", "Second paragraph follows it.", "Third one."]


def test_a_word_longer_than_a_chunk_is_the_only_forced_cut():
    url = "https://example.org/" + "a" * 250
    chunks = split_text(f"See {url} now.", 100, 10)
    assert all(len(c) <= 100 for c in chunks)
    assert "".join(c for c in chunks if c not in ("See", "now.")).replace(" ", "").startswith("https://")


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (100, 100), (100, -1)])
def test_invalid_sizes_are_rejected(size, overlap):
    with pytest.raises(ValueError, match="chunk_overlap < chunk_size"):
        split_spans("text", size, overlap)


def test_chunks_carry_source_page_heading_and_stable_ids():
    doc = LoadedDocument(
        "/docs/a.pdf",
        "application/pdf",
        "A",
        [Section("Page one words.", page=1, heading="Intro"), Section("Page two words.", page=2)],
    )
    chunks = chunk_document(doc, 1000, 200, Labels(tags=("manual",)))
    assert [(c.page, c.heading, c.seq) for c in chunks] == [(1, "Intro", 0), (2, "", 1)]
    assert all(c.doc_id == document_id("/docs/a.pdf") and c.tags == ("manual",) for c in chunks)
    assert re.fullmatch(r"[0-9a-f]{24}-00001", chunks[1].id)
    assert chunk_document(doc, 1000, 200)[0].id == chunks[0].id
