import itertools
from pathlib import Path

import pytest

from ragtune.retrieve.retriever import reciprocal_rank_fusion
from ragtune.types import Filters, Labels


def test_rrf_weights_and_k():
    fused = dict(reciprocal_rank_fusion([["a", "b"], ["b", "c"]], weights=[1.0, 2.0], k=10))
    assert fused["b"] == pytest.approx(1 / 12 + 2 / 11)
    assert fused["a"] == pytest.approx(1 / 11)
    assert fused["c"] == pytest.approx(2 / 12)
    assert [key for key, _ in reciprocal_rank_fusion([["a", "b"], ["b", "c"]], [1.0, 2.0], 10)] == ["b", "c", "a"]


def test_rrf_needs_one_weight_per_list():
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0], k=60)


@pytest.fixture
def indexed(system, sample_dir):
    system.ingestor.ingest_paths([sample_dir], Labels(tags=("samples",)), progress=False)
    return system


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_each_mode_finds_the_right_document(indexed, mode):
    hits = indexed.retriever.run("Which model produces 384-dimensional embeddings?", top_k=3, mode=mode)
    assert 1 <= len(hits) <= 3
    assert Path(hits[0].source).name == "configuration.txt"
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_hybrid_keeps_both_scores_and_fuses(indexed):
    hits = indexed.retriever.run("reciprocal rank fusion of dense and BM25 lists", top_k=5, mode="hybrid")
    top = hits[0]
    assert Path(top.source).name == "architecture.html"
    assert {"dense", "bm25", "rrf"} <= set(top.scores)
    assert top.score == top.scores["rrf"]


def test_filters_restrict_results(indexed, sample_dir):
    pdf = str((sample_dir / "operations-guide.pdf").resolve())
    hits = indexed.retriever.run("How do I back up the data?", top_k=5, mode="hybrid", filters=Filters(sources=(pdf,)))
    assert hits and {h.source for h in hits} == {pdf}
    assert indexed.retriever.run("backup", top_k=5, mode="bm25", filters=Filters(tags=("nope",))) == []
    assert indexed.retriever.run("backup", top_k=5, mode="bm25", filters=Filters(tags=("samples",)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"top_k": 0}, "top_k must be greater than 0; got 0"), ({"mode": "fuzzy"}, "mode must be one of")],
)
def test_bad_arguments_are_named(indexed, kwargs, message):
    with pytest.raises(ValueError, match=message):
        indexed.retriever.run("question", **kwargs)
